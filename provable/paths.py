"""Where a contract's relative paths (``evidence: evidence/...``) are anchored."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

_ROOT_MARKERS = ("pyproject.toml", ".git", "setup.cfg", "pytest.ini", "tox.ini")


def project_root(start: Path) -> Path:
    """The nearest ancestor of ``start`` that looks like a project root.

    Falls back to the parent of the contract's folder (``contracts/..``), the layout of
    DESIGN §2, when no marker is found.
    """
    start = Path(start).resolve()
    return _root_of(start if start.is_dir() else start.parent)


@lru_cache(maxsize=64)
def _root_of(folder: Path) -> Path:
    for candidate in (folder, *folder.parents):
        if any((candidate / marker).exists() for marker in _ROOT_MARKERS):
            return candidate
    return folder.parent
