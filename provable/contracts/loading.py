"""The one reader of contracts for every ``pv`` command: ``pv validate``'s own reading.

``read_checked`` reads one file exactly as ``pv validate`` does (the same code, so the same
size, depth and alias limits and the same findings). A command uses the contract only when
no error refuses it (``ReadResult.refusals``) and prints each refusal as validate prints
it, ``path:line: error [rule] message``. Exit codes, the same for every command: 1 when a
file named is refused (it was read and found wanting, as validate says of it), 2 only when
the command line names nothing usable.

What refuses is every error about what the file *is*: YAML it cannot read, a limit passed,
a duplicate key, a value of the wrong type, an id not of the dialect's shape or unsafe as a
file name, and any rule added later. Validate's rules about what a well-formed contract
*claims* (``CLAIM_RULES``: statuses against falsifiers, changelog against version, evidence
files, the file's own name, ...) do not refuse: ``pv diff`` compares a draft whose changelog
is not yet written, ``pv status`` shows a status that disagrees with its falsifiers, and a
copy (``git show HEAD~:contracts/x.yaml > old.yaml``) reads as the original. ``pv validate``
reports them all. Rules over several files (shared ids, depends_on, cycles) stay with the
commands that look at several files.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from provable.contracts.discovery import discover_all
from provable.contracts.findings import ERROR, Finding, display_path
from provable.contracts.model import Contract
from provable.contracts.validate import Report, check_file, discover, validate_paths

#: validate's rules about a well-formed contract's claims and its place, not its form
CLAIM_RULES = frozenset(
    {
        "id-matches-file",  # the file's name
        "evidence",  # the evidence files beside it in its project
        "semver",  # metadata.version's form
        "status-vocabulary",
        "status-derived",
        "falsifier-fields",
        "falsifier-id-unique",
        "falsifier-ref",
        "verification-summary",
        "changelog",
    }
)


@dataclass
class ReadResult:
    """One file as ``pv validate`` reads it, alone."""

    path: Path
    #: None when the file is no contract (unreadable YAML, not a mapping, a binding registry)
    contract: Contract | None
    #: validate's findings about this file by itself, errors and warnings, in its order
    findings: list[Finding] = field(default_factory=list)

    @property
    def refusals(self) -> list[Finding]:
        """The errors that make the file unfit to use: every error but ``CLAIM_RULES``."""
        return [f for f in self.findings if f.severity == ERROR and f.rule not in CLAIM_RULES]

    @property
    def registry(self) -> bool:
        """A binding registry (``binding.yaml``): read, recognised, not a contract."""
        return self.contract is None and any(f.rule == "binding-registry" for f in self.findings)

    @property
    def usable(self) -> Contract | None:
        """The contract, when nothing refuses it."""
        return None if self.refusals else self.contract


def read_checked(path: Path) -> ReadResult:
    """Read and check one contract file as ``pv validate PATH`` does; never raises."""
    report = Report()
    check_file(Path(path), report)
    report.findings.sort(key=lambda f: (f.line, f.rule))
    contract = report.contracts[0] if report.contracts else None
    return ReadResult(Path(path), contract, report.findings)


def read_arguments(arguments: Iterable[str]) -> tuple[list[ReadResult], list[Finding]]:
    """Every contract file named by files, folders or globs, read by ``read_checked``, and
    the folders that could not be walked or hold none, as validate reports them.

    Raises ``UsageError`` for an argument naming nothing."""
    found = discover_all(arguments)
    problems = [Finding(display_path(p.path), 1, ERROR, "io", p.message) for p in found.problems]
    return [read_checked(path) for path in found.files], problems


def refusals(results: Iterable[ReadResult]) -> list[Finding]:
    """Every refusal of ``results``, in order."""
    return [f for r in results for f in r.refusals]


def usable(results: Iterable[ReadResult]) -> list[Contract]:
    """The contracts of ``results`` that nothing refuses."""
    return [c for c in (r.usable for r in results) if c is not None]


def load_contracts(arguments: Sequence[str]) -> tuple[list[Contract], Report]:
    """Contracts named by files, folders or globs, with ``pv validate``'s full report (every
    finding, cross-file rules too; what ``pv audit`` reports); raises ``UsageError``."""
    report = validate_paths(discover(arguments))
    return report.contracts, report
