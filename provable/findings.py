"""A finding is one line of ``pv validate`` output: where, how bad, which rule, what."""

from __future__ import annotations

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
        return f"{self.path}:{self.line}: {self.severity} [{self.rule}] {self.message}"

    def as_dict(self) -> dict[str, object]:
        return asdict(self)

    def strict(self) -> Finding:
        """Under ``--strict`` a warning is an error; notes stay notes."""
        if self.severity != WARNING:
            return self
        return Finding(self.path, self.line, ERROR, self.rule, self.message)


def display_path(path: Path) -> str:
    """Relative to the working directory when below it, as users typed it otherwise."""
    try:
        return str(Path(path).resolve().relative_to(Path.cwd().resolve()))
    except (ValueError, OSError, RuntimeError):  # RuntimeError: a symlink loop (Python < 3.13)
        return str(path)
