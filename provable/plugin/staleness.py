"""Is a falsifier's evidence still about the code and tests that are here now?

Evidence is current when, for every host section, its commit is an ancestor of HEAD (it was
observed on this history, not on an abandoned branch) and the files of the tests it ran are
unchanged since. "Unchanged" is decided by the section's ``sources`` (the git blob id of each
test file at the run) when it has them, else by ``git diff`` against the commit.

``sources`` exist because a section keeps its first commit while its outcome and values stay
the same (a repeat run must leave ``git status`` clean): a test edited and re-run with the
same result would otherwise look stale forever. With the blob ids in the section, an edited
test changes the section, so the re-run records a new commit and new ids.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from provable.plugin.session import test_file

GIT_TIMEOUT_S = 30


def blob_id(path: Path) -> str | None:
    """The id ``git hash-object`` gives the file's content (None when it cannot be read)."""
    try:
        data = Path(path).read_bytes()
    except OSError:
        return None
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def files_of(nodeids: Iterable[str]) -> list[str]:
    """The files of pytest node ids (``path/test_x.py::test_y[1]`` → ``path/test_x.py``)."""
    return sorted({test_file(n) for n in nodeids if n})


def sources_of(root: Path, nodeids: Iterable[str]) -> dict[str, str]:
    """``{test file: blob id}`` for an evidence section (paths relative to the project root)."""
    out: dict[str, str] = {}
    for rel in files_of(nodeids):
        blob = blob_id(Path(root) / rel)
        if blob is not None:
            out[rel] = blob
    return out


def _git(root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "GIT_OPTIONAL_LOCKS": "0"}
    return subprocess.run(
        ["git", *args], cwd=root, capture_output=True, text=True, env=env, timeout=GIT_TIMEOUT_S
    )


def in_git(root: Path) -> bool:
    try:
        return _git(root, "rev-parse", "--verify", "HEAD").returncode == 0
    except (OSError, subprocess.SubprocessError):
        return False


def stale_reasons(root: Path, record: dict[str, Any]) -> list[str]:
    """Why this evidence is not current (empty when it is), one reason per host section."""
    reasons: list[str] = []
    runs = record.get("runs")
    for kind, section in sorted((runs if isinstance(runs, dict) else {}).items()):
        if not isinstance(section, dict):
            continue
        reasons.extend(f"{kind}: {r}" for r in _section_reasons(root, section))
    return reasons


def _section_reasons(root: Path, section: dict[str, Any]) -> list[str]:
    commit = section.get("commit")
    raw_tests = section.get("tests")
    tests: list[Any] = raw_tests if isinstance(raw_tests, list) else []
    nodeids = [t.get("nodeid") for t in tests if isinstance(t, dict)]
    files = files_of(n for n in nodeids if isinstance(n, str))
    if not isinstance(commit, str) or not commit:
        return ["records no commit (observed outside git)"]
    try:
        ancestry = _git(root, "merge-base", "--is-ancestor", commit, "HEAD")
    except (OSError, subprocess.SubprocessError) as exc:
        return [f"git failed: {exc}"]
    short = commit[:12]
    if ancestry.returncode == 1:
        return [f"commit {short} is not an ancestor of HEAD"]
    if ancestry.returncode != 0:
        return [f"commit {short} is not in this repository"]
    sources = section.get("sources")
    if isinstance(sources, dict) and sources:
        changed = [
            f for f in sorted(set(files) | set(sources)) if blob_id(root / f) != sources.get(f)
        ]
        return [f"{', '.join(changed)} changed since the run at {short}"] if changed else []
    if not files:
        return []
    diff = _git(root, "diff", "--quiet", commit, "--", *files)
    if diff.returncode == 0:
        return []
    changed = _git(root, "diff", "--name-only", commit, "--", *files).stdout.split()
    return [f"{', '.join(changed or files)} changed since {short}"]
