"""Decide what one session does to one contract, as a frozen value (pytest's skipping.py
shape: pure functions decide, hooks only apply).

``plan_contract`` reads nothing from disk but the existence of test files (to tell a test
that this session could not see from one that is gone); the caller gathers the contract, its
text, the previous evidence and the session's results, and ``provable.plugin.writer`` applies the
plan as one unit.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from provable.contracts import evidence as ev
from provable.contracts.lifecycle import (
    ContractStatus,
    FalsifierStatus,
    Outcome,
    TestVerdict,
    Transition,
    changelog_entry,
    derive_contract_status,
    falsifier_outcome,
    is_semver,
    parse_contract_status,
    parse_falsifier_status,
    promote,
)
from provable.contracts.model import Contract
from provable.contracts.paths import is_safe_name
from provable.contracts.rewrite import append_changelog, quoted_like, rewrite_text, set_key
from provable.plugin.session import FalsifierRun, SessionScope, TestResult, test_file
from provable.plugin.staleness import sources_of

CONCURRENT_REFUTATION = "kept FALSIFIED: another run refuted it after this run started"
UNSAFE_ID = "no evidence written: its id cannot name a file (see pv validate)"


@dataclass(frozen=True)
class Aggregate:
    """One falsifier's outcome over all its tests, and how much of it this session saw."""

    outcome: Outcome
    covered: frozenset[str]
    ran: int  # bound tests (parametrised cases counted one by one) that ran
    bound: int  # bound tests known: collected now, or recorded by an earlier run
    narrowed: bool = False  # a bound test's file was narrowed to some tests: more may exist

    def note(self) -> str:
        more = "+" if self.narrowed else ""
        return f"not promoted: {self.ran} of {self.bound}{more} bound cases ran"


def previous_tests(record: Mapping[str, Any] | None) -> dict[str, set[str]]:
    """Node ids an earlier run recorded per host kind (from its evidence)."""
    known: dict[str, set[str]] = {}
    runs = (record or {}).get("runs")
    if not isinstance(runs, dict):
        return known
    for kind, section in runs.items():
        tests = section.get("tests") if isinstance(section, dict) else None
        if isinstance(tests, list):
            known[str(kind)] = {
                t["nodeid"]
                for t in tests
                if isinstance(t, dict) and isinstance(t.get("nodeid"), str)
            }
    return known


def aggregate(
    run: FalsifierRun,
    known: Mapping[str, Iterable[str]] | None = None,
    scope: SessionScope | None = None,
) -> Aggregate:
    """Any refutation refutes; then a test that could not check its claim, a flaky one or
    an unwritten one each leave the falsifier as it was (in that order of telling); a host
    kind is covered only when every test of that kind bound to the falsifier ran and passed.

    "Bound" is what this session collected plus what an earlier run recorded in a file this
    session did not see whole: ``pytest tests/test_a.py`` cannot vouch for
    ``tests/test_b.py``, nor one parametrised case for its siblings.
    """
    results = run.results
    required: dict[str, set[str]] = {}
    for kind, nodeids in (run.bound or {}).items():
        required.setdefault(kind, set()).update(nodeids)
    for nodeid, test in results.items():
        required.setdefault(test.kind, set()).add(nodeid)
    if scope is not None:
        for kind, known_ids in (known or {}).items():
            hidden = {n for n in known_ids if scope.unseen(n)}
            if hidden:
                required.setdefault(kind, set()).update(hidden)
    if scope is not None:
        fid = run.qid.split(":", 1)[-1]
        files = {test_file(n) for ids in required.values() for n in ids}
        for name in scope.uncollected_bindings.get(fid, frozenset()) - files:
            for kind in required or {"cpu": set()}:
                required.setdefault(kind, set()).add(f"{name}::(not collected)")
    every: set[str] = set().union(*required.values()) if required else set()
    ran = sum(1 for n in every if n in results and results[n].outcome in ("passed", "failed"))
    narrowed = {
        kind for kind, ids in required.items() if scope and any(scope.narrowed(n) for n in ids)
    }

    def result(outcome: Outcome, covered: frozenset[str] = frozenset()) -> Aggregate:
        return Aggregate(outcome, covered, ran, len(every), bool(narrowed))

    if not results:
        return result(Outcome.NOT_RUN)
    forced = falsifier_outcome(
        TestVerdict(r.outcome) for r in results.values() if r.outcome in _VERDICTS
    )
    if forced is not None:
        return result(forced)
    covered = frozenset(
        kind
        for kind, nodeids in required.items()
        if nodeids
        and kind not in narrowed
        and all(n in results and results[n].outcome == "passed" for n in nodeids)
    )
    if covered:
        return result(Outcome.PASSED, covered)
    if any(r.outcome == "passed" for r in results.values()):
        return result(Outcome.INCOMPLETE)
    if any(r.outcome == "skipped" for r in results.values()):
        return result(Outcome.SKIPPED)
    return result(Outcome.NOT_RUN)


_VERDICTS = frozenset(v.value for v in TestVerdict)


@dataclass(frozen=True)
class FalsifierChange:
    fid: str
    outcome: Outcome
    before: FalsifierStatus
    after: FalsifierStatus
    message: str | None = None
    note: str | None = None  # why a pass did not promote
    #: not checked / flaky: what went wrong ({type, message, when, frame}), first test's
    error: dict[str, Any] | None = None
    #: packages whose versions differ from the run that recorded the previous verdict
    moved: tuple[str, ...] = ()

    @property
    def regression(self) -> bool:
        """A claim that had passed (PARTIAL or DISCHARGED) is now refuted."""
        return self.after is FalsifierStatus.FALSIFIED and self.before in (
            FalsifierStatus.PARTIAL,
            FalsifierStatus.DISCHARGED,
        )


@dataclass(frozen=True)
class ContractChange:
    """The plan for one contract; ``written`` is set by the writer once applied."""

    cid: str
    path: Path
    before: str
    after: str
    version_before: str | None
    version_after: str | None
    falsifiers: tuple[FalsifierChange, ...] = ()
    problem: str | None = None
    written: bool = False
    new_text: str | None = None  # the contract's new text; None: leave the file alone
    evidence: tuple[tuple[Path, str], ...] = ()  # evidence files to write (path, JSON text)
    history: tuple[dict[str, Any], ...] = field(default=(), compare=False)

    @property
    def regression(self) -> bool:
        return any(f.regression for f in self.falsifiers)


@dataclass(frozen=True)
class RunFacts:
    """Where and when: the same for every contract of a session."""

    commit: str | None
    dirty: bool
    observed_at: str
    today: str


def plan_contract(
    contract: Contract,
    text: str,
    runs: Mapping[str, FalsifierRun],
    previous: Mapping[str, dict[str, Any] | None],
    started: Mapping[str, str | None],
    scope: SessionScope | None,
    facts: RunFacts,
    root: Path,
) -> ContractChange:
    """The new statuses, evidence and changelog entry of ``contract`` after a session.

    ``contract``/``text`` are the file as it is now (re-read under the lock); ``started``
    holds each falsifier's status word when the session began, so a refutation another run
    recorded meanwhile is kept rather than overwritten by this run's pass.
    """
    changes: list[FalsifierChange] = []
    statuses: dict[str, FalsifierStatus] = {}
    evidence_paths: dict[str, str] = {}
    records: list[tuple[Path, str]] = []
    history: list[dict[str, Any]] = []
    for f in contract.falsifiers:
        before = parse_falsifier_status(f.status)
        statuses[f.id] = before
        run = runs.get(f.id)
        if run is None:
            continue
        if not (is_safe_name(contract.id) and is_safe_name(f.id)):
            # an id is untrusted input: it names a file only when it is one safe component;
            # a claim whose evidence cannot be kept is not promoted either
            changes.append(FalsifierChange(f.id, Outcome.NOT_RUN, before, before, note=UNSAFE_ID))
            continue
        rel = f"evidence/{contract.id}/{f.id}.json"
        prev = previous.get(f.id)
        agg = aggregate(run, previous_tests(prev), scope)
        required = set(f.hosts) | {k for k, ids in run.bound.items() if ids}
        promotion = promote(
            before, agg.outcome, agg.covered, required, (prev or {}).get("passed_on") or []
        )
        after, note = promotion.status, None
        refuted_meanwhile = (
            before is FalsifierStatus.FALSIFIED
            and parse_falsifier_status(started.get(f.id, f.status)) is not FalsifierStatus.FALSIFIED
        )
        if refuted_meanwhile and agg.outcome is not Outcome.FAILED:
            after, note = FalsifierStatus.FALSIFIED, CONCURRENT_REFUTATION
        elif agg.outcome is Outcome.INCOMPLETE:
            note = agg.note()
        statuses[f.id] = after
        telling = _telling_results(run, agg.outcome)
        message = next((r.message for r in telling if r.message), None)
        error = next((r.error for r in telling if r.error), None)
        moved = ev.moved_packages(prev) if after is not before else ()
        changes.append(
            FalsifierChange(f.id, agg.outcome, before, after, message, note, error, moved)
        )
        history.append(
            _history_line(contract.id, f.id, agg.outcome, before, after, run, facts, error)
        )
        if agg.outcome in (Outcome.PASSED, Outcome.FAILED) and note is None:
            record = _evidence_record(contract.id, f.id, agg.outcome, after, run, facts, root)
            if agg.outcome is Outcome.PASSED:
                kept = ev.refutation_on_record(prev)
                if kept is not None:
                    record["refuted_before"] = kept
            keep = agg.outcome is Outcome.PASSED and before in (
                FalsifierStatus.PARTIAL,
                FalsifierStatus.DISCHARGED,
            )
            merged = ev.merge_record(prev, record, sorted(promotion.passed_on), keep)
            evidence_paths[f.id] = rel
            if merged != prev:
                records.append((root / rel, ev.evidence_text(merged)))
    before_contract = parse_contract_status(contract.status)
    after_contract = derive_contract_status(statuses.values(), before_contract)
    change = ContractChange(
        cid=contract.id,
        path=contract.path,
        before=contract.status or "none",
        after=after_contract.value,
        version_before=contract.version,
        version_after=contract.version,
        falsifiers=tuple(changes),
        history=tuple(history),
    )
    version = contract.version or "0.0.0"
    if not is_semver(version):
        return _replace(
            change, problem=f"not rewritten: metadata.version {version!r} is not semver"
        )
    transitions = [Transition(c.fid, c.before, c.after) for c in changes]
    entry = changelog_entry(
        version,
        transitions,
        facts.today,
        facts.commit,
        facts.dirty,
        before_contract,
        after_contract,
    )
    version_after = entry[0] if entry is not None else contract.version
    needs_edit = (
        entry is not None
        or contract.status != after_contract.value
        or any(c.before is not c.after for c in changes)
        or any(contract.falsifier(fid).evidence != p for fid, p in evidence_paths.items())  # type: ignore[union-attr]
    )
    new_text = None
    if needs_edit:
        new_text = rewrite_text(
            text,
            lambda doc: mutate(doc, statuses, evidence_paths, changes, after_contract, entry),
        )
        if new_text == text:
            new_text = None
    return _replace(change, version_after=version_after, new_text=new_text, evidence=tuple(records))


def _replace(change: ContractChange, **fields: Any) -> ContractChange:
    from dataclasses import replace

    return replace(change, **fields)


def mutate(
    doc: Any,
    statuses: Mapping[str, FalsifierStatus],
    evidence_paths: Mapping[str, str],
    changes: Iterable[FalsifierChange],
    contract_status: ContractStatus,
    entry: tuple[str, dict[str, str]] | None,
) -> None:
    """Apply the plan's edits to a round-trip document (only the edited keys change)."""
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


_OUTCOME_VERDICT = {
    Outcome.FAILED: TestVerdict.REFUTED.value,
    Outcome.NOT_CHECKED: TestVerdict.NOT_CHECKED.value,
    Outcome.FLAKY: TestVerdict.FLAKY.value,
    Outcome.NOT_WRITTEN: TestVerdict.NOT_WRITTEN.value,
}


def _telling_results(run: FalsifierRun, outcome: Outcome) -> list[TestResult]:
    """The tests whose verdict made the falsifier's outcome (by node id), else all."""
    word = _OUTCOME_VERDICT.get(outcome)
    results = [r for _, r in sorted(run.results.items())]
    matching = [r for r in results if r.outcome == word]
    return matching or results


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
    facts: RunFacts,
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
            section["failure"] = {"nodeid": nodeid, "message": ev.clean_message(r.message)}
            if r.example:
                section["failure"]["falsifying_example"] = ev.clean_message(r.example)
        if root is not None:  # what the tests were when observed: pv audit's staleness check
            section["sources"] = sources_of(root, results)
        section["host"] = ev.host_info()
        section.update(commit=facts.commit, dirty=facts.dirty, observed_at=facts.observed_at)
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
    facts: RunFacts,
    error: dict[str, Any] | None = None,
) -> dict[str, Any]:
    line = {
        "time": facts.observed_at,
        "contract": cid,
        "falsifier": fid,
        "outcome": outcome.value,
        "before": before.value,
        "after": after.value,
        "commit": facts.commit,
        "dirty": facts.dirty,
        "tests": {
            n: {
                "outcome": r.outcome,
                "kind": r.kind,
                "duration_s": round(r.duration, 6),
                **({"recorded": r.recorded} if r.recorded else {}),
            }
            for n, r in sorted(run.results.items())
        },
    }
    if error is not None and outcome in (Outcome.NOT_CHECKED, Outcome.FLAKY):
        line["error"] = error
    return line
