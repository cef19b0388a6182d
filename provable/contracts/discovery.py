"""Which files are contracts: one walk used by ``pv validate``, ``pv status`` and the plugin.

A folder is walked without following symlinked folders (a loop cannot trap the walk);
hidden folders and files are skipped; a file named twice (``a/../a``, a symlink) is read
once. What cannot be walked or holds nothing is a problem to report, never silence: an
empty folder validating as "0 files, valid" hides a typo.
"""

from __future__ import annotations

import glob
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

YAML_SUFFIXES = (".yaml", ".yml")


class UsageError(Exception):
    """A command-line argument that names nothing to validate (exit 2)."""


@dataclass(frozen=True)
class FolderProblem:
    path: Path
    message: str


@dataclass
class Discovery:
    files: list[Path] = field(default_factory=list)
    problems: list[FolderProblem] = field(default_factory=list)


def is_yaml_name(name: str) -> bool:
    return name.endswith(YAML_SUFFIXES)


def walk_folder(folder: Path, found: Discovery) -> int:
    """Add the YAML files below ``folder``; returns how many it added."""
    errors: list[OSError] = []
    before = len(found.files)
    for dirpath, dirnames, filenames in os.walk(folder, onerror=errors.append):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for d in dirnames:
            if is_yaml_name(d):
                found.problems.append(
                    FolderProblem(Path(dirpath, d), "is a directory, not a contract file")
                )
        for name in sorted(filenames):
            if is_yaml_name(name) and not name.startswith("."):
                found.files.append(Path(dirpath, name))
    for exc in errors:
        where = Path(exc.filename) if exc.filename else folder
        found.problems.append(FolderProblem(where, f"cannot read folder: {exc.strerror}"))
    return len(found.files) - before


def discover_all(arguments: Iterable[str]) -> Discovery:
    """Files, folders (recursively) and globs → YAML files in a stable order, plus problems.

    A name that matches nothing at all is a usage error (``UsageError``); an empty or
    unreadable folder, or a folder named like a contract file, is a problem to report.
    """
    found = Discovery()
    for arg in arguments:
        path = Path(arg)
        if path.is_dir():
            if is_yaml_name(path.name):
                found.problems.append(FolderProblem(path, "is a directory, not a contract file"))
                continue
            if walk_folder(path, found) == 0 and not any(p.path == path for p in found.problems):
                found.problems.append(
                    FolderProblem(path, "no contract files (*.yaml, *.yml) in this folder")
                )
        elif path.exists() or path.is_symlink():
            found.files.append(path)
        elif glob.has_magic(arg):
            matches = sorted(glob.glob(arg, recursive=True))
            if not matches:
                raise UsageError(f"{arg}: no file matches this pattern")
            for match in matches:
                if Path(match).is_dir():
                    walk_folder(Path(match), found)
                else:
                    found.files.append(Path(match))
        else:
            raise UsageError(f"{arg}: no such file or directory")
    found.files = _once(found.files)
    return found


def _once(paths: list[Path]) -> list[Path]:
    """Each file once, by its real path (``a/../a`` and ``a`` are one file)."""
    seen: set[str] = set()
    out: list[Path] = []
    for p in paths:
        key = os.path.realpath(p)
        if key not in seen:
            seen.add(key)
            out.append(p)
    return out
