"""Contracts for the commands beyond ``validate``: loaded through ``pv validate``'s path.

Loading through ``validate_paths`` means a file that ``pv validate`` cannot read is reported
the same way here (``path:line: error [rule] ...``) instead of by a second loader.
"""

from __future__ import annotations

from collections.abc import Sequence

from provable.findings import Finding
from provable.model import Contract
from provable.validate import Report, discover, validate_paths


def load_contracts(arguments: Sequence[str]) -> tuple[list[Contract], Report]:
    """Contracts named by files, folders or globs; raises ``UsageError`` for a bad argument."""
    report = validate_paths(discover(arguments))
    return report.contracts, report


def unreadable(report: Report) -> list[Finding]:
    """The findings of files that did not become contracts (bad YAML, not a mapping)."""
    loaded = {c.shown_path for c in report.contracts}
    return [f for f in report.findings if f.severity == "error" and f.path not in loaded]
