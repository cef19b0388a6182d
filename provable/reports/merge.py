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

A run is untrusted input (a CI artifact a pull request controls). Nothing in it is followed
or built into a path unchecked: a symlink anywhere below a run, or an id that is not one
safe file name, refuses the whole merge before anything is written (``MergeError``), and
no target below ``--out`` is written through a symlink. Evidence and history are read
within bounds and typed; what merge cannot read or does not know (a host kind other than
``cpu``/``cuda``, evidence of a falsifier no contract declares) is left out with a warning,
and ``strict`` makes any warning exit 1.
"""

from __future__ import annotations

import json
import math
import os
import re
import stat
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from provable.contracts import evidence as ev
from provable.contracts.atomic import write_atomic
from provable.contracts.discovery import is_yaml_name
from provable.contracts.lifecycle import (
    KNOWN_HOSTS,
    ContractStatus,
    FalsifierStatus,
    bump_minor,
    derive_contract_status,
    is_semver,
)
from provable.contracts.model import Contract, contract_from_document, is_binding_registry
from provable.contracts.paths import inside, is_safe_name
from provable.contracts.rewrite import (
    RewriteError,
    append_changelog,
    quoted_like,
    rewrite_text,
    set_key,
)
from provable.contracts.yamlsource import MAX_FILE_BYTES, YamlSourceError, parse_yaml
from provable.reports.lastrun import (
    one_line,
)
from provable.reports.runfiles import (
    RefusedPath,
    RunFileError,
    list_below,
    load_json,
    read_below,
    read_json_below,
    tail_lines,
)
from provable.reports.status import falsifier_status

#: least proven first: the conservative pick when runs disagree without evidence
_WORST_FIRST = (
    FalsifierStatus.FALSIFIED,
    FalsifierStatus.PROPOSED,
    FalsifierStatus.PARTIAL,
    FalsifierStatus.DISCHARGED,
)


#: how much of a run's ``history.jsonl`` is merged (its end; one line per falsifier per run)
MAX_HISTORY_BYTES = 16 * 2**20
_SAFE_RULE = "letters, digits, '.', '_' and '-' only, no '..'; pv validate rejects it too"


class MergeError(Exception):
    """A run folder cannot be merged (missing, unreadable, a symlink or an unsafe id in it),
    or ``--out`` cannot be written safely; names the path. Nothing is written."""


def _refused(exc: RunFileError) -> MergeError:
    why = "; a run is read without following links" if getattr(exc, "link", False) else ""
    return MergeError(f"{exc}{why}; nothing merged")


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
    #: what was left out: unreadable or mistyped evidence, unknown host kinds and falsifiers
    warnings: list[str] = field(default_factory=list)
    strict: bool = False

    def exit_code(self) -> int:
        """``pv merge``'s: 1 on a conflict, or on any warning under ``strict``; else 0."""
        return 1 if self.conflicts or (self.strict and self.warnings) else 0

    def to_json(self) -> dict[str, Any]:
        return {
            "runs": self.runs,
            "falsifiers": {
                qid: {"runs": self.statuses[qid], "merged": self.merged[qid]}
                for qid in sorted(self.merged)
            },
            "conflicts": self.conflicts,
            "warnings": self.warnings,
            "written": self.written,
        }


# --- reading runs ------------------------------------------------------------------------


@dataclass(frozen=True)
class _ContractFile:
    path: Path  # where it was read (for messages); never opened again
    contract: Contract
    text: str


@dataclass
class _Run:
    name: str
    root: Path
    contracts: dict[str, _ContractFile]  # file name -> contract
    other_yaml: dict[str, bytes]  # binding registries and the like, copied when identical
    evidence: dict[str, list[tuple[str, str]] | None]  # evidence/ folder -> its entries


def _listing(root: Path, names: list[str]) -> list[tuple[str, str]] | None:
    """A folder's entries; a symlink among them refuses the run (never followed, even
    where merge would not read it)."""
    try:
        entries = list_below(root, names)
    except RunFileError as exc:
        raise _refused(exc) from None
    for name, kind in entries or []:
        if kind == "link":
            link = RefusedPath(f"{Path(root, *names, name)}: is a symbolic link", link=True)
            raise _refused(link)
    return entries


def _read_run(root: Path) -> _Run:
    entries = _listing(root, ["contracts"])
    if entries is None:
        raise MergeError(f"{root}: no contracts/ folder (expected a run's contracts + evidence)")
    contracts: dict[str, _ContractFile] = {}
    other: dict[str, bytes] = {}
    for name, kind in entries:
        if kind != "file" or not is_yaml_name(name) or name.startswith("."):
            continue
        path = root / "contracts" / name
        if not is_safe_name(name):
            raise MergeError(f"{path}: file name {name!r} is not one safe name ({_SAFE_RULE})")
        try:
            raw = read_below(root, ["contracts", name], MAX_FILE_BYTES)
            if raw is None:
                continue  # gone since the listing
            doc = parse_yaml(raw, path)
        except RefusedPath as exc:
            raise _refused(exc) from None
        except (RunFileError, YamlSourceError) as exc:
            raise MergeError(f"{path}: cannot read contract: {exc}") from None
        if is_binding_registry(doc.data):
            other[name] = raw
            continue
        if not isinstance(doc.data, dict):
            raise MergeError(f"{path}: cannot read contract: its top level is not a mapping")
        contract = contract_from_document(doc)
        _check_ids(path, contract)
        contracts[name] = _ContractFile(path, contract, raw.decode("utf-8"))
    evidence: dict[str, list[tuple[str, str]] | None] = {}
    for name, kind in _listing(root, ["evidence"]) or []:
        if kind == "folder" and not name.startswith("."):
            evidence[name] = _listing(root, ["evidence", name]) if is_safe_name(name) else None
    return _Run(str(root), root, contracts, other, evidence)


def _check_ids(path: Path, contract: Contract) -> None:
    """Ids become paths (``evidence/<contract id>/<falsifier id>.json``): each must be one
    safe file name, or nothing is merged."""
    if not is_safe_name(contract.id):
        raise MergeError(
            f"{path}: contract id {contract.id!r} cannot name a folder ({_SAFE_RULE}); "
            "nothing merged"
        )
    for f in contract.falsifiers:
        if not is_safe_name(f.id):
            raise MergeError(
                f"{path}: falsifier id {f.id!r} cannot name a file ({_SAFE_RULE}); nothing merged"
            )


def _record(run: _Run, cid: str, fid: str, warnings: list[str]) -> dict[str, Any] | None:
    """A run's evidence record of one falsifier, typed; None (and a warning) when it cannot
    be merged."""
    names = ["evidence", cid, f"{fid}.json"]
    try:
        data = read_json_below(run.root, names, ev.MAX_EVIDENCE_BYTES)
        if data is None:
            return None
    except RefusedPath as exc:
        raise _refused(exc) from None
    except RunFileError as exc:
        warnings.append(f"{Path(run.root, *names)}: {exc}; not merged")
        return None
    record, findings = check_record(data, cid, fid)
    warnings.extend(f"{Path(run.root, *names)}: {finding}; not merged" for finding in findings)
    return record


# --- the evidence merge knows ---------------------------------------------------------------


def _kind(value: Any) -> str:
    """What a value is, for a message: ``int 5``, ``float nan``, ``list``, ``null``."""
    if value is None:
        return "null"
    if isinstance(value, (dict, list)):
        return type(value).__name__
    return f"{type(value).__name__} {_short(value)}"


def _short(value: Any) -> str:
    if value is None:
        return "null"
    text = repr(value) if isinstance(value, (str, int, float, bool)) else type(value).__name__
    return text if len(text) <= 60 else text[:57] + "..."


_PLAIN_KEY = re.compile(r"[A-Za-z0-9_-]+")


def _field(where: str, key: Any) -> str:
    if isinstance(key, int):
        return f"{where}[{key}]"
    step = key if _PLAIN_KEY.fullmatch(key) else repr(key)
    return f"{where}.{step}" if where else step


def _non_finite(value: Any) -> str | None:
    """``path: NaN is not a JSON number`` for the first NaN or infinity, iteratively."""
    stack: list[tuple[str, Any]] = [("", value)]
    while stack:
        where, node = stack.pop()
        if isinstance(node, float) and not math.isfinite(node):
            return (
                f"{where or '(top level)'}: {'NaN' if node != node else node} is not a JSON number"
            )
        if isinstance(node, dict):
            stack.extend((_field(where, k), v) for k, v in reversed(node.items()))
        elif isinstance(node, list):
            stack.extend((_field(where, i), v) for i, v in reversed(list(enumerate(node))))
    return None


_SECTION_TYPES: dict[str, tuple[tuple[type, ...], str]] = {
    "failure": ((dict,), "an object"),
    "observed_at": ((str,), "a time (text)"),
    "commit": ((str,), "text"),
    "dirty": ((bool,), "true or false"),
    "host": ((dict,), "an object"),
    "recorded": ((dict,), "an object"),
}


def _section_problem(section: Any, where: str) -> str | None:
    if not isinstance(section, dict):
        return f"{where}: expected an object, got {_kind(section)}"
    tests = section.get("tests")
    if tests is not None:
        if not isinstance(tests, list):
            return f"{where}.tests: expected a list of test results, got {_kind(tests)}"
        for i, test in enumerate(tests):
            if not isinstance(test, dict):
                return f"{where}.tests[{i}]: expected an object, got {_kind(test)}"
            for key in ("nodeid", "outcome"):
                if test.get(key) is not None and not isinstance(test[key], str):
                    return f"{where}.tests[{i}].{key}: expected text, got {_kind(test[key])}"
    for key, (types, what) in _SECTION_TYPES.items():
        value = section.get(key)
        if value is not None and not isinstance(value, types):
            return f"{where}.{key}: expected {what}, got {_kind(value)}"
    return None


def check_record(data: Any, cid: str, fid: str) -> tuple[dict[str, Any] | None, list[str]]:
    """An evidence record as merge and the dashboard read it: (the record with only what
    they know, findings). The record is None when it cannot be read at all (the first
    finding says which field is wrong); a section of an unknown host kind, or an unknown
    kind in ``passed_on``, is left out with a finding of its own."""
    if not isinstance(data, dict):
        return None, [f"expected a JSON object, got {_kind(data)}"]
    for key, want in (("contract", cid), ("falsifier", fid)):
        if key in data and data[key] != want:
            return None, [f"{key}: names {_short(data[key])}, not {want!r}"]
    for key in ("schema", "outcome", "status"):
        if data.get(key) is not None and not isinstance(data[key], str):
            return None, [f"{key}: expected text, got {_kind(data[key])}"]
    runs = data.get("runs")
    if not isinstance(runs, dict):
        got = "nothing" if "runs" not in data else _kind(runs)
        return None, [f"runs: expected an object of host sections, got {got}"]
    passed = data.get("passed_on")
    if passed is not None and (
        not isinstance(passed, list) or not all(isinstance(h, str) for h in passed)
    ):
        return None, [f"passed_on: expected a list of host kinds, got {_kind(passed)}"]
    findings = []
    known = ", ".join(KNOWN_HOSTS)
    sections = {}
    for kind in sorted(runs):
        if kind not in KNOWN_HOSTS:
            findings.append(f"runs.{kind!r}: unknown host kind (known: {known})")
            continue
        problem = _section_problem(runs[kind], f"runs.{kind}")
        if problem is not None:
            return None, [problem]
        sections[kind] = runs[kind]
    for host in passed or []:
        if host not in KNOWN_HOSTS:
            findings.append(f"passed_on: unknown host kind {host!r} (known: {known})")
    bad = _non_finite(data)
    if bad is not None:
        return None, [bad]
    record = {**data, "runs": sections}
    if passed is not None:
        record["passed_on"] = [h for h in passed if h in KNOWN_HOSTS]
    return record, findings


def _history_problem(item: Any, cid: str, declared: set[str]) -> str | None:
    """Why a history line is not merged; None when it is."""
    if not isinstance(item, dict):
        return f"expected a JSON object, got {_kind(item)}"
    if "contract" in item and item["contract"] != cid:
        return f"contract: names {_short(item['contract'])}, not {cid!r}"
    fid = item.get("falsifier")
    if not isinstance(fid, str):
        return f"falsifier: expected text, got {_kind(fid)}"
    if fid not in declared:
        return f"no contract declares falsifier {fid!r} in {cid}"
    for key in ("time", "outcome", "before", "after", "commit"):
        if item.get(key) is not None and not isinstance(item[key], str):
            return f"{key}: expected text, got {_kind(item[key])}"
    return _non_finite(item)


def _unknown_evidence(runs: Sequence[_Run], declared: dict[str, set[str]]) -> list[str]:
    """Evidence of a contract or a falsifier that no run declares: left out, and said."""
    found = []
    for run in runs:
        for folder, entries in run.evidence.items():
            where = run.root / "evidence" / folder
            if folder not in declared:
                found.append(f"{where}: no contract has the id {folder!r}; not merged")
                continue
            for name, kind in entries or []:
                if kind != "file" or not name.endswith(".json") or name.startswith("."):
                    continue
                if name[: -len(".json")] not in declared[folder]:
                    found.append(
                        f"{where / name}: no contract declares falsifier "
                        f"{name[: -len('.json')]!r} in {folder}; not merged"
                    )
    return found


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
    try:  # a contract's changelog is YAML: a date, keys of two types
        return json.dumps(value, sort_keys=True, ensure_ascii=False, default=repr)
    except TypeError:
        return repr(value)


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


def _entries(contract: Contract) -> list[Any]:
    """The changelog's entries as written (any type: the file is untrusted)."""
    log = contract.data.get("changelog")
    return log if isinstance(log, list) else []


def _common_changelog(contracts: Sequence[Contract]) -> int:
    """How many changelog entries every run shares (the state before the runs diverged)."""
    logs = [_entries(c) for c in contracts]
    n = min(len(log) for log in logs)
    for i in range(n):
        if len({_canonical(log[i]) for log in logs}) > 1:
            return i
    return n


def _state_of(contract: Contract) -> dict[str, str]:
    return {f.id: falsifier_status(f.status).value for f in contract.falsifiers}


def _merged_contract_text(
    files: list[_ContractFile],
    merged: dict[str, FalsifierState],
    conflicts: list[str],
) -> str:
    """The merged contract's text: a run's own file when its state is the merged one."""
    candidates = [f.contract for f in files]
    wanted = {fid: st.status.value for fid, st in merged.items()}
    evidence_paths = {
        fid: f"evidence/{candidates[0].id}/{fid}.json"
        for fid, st in merged.items()
        if st.record is not None
    }
    matching = [
        f
        for f in files
        if _state_of(f.contract) == wanted
        and all(_evidence_of(f.contract, fid) == p for fid, p in evidence_paths.items())
    ]
    if matching:
        logs = {f.text: len(_entries(f.contract)) for f in matching}
        longest = max(logs.values())
        return min(t for t, n in logs.items() if n == longest)
    # nobody holds the merged state: the common history plus one entry saying what changed
    keep = _common_changelog(candidates)
    texts = set()
    for f in files:
        try:
            texts.add(rewrite_text(f.text, _mutator(f.contract, keep, merged)))
        except (RewriteError, KeyError, TypeError, AttributeError, ValueError) as exc:
            raise MergeError(
                f"{f.path}: cannot write the merged state into this contract "
                f"({type(exc).__name__}: {exc}); nothing merged"
            ) from None
    if len({_canonical(_yaml_data(t, files[0].path)) for t in texts}) > 1:
        conflicts.append(
            f"{candidates[0].id}: the runs' contract files differ beyond statuses and "
            "changelog; kept the first by content"
        )  # layout alone is no conflict
    return min(texts)


def _yaml_data(text: str, path: Path) -> Any:
    """The data of a rewritten contract, read within the same bounds as any contract."""
    try:
        return parse_yaml(text.encode("utf-8", "backslashreplace"), path).data
    except YamlSourceError:
        return text  # compared as text


def _evidence_of(contract: Contract, fid: str) -> str | None:
    f = contract.falsifier(fid)
    return f.evidence if f is not None else None


def _mutator(contract: Contract, keep: int, merged: dict[str, FalsifierState]) -> Any:
    cid = contract.id
    log = [e if isinstance(e, dict) else {} for e in _entries(contract)]
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
            if not isinstance(fid, str) or fid not in merged:
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
    for entry in _entries(contract)[:keep]:
        change = str(entry.get("change", "")) if isinstance(entry, dict) else ""
        for part in change.split(";"):
            words = part.split()
            if len(words) >= 4 and words[0].startswith("FALSIFY-") and words[2] == "->":
                statuses[words[0]] = words[3]
    return statuses


# --- the merge -------------------------------------------------------------------------------


def merge_runs(run_roots: Sequence[Path], out: Path, strict: bool = False) -> MergeReport:
    """Merge the runs below ``run_roots`` into ``out``/contracts and ``out``/evidence.

    Files whose merged bytes already sit in ``out`` are not rewritten, so merging into one
    of the inputs (or merging a run with itself) changes nothing. Raises ``MergeError``
    (nothing written) for a run that cannot be merged safely; what is left out is in the
    report's ``warnings`` (``strict``: they make ``exit_code()`` 1).
    """
    if not run_roots:
        raise MergeError("no run folder given")
    runs = [_read_run(Path(r)) for r in run_roots]
    report = MergeReport(runs=sorted({r.name for r in runs}), strict=strict)
    declared: dict[str, set[str]] = {}
    owner: dict[str, str] = {}  # contract id -> file name
    for name in sorted({n for r in runs for n in r.contracts}):
        ids = {r.contracts[name].contract.id for r in runs if name in r.contracts}
        if len(ids) > 1:
            raise MergeError(
                f"contracts/{name}: its contract id differs between runs "
                f"({', '.join(sorted(map(repr, ids)))}); nothing merged"
            )
        cid = ids.pop()
        if cid in owner:
            raise MergeError(
                f"contracts/{owner[cid]} and contracts/{name} both have the contract id "
                f"{cid!r}; nothing merged"
            )
        owner[cid] = name
        declared[cid] = {
            f.id for r in runs if name in r.contracts for f in r.contracts[name].contract.falsifiers
        }
    report.warnings.extend(_unknown_evidence(runs, declared))
    outputs: dict[tuple[str, ...], bytes] = {}
    for cid, name in sorted(owner.items(), key=lambda item: item[1]):
        present = [r for r in runs if name in r.contracts]
        files = [r.contracts[name] for r in present]
        contracts = [f.contract for f in files]
        merged: dict[str, FalsifierState] = {}
        for fid in sorted(declared[cid]):
            hosts: set[str] = set()
            statuses = []
            for run, c in zip(present, contracts, strict=True):
                f = c.falsifier(fid)
                if f is not None:
                    hosts |= set(f.hosts)
                    statuses.append(falsifier_status(f.status))
                    report.statuses.setdefault(f"{cid}:{fid}", {})[run.name] = statuses[-1].value
            records = [_record(r, cid, fid, report.warnings) for r in present]
            state, conflicts = merge_falsifier(records, statuses, hosts, cid, fid)
            merged[fid] = state
            report.merged[f"{cid}:{fid}"] = state.status.value
            report.conflicts.extend(conflicts)
            if state.record is not None:
                text = json.dumps(state.record, indent=2, ensure_ascii=False) + "\n"
                outputs["evidence", cid, f"{fid}.json"] = _encode(text)
        text = _merged_contract_text(files, merged, report.conflicts)
        outputs["contracts", name] = _encode(text)
        history = _merged_history(present, cid, declared[cid], report.warnings)
        if history:
            outputs["evidence", cid, "history.jsonl"] = history
    for name in sorted({n for r in runs for n in r.other_yaml}):
        versions = {r.other_yaml[name] for r in runs if name in r.other_yaml}
        if len(versions) > 1:
            report.conflicts.append(f"contracts/{name}: differs between runs; kept the first")
        outputs["contracts", name] = min(versions)
    report.conflicts.sort()
    report.warnings.sort()
    _check_out(Path(out), outputs)
    for rel, data in sorted(outputs.items()):
        target = Path(out).joinpath(*rel)
        try:
            if read_below(Path(out), rel, len(data)) == data:
                continue
        except RunFileError:
            pass  # larger than ours: it differs
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            if not inside(target.parent, out):  # pragma: no cover - _check_out refused it
                raise MergeError(f"{target}: resolves outside {out}; not written")
            write_atomic(target, data)
        except OSError as exc:
            raise MergeError(f"{target}: cannot write: {exc.strerror or exc}") from None
        report.written.append("/".join(rel))
    return report


def _encode(text: str) -> bytes:
    """UTF-8; a lone surrogate (a JSON ``\\ud800`` escape in a run) stays an escape."""
    return text.encode("utf-8", "backslashreplace")


def _check_out(out: Path, outputs: Iterable[tuple[str, ...]]) -> None:
    """Before anything is written: every target's way down from ``out`` is real folders and
    the target a regular file or nothing, never a symlink (which could lead outside)."""
    try:
        info = os.stat(out)  # --out itself is the caller's: it may be a link
    except FileNotFoundError:
        return
    except OSError as exc:
        raise MergeError(f"{out}: {exc.strerror or exc}; nothing merged") from None
    if not stat.S_ISDIR(info.st_mode):
        raise MergeError(f"{out}: not a folder; nothing merged")
    for rel in outputs:
        where = Path(out)
        for i, name in enumerate(rel):
            where = where / name
            if not is_safe_name(name):  # pragma: no cover - ids were checked when read
                raise MergeError(f"{where}: {name!r} is not a safe file name; nothing merged")
            try:
                mode = os.lstat(where).st_mode
            except FileNotFoundError:
                break
            except OSError as exc:
                raise MergeError(f"{where}: {exc.strerror or exc}; nothing merged") from None
            if stat.S_ISLNK(mode):
                raise MergeError(
                    f"{where}: is a symbolic link; merge never writes through one; nothing merged"
                )
            if i < len(rel) - 1 and not stat.S_ISDIR(mode):
                raise MergeError(f"{where}: not a folder; nothing merged")
            if i == len(rel) - 1 and not stat.S_ISREG(mode):
                raise MergeError(f"{where}: not a regular file; nothing merged")


def _merged_history(
    runs: Sequence[_Run], cid: str, declared: set[str], warnings: list[str]
) -> bytes:
    """Every run's history lines, each once, in time order (they feed the dashboard's chart).

    A line is merged when it is a bounded JSON object naming a falsifier of this contract;
    the others are counted in a warning. When one run's log already holds every line (and
    nothing else), its bytes are kept as they are."""
    logs: list[tuple[bytes, set[str]]] = []  # the clean logs, with their lines' forms
    lines: dict[str, tuple[str, str]] = {}  # canonical form -> (time, the line as written)
    for run in runs:
        names = ["evidence", cid, "history.jsonl"]
        where = Path(run.root, *names)
        try:
            raw_lines, truncated = tail_lines(run.root, names, MAX_HISTORY_BYTES)
        except RefusedPath as exc:
            raise _refused(exc) from None
        except RunFileError as exc:
            warnings.append(f"{where}: {exc}; not merged")
            continue
        except OSError as exc:
            warnings.append(f"{where}: cannot read: {exc.strerror or exc}; not merged")
            continue
        if truncated:
            warnings.append(
                f"{where}: over {MAX_HISTORY_BYTES >> 20} MiB; only its last "
                f"{MAX_HISTORY_BYTES >> 20} MiB merged"
            )
        keys: set[str] = set()
        total, dropped, first = 0, 0, ""
        for number, raw in enumerate(raw_lines, 1):
            if not raw.strip():
                continue
            total += 1
            try:
                item = load_json(raw)
                problem = _history_problem(item, cid, declared)
            except RunFileError as exc:
                problem = str(exc)
            if problem is not None:
                dropped += 1
                first = first or f"line {number}: {problem}"
                continue
            key = _canonical(item)
            line = raw.decode("utf-8").rstrip("\r")
            keys.add(key)
            have = lines.get(key)
            lines[key] = (str(item.get("time") or ""), min(have[1], line) if have else line)
        if dropped:
            warnings.append(f"{where}: {dropped} of {total} lines not merged ({first})")
        if not dropped and not truncated:  # the whole file: its bytes can be kept as they are
            logs.append((b"\n".join(raw_lines), keys))
    if not lines:
        return b""
    complete = [data for data, keys in logs if len(keys) == len(lines)]
    if complete:
        return min(complete)
    ordered = sorted(lines, key=lambda k: (lines[k][0], k))
    return _encode("".join(lines[k][1] + "\n" for k in ordered))


def print_report(report: MergeReport) -> None:
    """The falsifiers whose status differs between runs, the merged status, the conflicts
    and what was left out (each line as text: nothing from a run is read as markup)."""
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    console = Console() if Console().is_terminal else Console(width=160)
    table = Table(title=f"merged {len(report.runs)} runs", title_justify="left")
    table.add_column("falsifier")
    for name in report.runs:
        table.add_column(escape(one_line(Path(name).name or name)))
    table.add_column("merged", style="bold")
    shown = 0
    for qid in sorted(report.merged):
        per_run = report.statuses.get(qid, {})
        if len({*per_run.values(), report.merged[qid]}) == 1:
            continue  # every run already agrees
        table.add_row(escape(qid), *(per_run.get(n, "-") for n in report.runs), report.merged[qid])
        shown += 1
    if shown:
        console.print(table)
    agree = len(report.merged) - shown
    console.print(
        f"{agree} falsifiers agreed in every run; {shown} combined; "
        f"{len(report.written)} files written"
    )
    for line in report.conflicts:
        console.print(f"[bold red]conflict[/] {escape(one_line(line))}", highlight=False)
    label = "[bold red]error[/]" if report.strict else "[yellow]warning[/]"
    for line in report.warnings:
        console.print(f"{label} {escape(one_line(line))}", highlight=False, soft_wrap=True)
