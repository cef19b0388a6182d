"""``pv validate``: find contract files, check each, check them together, report."""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from provable.contracts.discovery import (
    Discovery,
    FolderProblem,
    UsageError,
    discover_all,
    walk_folder,
)
from provable.contracts.findings import ERROR, NOTE, WARNING, Finding, Tally, display_path
from provable.contracts.model import BindingRegistryFile, Contract, NotAMapping, read_contract
from provable.contracts.paths import project_root
from provable.contracts.rules import check_contract
from provable.contracts.yamlsource import YamlSourceError

__all__ = ["Report", "UsageError", "check_together", "discover", "validate_paths"]


@dataclass
class Report(Tally):
    findings: list[Finding] = field(default_factory=list)
    contracts: list[Contract] = field(default_factory=list)
    files: int = 0

    def summary(self) -> str:
        def plural(n: int, word: str) -> str:
            return f"{n} {word}{'' if n == 1 else 's'}"

        files = plural(self.files, "file")
        return f"{plural(self.errors, 'error')}, {plural(self.warnings, 'warning')} in {files}"

    def render_text(self) -> str:
        lines = [f.render() for f in self.findings]
        lines.append(self.summary())
        if not self.errors:
            lines.append("Contract is valid." if self.files == 1 else "Contracts are valid.")
        return "\n".join(lines)

    def render_json(self) -> str:
        return json.dumps(
            {
                "findings": [f.as_dict() for f in self.findings],
                "summary": {
                    "files": self.files,
                    "contracts": len(self.contracts),
                    "errors": self.errors,
                    "warnings": self.warnings,
                    "valid": self.errors == 0,
                },
            },
            indent=2,
        )


def discover(arguments: Iterable[str]) -> list[Path]:
    """Expand files, folders (recursively) and globs into YAML files, in a stable order."""
    return discover_all(arguments).files


def validate_paths(
    paths: Iterable[Path], strict: bool = False, problems: Iterable[FolderProblem] = ()
) -> Report:
    """Check every file; one file's failure never hides another's findings."""
    report = Report()
    for problem in problems:
        report.findings.append(Finding(display_path(problem.path), 1, ERROR, "io", problem.message))
    for path in paths:
        report.files += 1
        check_file(path, report)
    report.findings.extend(check_together(report.contracts))
    if strict:
        report.findings = [f.strict() for f in report.findings]
    report.findings.sort(key=lambda f: (f.path, f.line, f.rule))
    return report


def validate_arguments(arguments: Iterable[str], strict: bool = False) -> Report:
    """``pv validate ARGS``: discover, then validate; raises ``UsageError``."""
    found = discover_all(arguments)
    return validate_paths(found.files, strict=strict, problems=found.problems)


def check_file(path: Path, report: Report) -> None:
    """Validate one file into ``report``; never raises: a defect of ours becomes an
    ``internal`` finding, so one file's failure never hides another's findings. The one
    per-file reader every command shares (``provable.contracts.loading.read_checked``)."""
    try:
        _validate_one(Path(path), report)
    except Exception as exc:
        report.findings.append(
            Finding(
                display_path(path),
                1,
                ERROR,
                "internal",
                f"could not check this file ({type(exc).__name__}: {exc}); please report",
            )
        )


def _validate_one(path: Path, report: Report) -> None:
    shown = display_path(path)
    try:
        contract = read_contract(path)
    except YamlSourceError as exc:
        report.findings.append(Finding(shown, exc.line, ERROR, exc.rule, exc.message))
        return
    except NotAMapping as exc:
        report.findings.append(Finding(shown, 1, ERROR, "top-level", str(exc)))
        return
    if isinstance(contract, BindingRegistryFile):
        report.findings.append(
            Finding(
                shown,
                1,
                NOTE,
                "binding-registry",
                f"binding registry ({contract.bindings} bindings of contracts to code), "
                "not a contract: skipped",
            )
        )
        return
    report.contracts.append(contract)
    report.findings.extend(check_contract(contract))


def check_together(contracts: list[Contract]) -> list[Finding]:
    """Rules that need every contract validated in the same run."""
    findings: list[Finding] = []
    declared_by: dict[str, list[Contract]] = defaultdict(list)
    for c in contracts:
        for fid in dict.fromkeys(f.id for f in c.falsifiers):
            declared_by[fid].append(c)
    for fid, owners in declared_by.items():
        if len(owners) < 2:
            continue
        for c in owners:
            others = ", ".join(o.shown_path for o in owners if o is not c)
            f = c.falsifier(fid)
            findings.append(
                Finding(
                    c.shown_path,
                    f.line if f else 1,
                    WARNING,
                    "falsifier-id-shared",
                    f"{fid} is also declared by {others}; tests must bind it qualified, "
                    f"as '{c.id}:{fid}'",
                )
            )
    by_id: dict[str, list[Contract]] = defaultdict(list)
    for c in contracts:
        by_id[c.id].append(c)
    for cid, same in by_id.items():
        for c in same[1:] if len(same) > 1 else ():
            findings.append(
                Finding(
                    c.shown_path,
                    c.line_of("metadata", "id"),
                    ERROR,
                    "contract-id-unique",
                    f"contract id {cid!r} is also used by {same[0].shown_path}; the plugin "
                    "binds tests by contract id, so each must be unique",
                )
            )
    findings.extend(_check_dependencies(contracts))
    return findings


def contracts_root(path: Path) -> Path:
    """The folder a contract's ``depends_on`` is resolved in: the top folder of the
    contracts tree (``contracts/`` for ``contracts/sub/x.yaml``), not just its siblings."""
    folder = Path(path).resolve().parent
    root = project_root(folder)
    try:
        rel = folder.relative_to(root)
    except ValueError:
        return folder
    return root / rel.parts[0] if rel.parts else folder


def _ids_below(folder: Path) -> set[str]:
    found = Discovery()
    walk_folder(folder, found)
    return {p.stem for p in found.files}


def _check_dependencies(contracts: list[Contract]) -> list[Finding]:
    findings: list[Finding] = []
    by_id = {c.id: c for c in contracts}
    stems_in: dict[Path, set[str]] = {}
    for c in contracts:
        missing = [dep for dep in c.depends_on if dep not in by_id]
        if not missing:
            continue
        folder = contracts_root(c.path)
        if folder not in stems_in:
            stems_in[folder] = _ids_below(folder)
        for dep in missing:
            if dep not in stems_in[folder]:
                findings.append(
                    Finding(
                        c.shown_path,
                        c.line_of("metadata", "depends_on"),
                        ERROR,
                        "depends-on",
                        f"depends_on names {dep!r}, but no contract with that id exists "
                        f"(looked in {display_path(folder)} and among the files validated)",
                    )
                )
    for cycle in find_cycles({c.id: [d for d in c.depends_on if d in by_id] for c in contracts}):
        first = by_id[cycle[0]]
        findings.append(
            Finding(
                first.shown_path,
                first.line_of("metadata", "depends_on"),
                ERROR,
                "dependency-cycle",
                "dependency cycle: " + " -> ".join([*cycle, cycle[0]]),
            )
        )
    return findings


def find_cycles(graph: dict[str, list[str]]) -> list[list[str]]:
    """Each cycle met by a depth-first walk, once, rotated to start at its smallest id.

    Iterative, so a long chain of dependencies cannot hit Python's recursion limit.
    """
    seen_cycles: set[tuple[str, ...]] = set()
    cycles: list[list[str]] = []
    done: set[str] = set()
    for root in sorted(graph):
        if root in done:
            continue
        stack: list[str] = [root]
        on_stack = {root}
        pending = [iter(graph.get(root, ()))]
        while pending:
            nxt = next(pending[-1], None)
            if nxt is None:
                finished = stack.pop()
                on_stack.discard(finished)
                done.add(finished)
                pending.pop()
                continue
            if nxt in on_stack:
                cycle = stack[stack.index(nxt) :]
                start = cycle.index(min(cycle))
                rotated = tuple(cycle[start:] + cycle[:start])
                if rotated not in seen_cycles:
                    seen_cycles.add(rotated)
                    cycles.append(list(rotated))
            elif nxt not in done:
                stack.append(nxt)
                on_stack.add(nxt)
                pending.append(iter(graph.get(nxt, ())))
    return cycles
