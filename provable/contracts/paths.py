"""Where a contract's relative paths (``evidence: evidence/...``) are anchored, and which
names may become a path at all.

Contracts, evidence and runs are untrusted input (a pull request controls every id in
them): an id becomes a file name only when ``is_safe_name`` says so, and a path is written
only when ``inside`` says it resolves below its root.
"""

from __future__ import annotations

import re
from functools import lru_cache
from pathlib import Path

#: one path component, ASCII, not hidden, no separator, no ``..``: what an id that names a
#: file (``evidence/<contract id>/<falsifier id>.json``) may be
_SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,199}", re.ASCII)


def is_safe_name(name: object) -> bool:
    """Whether ``name`` can be used as one file-name component anywhere."""
    return isinstance(name, str) and bool(_SAFE_NAME.fullmatch(name)) and ".." not in name


def inside(path: Path, root: Path) -> bool:
    """Whether ``path`` resolves (following every symlink) below ``root``."""
    try:
        Path(path).resolve().relative_to(Path(root).resolve())
    except (ValueError, OSError, RuntimeError):
        return False
    return True


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
