"""The checks of one contract file, each a function returning findings.

Cross-file checks (shared falsifier IDs, ``depends_on``, cycles) are in ``validate``; these
look at one contract at a time.
"""

from __future__ import annotations

import difflib
import json
import os
import re
from collections.abc import Callable, Iterator
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any

from provable.contracts.evidence import EvidenceUnreadable, load_evidence
from provable.contracts.findings import ERROR, WARNING, Finding
from provable.contracts.lifecycle import (
    WILD_CONTRACT_STATUSES,
    WILD_FALSIFIER_STATUSES,
    ContractStatus,
    FalsifierStatus,
    derive_contract_status,
    is_semver,
    semver_key,
)
from provable.contracts.model import FALSIFIER_ALIASES, KNOWN_SECTIONS, Contract
from provable.contracts.paths import is_safe_name, project_root

FALSIFIER_ID_SHAPE = re.compile(r"^FALSIFY-[A-Z][A-Z0-9]*(?:-[A-Z0-9]+)*-[0-9]{3}\Z", re.ASCII)
FALSIFIER_REF = re.compile(r"(?<![A-Za-z0-9_-])FALSIFY-[A-Z0-9]+(?:-[A-Z0-9]+)*")

Rule = Callable[[Contract], Iterator[Finding]]


@lru_cache(maxsize=1)
def schema() -> dict[str, Any]:
    text = resources.files("provable.contracts").joinpath("schema/contract.schema.json").read_text()
    return json.loads(text)


@lru_cache(maxsize=1)
def _schema_validator() -> Any:
    from jsonschema import Draft202012Validator

    return Draft202012Validator(schema())


@lru_cache(maxsize=1)
def _fast_schema_check() -> Any:
    """A compiled yes/no check (fastjsonschema): 10x faster than jsonschema on valid files.

    jsonschema stays the authority: it runs whenever the fast check says no, and produces
    every message. ``tests/test_schema_agreement.py`` holds the two to the same verdicts.
    """
    import fastjsonschema

    return fastjsonschema.compile(schema())


def schema_valid_fast(data: Any) -> bool:
    """True only when the compiled check passes; any doubt goes to jsonschema.

    The catch is deliberately broad: the compiled function raises the exception class of
    the fastjsonschema module it was compiled with, which need not be the one importable
    now (pytester, for one, unloads modules between tests).
    """
    try:
        _fast_schema_check()(data)
    except Exception:
        return False
    return True


class _Emitter:
    """Binds a contract's path so rules can say ``emit(line, rule, message)``."""

    def __init__(self, contract: Contract) -> None:
        self.path = contract.shown_path

    def error(self, line: int, rule: str, message: str) -> Finding:
        return Finding(self.path, line, ERROR, rule, message)

    def warning(self, line: int, rule: str, message: str) -> Finding:
        return Finding(self.path, line, WARNING, rule, message)


def _dotted(path: Any) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "(top level)"


def check_schema(c: Contract) -> Iterator[Finding]:
    if schema_valid_fast(c.data):
        return
    emit = _Emitter(c)
    errors = sorted(_schema_validator().iter_errors(c.data), key=lambda e: list(map(str, e.path)))
    for err in errors:
        where = _dotted(err.absolute_path)
        message = err.message
        if len(message) > 160:
            message = message[:157] + "..."
        yield emit.error(c.line_of(*err.absolute_path), "schema", f"{where}: {message}")


def check_metadata(c: Contract) -> Iterator[Finding]:
    emit = _Emitter(c)
    meta = c.data.get("metadata")
    if not isinstance(meta, dict):
        return
    meta_id = meta.get("id")
    if isinstance(meta_id, str) and meta_id != c.path.stem:
        yield emit.error(
            c.line_of("metadata", "id"),
            "id-matches-file",
            f"metadata.id {meta_id!r} differs from the file name {c.path.stem!r} "
            "(a contract is found by its file name)",
        )
    version = meta.get("version")
    if version is None:
        yield emit.warning(c.line_of("metadata"), "semver", "metadata.version is missing")
    elif isinstance(version, str) and not is_semver(version):
        yield emit.error(
            c.line_of("metadata", "version"),
            "semver",
            f"metadata.version {version!r} is not a semantic version (MAJOR.MINOR.PATCH)",
        )


def check_sections(c: Contract) -> Iterator[Finding]:
    emit = _Emitter(c)
    for key in c.data:
        if key in KNOWN_SECTIONS:
            continue
        near = difflib.get_close_matches(str(key), KNOWN_SECTIONS, n=1, cutoff=0.8)
        hint = f"; did you mean {near[0]!r}?" if near else " (kept as is, not checked)"
        yield emit.warning(c.line_of(key), "unknown-section", f"unknown section {key!r}{hint}")


def check_falsifiers(c: Contract) -> Iterator[Finding]:
    emit = _Emitter(c)
    first_line: dict[str, int] = {}
    raw_items = c.data.get("falsification_tests")
    for f in c.falsifiers:
        if f.id in first_line:
            yield emit.error(
                f.line,
                "falsifier-id-unique",
                f"falsifier {f.id} is declared twice in this contract (first at line "
                f"{first_line[f.id]})",
            )
        else:
            first_line[f.id] = f.line
        if not is_safe_name(f.id):
            yield emit.error(
                c.line_of("falsification_tests", f.index, "id"),
                "falsifier-id-unsafe",
                f"falsifier ID {f.id!r} cannot name its evidence file: letters, digits, '.', "
                "'_' and '-' only, starting with a letter or digit, no '..'",
            )
        elif not FALSIFIER_ID_SHAPE.match(f.id):
            yield emit.warning(
                c.line_of("falsification_tests", f.index, "id"),
                "falsifier-id-shape",
                f"falsifier ID {f.id!r} is not of the shape FALSIFY-<PREFIX>-<NNN>",
            )
        raw = raw_items[f.index] if isinstance(raw_items, list) else {}
        for alias, ours in FALSIFIER_ALIASES.items():
            if alias in raw and ours in raw:
                yield emit.warning(
                    c.line_of("falsification_tests", f.index, alias),
                    "falsifier-alias",
                    f"{f.id} has both {ours!r} and its alias {alias!r}; {ours!r} is used",
                )
        for name, value in (("rule", f.rule), ("prediction", f.prediction)):
            if value is None and name not in raw:
                alias = next(a for a, o in FALSIFIER_ALIASES.items() if o == name)
                yield emit.error(
                    f.line,
                    "falsifier-fields",
                    f"{f.id} has no {name!r} (or {alias!r}): a falsifier states what it refutes",
                )


def _nearest(word: str, vocabulary: list[str]) -> str | None:
    upper = word.upper().replace(" ", "_").replace("-", "_")
    if upper in vocabulary:
        return upper
    near = difflib.get_close_matches(upper, vocabulary, n=1, cutoff=0.6)
    return near[0] if near else None


def _check_status_word(
    emit: _Emitter,
    line: int,
    word: str,
    what: str,
    vocabulary: list[str],
    wild: dict[str, Any],
) -> Iterator[Finding]:
    if word in vocabulary:
        return
    if word.upper() in wild:
        ours = wild[word.upper()].value
        yield emit.warning(
            line, "status-vocabulary", f"{what} {word!r} is not ours; the nearest is {ours!r}"
        )
        return
    near = _nearest(word, vocabulary)
    hint = f"; did you mean {near!r}?" if near else f" (one of {', '.join(vocabulary)})"
    yield emit.error(line, "status-vocabulary", f"unknown {what} {word!r}{hint}")


def check_statuses(c: Contract) -> Iterator[Finding]:
    emit = _Emitter(c)
    f_vocab = [s.value for s in FalsifierStatus]
    c_vocab = [s.value for s in ContractStatus]
    all_known = True
    statuses: list[FalsifierStatus] = []
    for f in c.falsifiers:
        if f.status is None:
            statuses.append(FalsifierStatus.PROPOSED)
            continue
        findings = list(
            _check_status_word(
                emit,
                c.line_of("falsification_tests", f.index, "status"),
                f.status,
                f"falsifier status of {f.id}",
                f_vocab,
                dict(WILD_FALSIFIER_STATUSES),
            )
        )
        yield from findings
        if findings:
            all_known = False
        else:
            statuses.append(FalsifierStatus(f.status))
    if c.status is None:
        return
    findings = list(
        _check_status_word(
            emit,
            c.line_of("metadata", "status"),
            c.status,
            "contract status",
            c_vocab,
            dict(WILD_CONTRACT_STATUSES),
        )
    )
    yield from findings
    if findings or not all_known:
        return
    declared = ContractStatus(c.status)
    derived = derive_contract_status(statuses, declared)
    if derived != declared:
        yield emit.error(
            c.line_of("metadata", "status"),
            "status-derived",
            f"contract status is {declared.value} but its falsifiers derive {derived.value}",
        )


def check_verification_summary(c: Contract) -> Iterator[Finding]:
    summary = c.data.get("verification_summary")
    if not isinstance(summary, dict):
        return
    emit = _Emitter(c)
    obligations = [o for o in c.data.get("proof_obligations") or [] if isinstance(o, dict)]
    harnesses = c.data.get("kani_harnesses") or []
    lean = [o.get("lean") for o in obligations]
    lean_status = [entry.get("status") if isinstance(entry, dict) else None for entry in lean]
    exact = {
        "total_obligations": (len(obligations), "proof obligations"),
        "total_falsifiers": (len(c.falsifiers), "falsifiers"),
        "falsification_tests": (len(c.falsifiers), "falsifiers"),
        "total_harnesses": (len(harnesses), "kani harnesses"),
        "kani_harnesses": (len(harnesses), "kani harnesses"),
        "l4_lean_proved": (lean_status.count("proved"), "obligations with lean status proved"),
        "l4_sorry_count": (lean_status.count("sorry"), "obligations with lean status sorry"),
        "l4_not_applicable": (lean.count(None), "obligations without a lean proof"),
    }
    at_most = {
        "l2_property_tested": (len(obligations), "proof obligations"),
        "l3_kani_proved": (len(harnesses), "kani harnesses"),
    }
    for key, claimed in summary.items():
        if not isinstance(claimed, int) or isinstance(claimed, bool):
            continue
        line = c.line_of("verification_summary", key)
        if key in exact and claimed != exact[key][0]:
            real, what = exact[key]
            yield emit.error(
                line,
                "verification-summary",
                f"verification_summary.{key} says {claimed} but the contract has {real} {what}",
            )
        elif key in at_most and claimed > at_most[key][0]:
            real, what = at_most[key]
            yield emit.error(
                line,
                "verification-summary",
                f"verification_summary.{key} says {claimed} but the contract has only "
                f"{real} {what}",
            )


def check_evidence(c: Contract) -> Iterator[Finding]:
    emit = _Emitter(c)
    root = None
    for f in c.falsifiers:
        line = c.line_of("falsification_tests", f.index, "evidence")
        if f.evidence:
            root = root or project_root(c.path)
            if not _inside(root / f.evidence, root / "evidence"):
                yield emit.error(
                    line,
                    "evidence",
                    f"{f.id}: evidence path {f.evidence!r} leaves the project's evidence/ folder",
                )
                continue
        if f.status not in (FalsifierStatus.DISCHARGED.value, FalsifierStatus.FALSIFIED.value):
            continue
        if not f.evidence:
            yield emit.error(
                c.line_of("falsification_tests", f.index, "status"),
                "evidence",
                f"{f.id} is {f.status} but names no evidence file",
            )
            continue
        root = root or project_root(c.path)
        path = root / f.evidence
        if not path.is_file():
            yield emit.error(line, "evidence", f"{f.id}: evidence file {f.evidence} not found")
            continue
        try:
            record = load_evidence(path)
        except EvidenceUnreadable as exc:
            yield emit.error(line, "evidence", f"{f.id}: evidence {f.evidence} is {exc}")
            continue
        outcome = record.get("outcome") if isinstance(record, dict) else None
        expected = "passed" if f.status == FalsifierStatus.DISCHARGED.value else "failed"
        if outcome != expected:
            yield emit.error(
                line,
                "evidence",
                f"{f.id} is {f.status} but its evidence {f.evidence} records outcome "
                f"{outcome!r}, not {expected!r}",
            )
        elif isinstance(record, dict) and record.get("falsifier") not in (None, f.id):
            yield emit.error(
                line,
                "evidence",
                f"{f.id}: evidence {f.evidence} is for {record.get('falsifier')!r}",
            )


def _inside(path: Path, folder: Path) -> bool:
    """Whether ``path`` (symlinks resolved) lies below ``folder``."""
    try:
        return Path(os.path.realpath(path)).is_relative_to(os.path.realpath(folder))
    except (OSError, ValueError):
        return False


def check_changelog(c: Contract) -> Iterator[Finding]:
    emit = _Emitter(c)
    previous = None
    for entry in c.changelog:
        if entry.version is None:
            continue
        if not is_semver(entry.version):
            yield emit.error(
                entry.line, "changelog", f"changelog version {entry.version!r} is not semver"
            )
            return
        if previous is not None and semver_key(entry.version) <= semver_key(previous):
            yield emit.error(
                entry.line,
                "changelog",
                f"changelog version {entry.version} does not increase on {previous}",
            )
        previous = entry.version
    if previous and c.version and is_semver(c.version) and previous != c.version:
        yield emit.error(
            c.line_of("metadata", "version"),
            "changelog",
            f"metadata.version is {c.version} but the newest changelog entry is {previous}",
        )


def _strings(node: Any, path: tuple[Any, ...]) -> Iterator[tuple[tuple[Any, ...], str]]:
    if isinstance(node, str):
        yield path, node
    elif isinstance(node, dict):
        for k, v in node.items():
            yield from _strings(v, (*path, k))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from _strings(v, (*path, i))


def check_references(c: Contract) -> Iterator[Finding]:
    emit = _Emitter(c)
    declared = {f.id for f in c.falsifiers}
    for section in ("enforcement", "qa_gate"):
        for path, text in _strings(c.data.get(section), (section,)):
            for ref in FALSIFIER_REF.findall(text):
                if ref not in declared:
                    yield emit.error(
                        c.line_of(*path),
                        "falsifier-ref",
                        f"{_dotted(path)} names {ref}, which this contract does not declare",
                    )


RULES: tuple[Rule, ...] = (
    check_schema,
    check_metadata,
    check_sections,
    check_falsifiers,
    check_statuses,
    check_verification_summary,
    check_evidence,
    check_changelog,
    check_references,
)


def check_contract(c: Contract) -> list[Finding]:
    emit = _Emitter(c)
    findings = [emit.error(p.line, p.rule, p.message) for p in c.doc.problems]
    for rule in RULES:
        findings.extend(rule(c))
    return findings
