"""Merge the contracts and evidence of separate runs (a CPU job, a GPU job) into one state.

Each run is a folder holding a copy of ``contracts/`` and ``evidence/`` as that run left
them (a CI artifact). The rules, per falsifier:

* observations are the per-host sections of its evidence records; for each host kind the
  newest observation (``observed_at``) replaces the older ones;
* any failure among those wins: the falsifier is FALSIFIED;
* otherwise passes on different hosts combine: DISCHARGED once every required host passed;
* two observations of one host at the same instant that disagree are a *conflict*: it is
  reported, and the conservative side (the failure) is kept, never silently.

The result does not depend on the order of the runs (same bytes), and merging a run with
itself changes nothing: when the merged state equals one run's state, that run's files are
taken as they are; otherwise the runs' common changelog gets one new entry.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from provable import evidence as ev
from provable.atomic import write_atomic
from provable.lifecycle import (
    KNOWN_HOSTS,
    ContractStatus,
    FalsifierStatus,
    bump_minor,
    derive_contract_status,
    is_semver,
)
from provable.model import Contract, is_binding_registry, load_contract
from provable.rewrite import append_changelog, quoted_like, rewrite_text, set_key
from provable.status import falsifier_status
from provable.yamlsource import YamlSourceError, read_yaml

#: least proven first: the conservative pick when runs disagree without evidence
_WORST_FIRST = (
    FalsifierStatus.FALSIFIED,
    FalsifierStatus.PROPOSED,
    FalsifierStatus.PARTIAL,
    FalsifierStatus.DISCHARGED,
)


class MergeError(Exception):
    """A run folder cannot be merged (missing, unreadable); names the path."""


@dataclass(frozen=True)
class FalsifierState:
    """What the merge decided for one falsifier."""

    status: FalsifierStatus
    record: dict[str, Any] | None  # the merged evidence record; None when no run had one


@dataclass
class MergeReport:
    """What a merge found: status changes against each input, conflicts, files written."""

    runs: list[str]
    statuses: dict[str, dict[str, str]] = field(default_factory=dict)  # qid -> run -> status
    merged: dict[str, str] = field(default_factory=dict)  # qid -> merged status
    conflicts: list[str] = field(default_factory=list)
    written: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {
            "runs": self.runs,
            "falsifiers": {
                qid: {"runs": self.statuses[qid], "merged": self.merged[qid]}
                for qid in sorted(self.merged)
            },
            "conflicts": self.conflicts,
            "written": self.written,
        }


# --- reading runs ------------------------------------------------------------------------


@dataclass
class _Run:
    name: str
    root: Path
    contracts: dict[str, tuple[Path, Contract]]  # file name -> (path, contract)
    other_yaml: dict[str, bytes]  # binding registries and the like, copied when identical


def _read_run(root: Path) -> _Run:
    folder = root / "contracts"
    if not folder.is_dir():
        raise MergeError(f"{root}: no contracts/ folder (expected a run's contracts + evidence)")
    contracts: dict[str, tuple[Path, Contract]] = {}
    other: dict[str, bytes] = {}
    for path in sorted(folder.glob("*.y*ml")):
        try:
            doc = read_yaml(path)
            if is_binding_registry(doc.data):
                other[path.name] = path.read_bytes()
                continue
            contracts[path.name] = (path, load_contract(path))
        except (YamlSourceError, ValueError, OSError) as exc:
            raise MergeError(f"{path}: cannot read contract: {exc}") from None
    return _Run(str(root), root, contracts, other)


def _record(run: _Run, cid: str, fid: str) -> dict[str, Any] | None:
    record = ev.read_evidence(run.root / "evidence" / cid / f"{fid}.json")
    if record is None or not isinstance(record.get("runs"), dict):
        return None
    return record


# --- the rules -----------------------------------------------------------------------------


def section_verdict(section: dict[str, Any]) -> str:
    """``failed`` (a failure block or a failed test), ``passed`` (every test passed), or
    ``inconclusive`` (skipped tests: the plugin records the section, but it proves nothing)."""
    if section.get("failure"):
        return "failed"
    tests = [t for t in section.get("tests") or [] if isinstance(t, dict)]
    if any(t.get("outcome") == "failed" for t in tests):
        return "failed"
    if tests and all(t.get("outcome") == "passed" for t in tests):
        return "passed"
    return "inconclusive"


def _canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, ensure_ascii=False)


def _when(section: dict[str, Any]) -> str:
    return str(section.get("observed_at", ""))


def merge_falsifier(
    records: Sequence[dict[str, Any] | None],
    statuses: Sequence[FalsifierStatus],
    declared_hosts: Iterable[str],
    cid: str,
    fid: str,
) -> tuple[FalsifierState, list[str]]:
    """Merge one falsifier's evidence records (one per run, None where absent).

    Per host kind the newest conclusive observation wins (an inconclusive, skipped section
    only stands in where there is nothing else); any failure refutes; a pass counts when it
    was observed after every failure (a failure resets earlier passes, as in the lifecycle).
    Returns the merged state and the conflicts found (one-line messages).
    """
    conflicts: list[str] = []
    required = set(declared_hosts) or {"cpu"}
    by_kind: dict[str, dict[str, dict[str, Any]]] = {}  # kind -> canonical -> section
    for record in records:
        if record is None:
            continue
        record_passed = set(record.get("passed_on") or [])
        if record.get("status") == FalsifierStatus.PARTIAL.value and required <= record_passed:
            # that run knew of a host still missing (a test bound to another host kind)
            required |= set(KNOWN_HOSTS) - record_passed
        for kind, section in record["runs"].items():
            if isinstance(section, dict):
                required.add(str(kind))
                by_kind.setdefault(str(kind), {})[_canonical(section)] = section
    chosen: dict[str, dict[str, Any]] = {}
    for kind, seen in sorted(by_kind.items()):
        sections = [seen[k] for k in sorted(seen)]
        conclusive = [s for s in sections if section_verdict(s) != "inconclusive"]
        pool = conclusive or sections
        latest = max(_when(s) for s in pool)
        newest = [s for s in pool if _when(s) == latest]
        verdicts = {section_verdict(s) for s in newest}
        if len(verdicts) > 1:
            conflicts.append(
                f"{cid}:{fid}: host {kind} passed and failed at the same instant {latest}; "
                "kept the failure"
            )
            newest = [s for s in newest if section_verdict(s) == "failed"]
        elif len(newest) > 1 and len({_canonical(_stable(s)) for s in newest}) > 1:
            conflicts.append(
                f"{cid}:{fid}: host {kind} has {len(newest)} different observations at "
                f"{latest}; kept one by content"
            )
        chosen[kind] = min(newest, key=_canonical)
    verdict = {kind: section_verdict(s) for kind, s in chosen.items()}
    if not any(v != "inconclusive" for v in verdict.values()):
        distinct = sorted(set(statuses), key=_WORST_FIRST.index)
        if len(distinct) > 1:
            conflicts.append(
                f"{cid}:{fid}: runs disagree ({', '.join(s.value for s in distinct)}) and none "
                f"has conclusive evidence; kept {distinct[0].value}"
            )
        status = distinct[0] if distinct else FalsifierStatus.PROPOSED
        return FalsifierState(status, None), conflicts
    failures = [_when(chosen[k]) for k, v in verdict.items() if v == "failed"]
    if failures:
        first = min(failures)
        kept = {k: s for k, s in chosen.items() if _when(s) >= first}
        status, outcome, passed_on = FalsifierStatus.FALSIFIED, "failed", []
    else:
        every_failure = [
            _when(s)
            for seen in by_kind.values()
            for s in seen.values()
            if section_verdict(s) == "failed"
        ]
        reset = max(every_failure, default="")
        kept = {
            k: s
            for k, s in chosen.items()
            if verdict[k] == "inconclusive" or not reset or _when(s) > reset
        }
        passed_on = sorted(k for k in kept if verdict[k] == "passed")
        outcome = "passed"
        if not passed_on:
            status = FalsifierStatus.PROPOSED
        elif required <= set(passed_on):
            status = FalsifierStatus.DISCHARGED
        else:
            status = FalsifierStatus.PARTIAL
    record = {
        "schema": ev.SCHEMA,
        "contract": cid,
        "falsifier": fid,
        "outcome": outcome,
        "status": status.value,
        "runs": dict(sorted(kept.items())),
        "passed_on": passed_on,
    }
    return FalsifierState(status, record), conflicts


def _stable(section: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in section.items() if k not in ("commit", "dirty")}


# --- contracts -------------------------------------------------------------------------------


def _common_changelog(contracts: Sequence[Contract]) -> int:
    """How many changelog entries every run shares (the state before the runs diverged)."""
    logs = [c.data.get("changelog") or [] for c in contracts]
    n = min(len(log) for log in logs)
    for i in range(n):
        if len({_canonical(log[i]) for log in logs}) > 1:
            return i
    return n


def _state_of(contract: Contract) -> dict[str, str]:
    return {f.id: falsifier_status(f.status).value for f in contract.falsifiers}


def _merged_contract_text(
    candidates: list[Contract],
    merged: dict[str, FalsifierState],
    conflicts: list[str],
) -> str:
    """The merged contract's text: a run's own file when its state is the merged one."""
    wanted = {fid: st.status.value for fid, st in merged.items()}
    evidence_paths = {
        fid: f"evidence/{candidates[0].id}/{fid}.json"
        for fid, st in merged.items()
        if st.record is not None
    }
    matching = [
        c
        for c in candidates
        if _state_of(c) == wanted
        and all(_evidence_of(c, fid) == p for fid, p in evidence_paths.items())
    ]
    if matching:
        texts = {c.path.read_text(encoding="utf-8") for c in matching}
        longest = max(len(_log(t)) for t in texts)
        return min(t for t in texts if len(_log(t)) == longest)
    # nobody holds the merged state: the common history plus one entry saying what changed
    keep = _common_changelog(candidates)
    texts = set()
    for c in candidates:
        texts.add(rewrite_text(c.path.read_text(encoding="utf-8"), _mutator(c, keep, merged)))
    if len({_canonical(_yaml_data(t)) for t in texts}) > 1:  # layout alone is no conflict
        conflicts.append(
            f"{candidates[0].id}: the runs' contract files differ beyond statuses and "
            "changelog; kept the first by content"
        )
    return min(texts)


def _yaml_data(text: str) -> Any:
    import yaml

    return yaml.safe_load(text)


def _evidence_of(contract: Contract, fid: str) -> str | None:
    f = contract.falsifier(fid)
    return f.evidence if f is not None else None


def _log(text: str) -> list[Any]:
    import yaml

    data = yaml.safe_load(text) or {}
    return data.get("changelog") or [] if isinstance(data, dict) else []


def _mutator(contract: Contract, keep: int, merged: dict[str, FalsifierState]) -> Any:
    cid = contract.id
    log = contract.data.get("changelog") or []
    base_version = str(log[keep - 1].get("version")) if keep else (contract.version or "0.0.0")
    if not is_semver(base_version):
        base_version = contract.version or "0.0.0"
        if not is_semver(base_version):
            base_version = "0.0.0"
    base_status = _base_statuses(contract, keep)
    changes = [
        f"{fid} {base_status.get(fid, 'PROPOSED')} -> {st.status.value}"
        for fid, st in sorted(merged.items())
        if base_status.get(fid, "PROPOSED") != st.status.value
    ]
    commits = sorted(
        {
            str(s.get("commit"))[:12]
            for st in merged.values()
            if st.record
            for s in st.record["runs"].values()
            if s.get("commit")
        }
    )
    dates = [
        str(s.get("observed_at", ""))[:10]
        for st in merged.values()
        if st.record
        for s in st.record["runs"].values()
    ]
    date = max([d for d in dates if d] or [str(e.get("date", "")) for e in log] or [""])
    declared = contract.status
    current = ContractStatus(declared) if declared in ContractStatus.__members__ else None
    contract_after = derive_contract_status((st.status for st in merged.values()), current)
    where = f"commits {', '.join(commits)}" if commits else "no commit"
    change = "; ".join(changes) or "statuses unchanged"
    entry = {
        "version": bump_minor(base_version),
        "date": date,
        "change": f"merged runs: {change}; contract {contract_after.value} ({where})",
    }

    def mutate(doc: Any) -> None:
        for item in doc.get("falsification_tests") or []:
            fid = item.get("id") if hasattr(item, "get") else None
            if fid not in merged:
                continue
            if falsifier_status(item.get("status")) is not merged[fid].status:
                set_key(item, "status", merged[fid].status.value)
            if merged[fid].record is not None:
                path = f"evidence/{cid}/{fid}.json"
                if item.get("evidence") != path:
                    set_key(item, "evidence", path, after="status")
        meta = doc["metadata"]
        if meta.get("status") != contract_after.value:
            set_key(meta, "status", contract_after.value, after="version")
        changelog = doc.get("changelog")
        if changelog is not None:
            del changelog[keep:]
        set_key(meta, "version", quoted_like(meta.get("version"), entry["version"]))
        append_changelog(doc, entry)

    return mutate


def _base_statuses(contract: Contract, keep: int) -> dict[str, str]:
    """Falsifier statuses at the common changelog point, replayed from the entries' text."""
    statuses: dict[str, str] = {}
    for entry in (contract.data.get("changelog") or [])[:keep]:
        change = str(entry.get("change", "")) if isinstance(entry, dict) else ""
        for part in change.split(";"):
            words = part.split()
            if len(words) >= 4 and words[0].startswith("FALSIFY-") and words[2] == "->":
                statuses[words[0]] = words[3]
    return statuses


# --- the merge -------------------------------------------------------------------------------


def merge_runs(run_roots: Sequence[Path], out: Path) -> MergeReport:
    """Merge the runs below ``run_roots`` into ``out``/contracts and ``out``/evidence.

    Files whose merged bytes already sit in ``out`` are not rewritten, so merging into one
    of the inputs (or merging a run with itself) changes nothing.
    """
    if not run_roots:
        raise MergeError("no run folder given")
    runs = [_read_run(Path(r)) for r in run_roots]
    report = MergeReport(runs=sorted({r.name for r in runs}))
    outputs: dict[Path, bytes] = {}
    names = sorted({n for r in runs for n in r.contracts})
    for name in names:
        present = [r for r in runs if name in r.contracts]
        contracts = [r.contracts[name][1] for r in present]
        cid = contracts[0].id
        fids = sorted({f.id for c in contracts for f in c.falsifiers})
        merged: dict[str, FalsifierState] = {}
        for fid in fids:
            declared: set[str] = set()
            statuses = []
            for run, c in zip(present, contracts, strict=True):
                f = c.falsifier(fid)
                if f is not None:
                    declared |= set(f.hosts)
                    statuses.append(falsifier_status(f.status))
                    report.statuses.setdefault(f"{cid}:{fid}", {})[run.name] = statuses[-1].value
            records = [_record(r, cid, fid) for r in present]
            state, conflicts = merge_falsifier(records, statuses, declared, cid, fid)
            merged[fid] = state
            report.merged[f"{cid}:{fid}"] = state.status.value
            report.conflicts.extend(conflicts)
            if state.record is not None:
                text = json.dumps(state.record, indent=2, ensure_ascii=False) + "\n"
                outputs[Path("evidence") / cid / f"{fid}.json"] = text.encode("utf-8")
        text = _merged_contract_text(contracts, merged, report.conflicts)
        outputs[Path("contracts") / name] = text.encode("utf-8")
        history = _merged_history(present, cid)
        if history:
            outputs[Path("evidence") / cid / "history.jsonl"] = history
    for name in sorted({n for r in runs for n in r.other_yaml}):
        versions = {r.other_yaml[name] for r in runs if name in r.other_yaml}
        if len(versions) > 1:
            report.conflicts.append(f"contracts/{name}: differs between runs; kept the first")
        outputs[Path("contracts") / name] = min(versions)
    report.conflicts.sort()
    for rel, data in sorted(outputs.items()):
        target = Path(out) / rel
        try:
            if target.read_bytes() == data:
                continue
        except OSError:
            pass
        target.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(target, data)
        report.written.append(str(rel))
    return report


def _merged_history(runs: Sequence[_Run], cid: str) -> bytes:
    """Every run's history lines, each once, in time order (they feed the dashboard's chart).

    When one run's log already holds every line, its bytes are kept as they are."""
    logs: list[bytes] = []
    lines: dict[str, str] = {}  # canonical form -> the line as written
    for run in runs:
        try:
            data = (run.root / "evidence" / cid / "history.jsonl").read_bytes()
        except OSError:
            continue
        logs.append(data)
        for line in data.decode("utf-8", errors="replace").splitlines():
            key = _line_key(line)
            if key is None:
                continue
            lines[key] = min(lines.get(key, line), line)
    if not lines:
        return b""
    complete = [log for log in logs if len(_keys(log)) == len(lines)]
    if complete:
        return min(complete)
    ordered = sorted(lines, key=lambda k: (str(json.loads(k).get("time") or ""), k))
    return "".join(lines[k] + "\n" for k in ordered).encode("utf-8")


def _line_key(line: str) -> str | None:
    try:
        value = json.loads(line)
    except json.JSONDecodeError:
        return None
    return _canonical(value) if isinstance(value, dict) else None


def _keys(log: bytes) -> set[str]:
    keys = {_line_key(line) for line in log.decode("utf-8", errors="replace").splitlines()}
    return {k for k in keys if k is not None}


def print_report(report: MergeReport) -> None:
    """The falsifiers whose status differs between runs, the merged status, the conflicts."""
    from rich.console import Console
    from rich.table import Table

    console = Console() if Console().is_terminal else Console(width=160)
    table = Table(title=f"merged {len(report.runs)} runs", title_justify="left")
    table.add_column("falsifier")
    for name in report.runs:
        table.add_column(Path(name).name or name)
    table.add_column("merged", style="bold")
    shown = 0
    for qid in sorted(report.merged):
        per_run = report.statuses.get(qid, {})
        if len({*per_run.values(), report.merged[qid]}) == 1:
            continue  # every run already agrees
        table.add_row(qid, *(per_run.get(n, "-") for n in report.runs), report.merged[qid])
        shown += 1
    if shown:
        console.print(table)
    agree = len(report.merged) - shown
    console.print(
        f"{agree} falsifiers agreed in every run; {shown} combined; "
        f"{len(report.written)} files written"
    )
    for line in report.conflicts:
        console.print(f"[bold red]conflict[/] {line}", highlight=False)
