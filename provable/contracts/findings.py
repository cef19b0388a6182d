"""A finding is one line of ``pv validate`` output: where, how bad, which rule, what."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path

ERROR = "error"
WARNING = "warning"
NOTE = "note"


@dataclass(frozen=True)
class Finding:
    path: str
    line: int
    severity: str
    rule: str
    message: str

    def render(self) -> str:
        text = f"{self.path}:{self.line}: {self.severity} [{self.rule}] {self.message}"
        return printable(text)

    def as_dict(self) -> dict[str, object]:
        return asdict(self)

    def strict(self) -> Finding:
        """Under ``--strict`` a warning is an error; notes stay notes."""
        if self.severity != WARNING:
            return self
        return Finding(self.path, self.line, ERROR, self.rule, self.message)


def count(findings: Iterable[Finding], severity: str) -> int:
    """How many findings have ``severity``: the one tally every report's exit code uses."""
    return sum(f.severity == severity for f in findings)


class Tally:
    """``errors``/``warnings`` of a report holding ``findings`` (validate, audit)."""

    findings: list[Finding]

    @property
    def errors(self) -> int:
        return count(self.findings, ERROR)

    @property
    def warnings(self) -> int:
        return count(self.findings, WARNING)


def printable(text: str, keep_newlines: bool = False) -> str:
    """``text`` with control and format characters shown as escapes (``\\x1b``, ``\\n``).

    Ids, paths and descriptions come from files anyone may write: raw, a newline splits one
    finding into two lines a script would misread, an ANSI sequence repaints the terminal,
    a bidi override hides what a line says.
    """
    return "".join(
        c if c.isprintable() or c == " " or (keep_newlines and c == "\n") else repr(c)[1:-1]
        for c in text
    )


def display_path(path: Path) -> str:
    """Relative to the working directory when below it, as users typed it otherwise."""
    try:
        return str(Path(path).resolve().relative_to(Path.cwd().resolve()))
    except (ValueError, OSError, RuntimeError):  # RuntimeError: a symlink loop (Python < 3.13)
        return str(path)
