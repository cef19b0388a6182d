"""Turn one pytest session's results into status rewrites, evidence and a summary.

Called by the plugin on the controller only. Under the lock beside the contracts it
finishes any write a killed run left, re-reads each contract (another run may have written
it meanwhile), asks ``provable.plugin.plan`` what to change, and hands every change of the session
to ``provable.plugin.writer`` as one unit.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

from provable.contracts import evidence as ev
from provable.contracts.model import Contract, file_stamp, load_contract
from provable.contracts.paths import inside, is_safe_name, project_root
from provable.contracts.rewrite import RewriteError
from provable.plugin.plan import (
    ContractChange,
    FalsifierChange,
    RunFacts,
    aggregate,
    mutate,
    plan_contract,
)
from provable.plugin.session import FalsifierRun, SessionScope
from provable.plugin.writer import OutsideRoot, commit_files, lock_for, recover

if TYPE_CHECKING:
    from provable.contracts.registry import Registry

#: kept for callers of the old names
_mutate = mutate
__all__ = [
    "ContractChange",
    "FalsifierChange",
    "SessionOutcome",
    "aggregate",
    "apply_session",
]


@dataclass(frozen=True)
class SessionOutcome:
    contracts: list[ContractChange]
    unbound: list[str]
    stale: list[str]
    interrupted: bool
    written: bool


def apply_session(
    registry: Registry,
    runs: dict[str, FalsifierRun],
    selected: set[str] | None,
    interrupted: bool,
    write: bool,
    whole_suite: bool = True,
    scope: SessionScope | None = None,
) -> SessionOutcome:
    """Apply a session's results. Unbound falsifiers are listed for the selected contracts,
    for every contract when the whole suite was collected, else for the contracts touched
    (a run of one file cannot tell whether another file binds the rest)."""
    if selected is not None:
        scope_ids = sorted({qid.split(":", 1)[0] for qid in selected})
    elif whole_suite:
        scope_ids = sorted(registry.contracts)
    else:
        scope_ids = sorted({qid.split(":", 1)[0] for qid in runs} & set(registry.contracts))
    unbound, stale = [], []
    for cid in scope_ids:
        for f in registry.contracts[cid].falsifiers:
            run = runs.get(f"{cid}:{f.id}")
            if run is None or not any(run.bound.values()):
                unbound.append(f"{cid}:{f.id}")
                if f.status in ("DISCHARGED", "PARTIAL"):
                    stale.append(f"{cid}:{f.id} is {f.status} but no test is bound to it")
    per_contract: dict[str, dict[str, FalsifierRun]] = {}
    for qid, run in runs.items():
        cid, fid = qid.split(":", 1)
        if interrupted and not any(
            r.outcome in ("failed", "not_checked") for r in run.results.values()
        ):
            continue  # an interrupted run saw part of the suite: it refutes, never promotes
        if cid in registry.contracts and run.results:
            per_contract.setdefault(cid, {})[fid] = run
    changes: list[ContractChange] = []
    do_write = write
    if per_contract:
        changes = _plan_and_write(registry, per_contract, scope, do_write)
    return SessionOutcome(changes, unbound, stale, interrupted, do_write)


def _plan_and_write(
    registry: Registry,
    per_contract: dict[str, dict[str, FalsifierRun]],
    scope: SessionScope | None,
    write: bool,
) -> list[ContractChange]:
    folder = registry.folder
    root = project_root(folder)
    commit, dirty = ev.git_state(root)
    facts = RunFacts(commit, dirty, ev.now(), _dt.date.today().isoformat())
    with lock_for(folder) if write else contextlib.nullcontext():
        if write:
            recover(folder, root / "evidence", locked=True)
        changes = [
            _plan_one(registry.contracts[cid], per_contract[cid], scope, facts)
            for cid in sorted(per_contract)
        ]
        if not write:
            return changes
        evidence = [item for c in changes for item in c.evidence]
        contracts = [(c.path, c.new_text) for c in changes if c.new_text is not None]
        try:
            commit_files(folder, evidence, contracts)
        except OutsideRoot as exc:  # an id or a symlink pointing out: write nothing
            return [replace(c, problem=str(exc)) for c in changes]
        for c in changes:
            if is_safe_name(c.cid) and inside(root / "evidence" / c.cid, root / "evidence"):
                ev.append_history(root / "evidence" / c.cid, list(c.history))
    return [replace(c, written=c.new_text is not None) for c in changes]


def _plan_one(
    started: Contract,
    runs: dict[str, FalsifierRun],
    scope: SessionScope | None,
    facts: RunFacts,
) -> ContractChange:
    """Re-read one contract under the lock and plan it; a problem is reported, not raised."""
    root = project_root(started.path)
    try:
        current = started if _unchanged(started) else load_contract(started.path)
        text = Path(started.path).read_bytes().decode("utf-8")  # keeps CRLF
    except Exception as exc:
        return ContractChange(
            started.id, started.path, "?", "?", None, None, problem=f"unreadable: {exc}"
        )
    previous = {
        f.id: ev.read_evidence(root / f"evidence/{current.id}/{f.id}.json")
        for f in current.falsifiers
        if f.id in runs
    }
    begun = {f.id: f.status for f in started.falsifiers}
    try:
        return plan_contract(current, text, runs, previous, begun, scope, facts, root)
    except RewriteError as exc:
        return ContractChange(
            current.id, current.path, current.status or "none", "?", None, None, problem=str(exc)
        )


def _unchanged(contract: Contract) -> bool:
    try:
        return contract.stamp == file_stamp(contract.path)
    except OSError:
        return False
