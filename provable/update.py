"""Turn one pytest session's results into status rewrites, evidence and a summary.

Called by the plugin on the controller only. For each contract it takes the file lock,
re-reads the contract (another run may have written it meanwhile), applies the lifecycle
rules, and writes evidence and the contract atomically.
"""

from __future__ import annotations

import datetime as _dt
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from provable import evidence as ev
from provable.findings import display_path
from provable.lifecycle import (
    ContractStatus,
    FalsifierStatus,
    Outcome,
    Transition,
    changelog_entry,
    derive_contract_status,
    is_semver,
    promote,
)
from provable.model import Contract, file_stamp, load_contract
from provable.paths import project_root
from provable.rewrite import append_changelog, lock_for, quoted_like, rewrite_file, set_key
from provable.staleness import sources_of
from provable.status import falsifier_status

if TYPE_CHECKING:
    from provable.plugin import FalsifierRun
    from provable.registry import Registry


@dataclass
class FalsifierChange:
    fid: str
    outcome: Outcome
    before: FalsifierStatus
    after: FalsifierStatus
    message: str | None = None

    @property
    def regression(self) -> bool:
        """A claim that had passed (PARTIAL or DISCHARGED) is now refuted."""
        return self.after is FalsifierStatus.FALSIFIED and self.before in (
            FalsifierStatus.PARTIAL,
            FalsifierStatus.DISCHARGED,
        )


@dataclass
class ContractChange:
    cid: str
    path: Path
    before: str
    after: str
    version_before: str | None
    version_after: str | None
    falsifiers: list[FalsifierChange] = field(default_factory=list)
    problem: str | None = None
    written: bool = False

    @property
    def regression(self) -> bool:
        return any(f.regression for f in self.falsifiers)


@dataclass
class SessionOutcome:
    contracts: list[ContractChange]
    unbound: list[str]
    stale: list[str]
    interrupted: bool
    written: bool


def aggregate(run: FalsifierRun) -> tuple[Outcome, set[str]]:
    """One outcome for a falsifier from all its tests (parametrised cases included).

    Any failure refutes. A host kind is covered only when every test of that kind bound to
    the falsifier ran and passed; a skipped or deselected test leaves its kind uncovered.
    """
    results = run.results
    if not results:
        return Outcome.NOT_RUN, set()
    if any(r.outcome == "failed" for r in results.values()):
        return Outcome.FAILED, set()
    bound = run.bound or {}
    kinds = set(bound) | {r.kind for r in results.values()}
    covered = set()
    for kind in kinds:
        nodeids = set(bound.get(kind, ())) | {n for n, r in results.items() if r.kind == kind}
        if nodeids and all(n in results and results[n].outcome == "passed" for n in nodeids):
            covered.add(kind)
    if covered:
        return Outcome.PASSED, covered
    if any(r.outcome == "skipped" for r in results.values()):
        return Outcome.SKIPPED, set()
    return Outcome.NOT_RUN, set()


def apply_session(
    registry: Registry,
    runs: dict[str, FalsifierRun],
    selected: set[str] | None,
    interrupted: bool,
    write: bool,
    whole_suite: bool = True,
) -> SessionOutcome:
    """Apply a session's results. Unbound falsifiers are listed for the selected contracts,
    for every contract when the whole suite was collected, else for the contracts touched
    (a run of one file cannot tell whether another file binds the rest)."""
    if selected is not None:
        scope = sorted({qid.split(":", 1)[0] for qid in selected})
    elif whole_suite:
        scope = sorted(registry.contracts)
    else:
        scope = sorted({qid.split(":", 1)[0] for qid in runs} & set(registry.contracts))
    unbound, stale = [], []
    for cid in scope:
        for f in registry.contracts[cid].falsifiers:
            run = runs.get(f"{cid}:{f.id}")
            if run is None or not any(run.bound.values()):
                unbound.append(f"{cid}:{f.id}")
                if f.status in (FalsifierStatus.DISCHARGED.value, FalsifierStatus.PARTIAL.value):
                    stale.append(f"{cid}:{f.id} is {f.status} but no test is bound to it")
    per_contract: dict[str, dict[str, FalsifierRun]] = {}
    for qid, run in runs.items():
        cid, fid = qid.split(":", 1)
        if cid in registry.contracts and run.results:
            per_contract.setdefault(cid, {})[fid] = run
    changes: list[ContractChange] = []
    do_write = write and not interrupted
    if per_contract:
        # one lock for the folder, held across all its contracts: concurrent runs serialise
        with lock_for(registry.folder):
            for cid in sorted(per_contract):
                changes.append(
                    _apply_contract(registry.contracts[cid], per_contract[cid], do_write)
                )
    return SessionOutcome(changes, unbound, stale, interrupted, do_write)


def _apply_contract(
    contract: Contract, runs: dict[str, FalsifierRun], write: bool
) -> ContractChange:
    """Promote, write evidence, rewrite one contract. The caller holds the folder lock."""
    root = project_root(contract.path)
    try:
        # re-read under the lock, unless the file is the one the registry read
        current = contract if _unchanged(contract) else load_contract(contract.path)
    except Exception as exc:
        return ContractChange(
            contract.id, contract.path, "?", "?", None, None, problem=f"unreadable: {exc}"
        )
    commit, dirty = ev.git_state(root)
    observed_at = ev.now()
    changes: list[FalsifierChange] = []
    records: dict[str, tuple[Path, dict[str, Any], dict[str, Any] | None]] = {}
    statuses: dict[str, FalsifierStatus] = {}
    history: list[dict[str, Any]] = []
    for f in current.falsifiers:
        before = falsifier_status(f.status)
        statuses[f.id] = before
        run = runs.get(f.id)
        if run is None:
            continue
        outcome, covered = aggregate(run)
        rel = f"evidence/{current.id}/{f.id}.json"
        previous = ev.read_evidence(root / rel)
        previously = (previous or {}).get("passed_on") or []
        required = set(f.hosts) | {k for k, ids in run.bound.items() if ids}
        promotion = promote(before, outcome, covered, required, previously)
        statuses[f.id] = promotion.status
        message = next((r.message for r in run.results.values() if r.message), None)
        changes.append(FalsifierChange(f.id, outcome, before, promotion.status, message))
        history.append(
            _history_line(
                current.id,
                f.id,
                outcome,
                before,
                promotion.status,
                run,
                commit,
                dirty,
                observed_at,
            )
        )
        if outcome in (Outcome.PASSED, Outcome.FAILED):
            record = _evidence_record(
                current.id, f.id, outcome, promotion.status, run, commit, dirty, observed_at, root
            )
            keep = outcome is Outcome.PASSED and before in (
                FalsifierStatus.PARTIAL,
                FalsifierStatus.DISCHARGED,
            )
            records[f.id] = (
                root / rel,
                ev.merge_record(previous, record, sorted(promotion.passed_on), keep),
                previous,
            )
    declared = current.status if current.status in ContractStatus.__members__ else None
    before_contract = ContractStatus(declared) if declared else None
    after_contract = derive_contract_status(statuses.values(), before_contract)
    change = ContractChange(
        current.id,
        current.path,
        current.status or "none",
        after_contract.value,
        current.version,
        current.version,
        changes,
    )
    version = current.version or "0.0.0"
    if not is_semver(version):
        change.problem = f"not rewritten: metadata.version {version!r} is not semver"
        return change
    transitions = [Transition(c.fid, c.before, c.after) for c in changes]
    entry = changelog_entry(
        version,
        transitions,
        _dt.date.today().isoformat(),
        commit,
        dirty,
        before_contract,
        after_contract,
    )
    if entry is not None:
        change.version_after = entry[0]
    if not write:
        return change
    wrote = [ev.write_evidence(path, rec, prev) for path, rec, prev in records.values()]
    if any(wrote):
        ev.sync_folder(root / "evidence" / current.id)
    evidence_paths = {fid: f"evidence/{current.id}/{fid}.json" for fid in records}
    ev.append_history(root / "evidence" / current.id, history)
    needs_edit = (
        entry is not None
        or current.status != after_contract.value
        or any(c.before is not c.after for c in changes)
        or any(current.falsifier(fid).evidence != p for fid, p in evidence_paths.items())
    )
    if not needs_edit:  # the common repeat run: skip the round-trip entirely
        return change
    change.written = rewrite_file(
        current.path,
        lambda doc: _mutate(doc, statuses, evidence_paths, changes, after_contract, entry),
    )
    return change


def _unchanged(contract: Contract) -> bool:
    try:
        return contract.stamp == file_stamp(contract.path)
    except OSError:
        return False


def _mutate(
    doc: Any,
    statuses: dict[str, FalsifierStatus],
    evidence_paths: dict[str, str],
    changes: list[FalsifierChange],
    contract_status: ContractStatus,
    entry: tuple[str, dict[str, str]] | None,
) -> None:
    touched = {c.fid for c in changes if c.before is not c.after} | set(evidence_paths)
    for item in doc.get("falsification_tests") or []:
        fid = item.get("id") if hasattr(item, "get") else None
        if fid not in touched:
            continue
        if item.get("status") != statuses[fid].value:
            set_key(item, "status", statuses[fid].value)
        if fid in evidence_paths:
            set_key(item, "evidence", evidence_paths[fid], after="status")
    meta = doc["metadata"]
    if meta.get("status") != contract_status.value:
        set_key(meta, "status", contract_status.value, after="version")
    if entry is not None:
        new_version, log_entry = entry
        set_key(meta, "version", quoted_like(meta.get("version"), new_version))
        append_changelog(doc, log_entry)


def _tests(run: FalsifierRun, kind: str) -> list[dict[str, Any]]:
    return [
        {"nodeid": nodeid, "outcome": r.outcome}
        for nodeid, r in sorted(run.results.items())
        if r.kind == kind
    ]


def _evidence_record(
    cid: str,
    fid: str,
    outcome: Outcome,
    status: FalsifierStatus,
    run: FalsifierRun,
    commit: str | None,
    dirty: bool,
    observed_at: str,
    root: Path | None = None,
) -> dict[str, Any]:
    sections: dict[str, Any] = {}
    for kind in sorted({r.kind for r in run.results.values()}):
        results = {n: r for n, r in sorted(run.results.items()) if r.kind == kind}
        section: dict[str, Any] = {"tests": _tests(run, kind)}
        recorded = {n: r.recorded for n, r in results.items() if r.recorded}
        if recorded:
            section["recorded"] = recorded
        failed = [(n, r) for n, r in results.items() if r.outcome == "failed"]
        if failed:
            nodeid, r = failed[0]
            section["failure"] = {"nodeid": nodeid, "message": r.message}
            if r.example:
                section["failure"]["falsifying_example"] = r.example
        if root is not None:  # what the tests were when observed: pv audit's staleness check
            section["sources"] = sources_of(root, results)
        section["host"] = ev.host_info()
        section.update(commit=commit, dirty=dirty, observed_at=observed_at)
        sections[kind] = section
    return {
        "schema": ev.SCHEMA,
        "contract": cid,
        "falsifier": fid,
        "outcome": outcome.value,
        "status": status.value,
        "runs": sections,
    }


def _history_line(
    cid: str,
    fid: str,
    outcome: Outcome,
    before: FalsifierStatus,
    after: FalsifierStatus,
    run: FalsifierRun,
    commit: str | None,
    dirty: bool,
    observed_at: str,
) -> dict[str, Any]:
    return {
        "time": observed_at,
        "contract": cid,
        "falsifier": fid,
        "outcome": outcome.value,
        "before": before.value,
        "after": after.value,
        "commit": commit,
        "dirty": dirty,
        "tests": {
            n: {"outcome": r.outcome, "kind": r.kind, "duration_s": round(r.duration, 6)}
            for n, r in sorted(run.results.items())
        },
    }


def write_summary(tr: Any, outcome: SessionOutcome) -> None:
    """The "contract status" section of the terminal summary; regressions first, in red."""
    if not (outcome.contracts or outcome.unbound or outcome.stale or outcome.interrupted):
        return
    tr.write_sep("=", "contract status")
    if outcome.interrupted:
        tr.write_line("run interrupted: no contract or evidence file was written", yellow=True)
    elif not outcome.written:
        tr.write_line("--no-status-write: nothing written; this is what would change", yellow=True)
    rows = sorted(outcome.contracts, key=lambda c: (not c.regression, c.cid))
    for c in rows:
        version = c.version_before or "-"
        if c.version_after != c.version_before:
            version += f" → {c.version_after}"
        arrow = f"{c.before} → {c.after}" if c.before != c.after else f"{c.after} (unchanged)"
        label = "REGRESSION " if c.regression else ("REFUTED " if c.after == "FALSIFIED" else "")
        tr.write_line(
            f"{label}{c.cid} {version}: {arrow}",
            red=c.regression or c.after == "FALSIFIED",
            green=not c.regression and c.after == "DISCHARGED",
            bold=c.regression,
        )
        if c.problem:
            tr.write_line(f"    {c.problem}", red=True)
        for f in sorted(c.falsifiers, key=lambda f: (not f.regression, f.fid)):
            if f.before is f.after and f.after is not FalsifierStatus.FALSIFIED:
                continue
            line = f"    {f.fid}: {f.before.value} → {f.after.value}"
            if f.after is FalsifierStatus.FALSIFIED and f.message:
                first = next((ln for ln in f.message.splitlines() if ln.startswith("E ")), "")
                line += f"  {first.strip()}" if first else ""
            tr.write_line(line, red=f.after is FalsifierStatus.FALSIFIED)
        kept = [
            f
            for f in c.falsifiers
            if f.before is f.after and f.after is not FalsifierStatus.FALSIFIED
        ]
        if kept:
            counts: dict[str, int] = {}
            for f in kept:
                counts[f.after.value] = counts.get(f.after.value, 0) + 1
            tally = ", ".join(f"{n} {s}" for s, n in sorted(counts.items()))
            tr.write_line(f"    unchanged: {tally}")
    if outcome.unbound:
        tr.write_line(
            f"unbound (stay PROPOSED, no test carries them): {', '.join(outcome.unbound)}",
            yellow=True,
        )
    for line in outcome.stale:
        tr.write_line(line, yellow=True)
    paths = sorted({display_path(c.path) for c in outcome.contracts if c.written})
    if paths:
        tr.write_line(f"rewrote: {', '.join(paths)}")
