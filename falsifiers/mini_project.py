"""Throw-away projects (contracts, falsifier tests, a git history) for the pv command checks."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import provable

MINI_CONTRACT = """\
metadata:
  id: mini-v1
  version: "1.0.0"
  status: PROPOSED
  description: "a small contract"
  depends_on: []

equations:
  add:
    formula: "a + b = b + a"
    domain: "a, b in Z"
    invariants: ["commutes"]

proof_obligations:
  - type: invariant
    property: "commutes"
    formal: "forall a, b: a + b = b + a"
    tolerance: 0.001
    applies_to: all

falsification_tests:
  - id: FALSIFY-MINI-001
    rule: "addition commutes"
    prediction: "a + b == b + a"
    test: "a few integer pairs"
    if_fails: "broken adder"
    status: PROPOSED

changelog:
  - {version: "1.0.0", date: "2026-01-01", change: "created"}
"""

MINI_TEST = """\
import pytest


@pytest.mark.falsifies("FALSIFY-MINI-001")
def test_addition_commutes():
    for a, b in [(1, 2), (-3, 7)]:
        assert a + b == b + a
"""

BROKEN_CHAIN = """\
metadata:
  id: broken-v1
  version: "1.0.0"
  status: PROPOSED
  description: "every link broken once"
equations:
  used: {formula: "y = f(x)"}
  orphan: {formula: "z = g(x)"}
proof_obligations:
  - {type: invariant, property: "covered", equation: used}
  - {type: invariant, property: "nobody attacks me", equation: used}
  - {type: bound, property: "names a ghost", equation: ghost}
falsification_tests:
  - {id: FALSIFY-BROKEN-001, rule: r, prediction: p, obligation: "covered"}
  - {id: FALSIFY-BROKEN-002, rule: r, prediction: p, obligation: "no such obligation"}
  - {id: FALSIFY-BROKEN-003, rule: r, prediction: p, test: "proptest over everything"}
changelog:
  - {version: "1.0.0", date: "2026-01-01", change: "created"}
"""

BROKEN_TESTS = """\
import pytest


@pytest.mark.falsifies("FALSIFY-BROKEN-001")
def test_bound():
    pass


@pytest.mark.falsifies("FALSIFY-BROKEN-002")
def test_also_bound():
    pass


@pytest.mark.falsifies("FALSIFY-BROKEN-099")
def test_dangling():
    pass
"""

PYPROJECT = """\
[tool.pytest.ini_options]
testpaths = ["falsifiers"]
"""


def env() -> dict[str, str]:
    """Subprocesses import this checkout's provable, not an installed one."""
    own = str(Path(provable.__file__).resolve().parents[1])
    return {**os.environ, "PYTHONPATH": own, "GIT_OPTIONAL_LOCKS": "0"}


def git(root: Path, *args: str) -> str:
    result = subprocess.run(
        [
            "git",
            "-c",
            "user.name=t",
            "-c",
            "user.email=t@example.invalid",
            "-c",
            "commit.gpgsign=false",
            *args,
        ],
        cwd=root,
        capture_output=True,
        text=True,
        check=True,
    )
    return result.stdout.strip()


def make_project(
    root: Path,
    contract: str = MINI_CONTRACT,
    test: str | None = MINI_TEST,
    name: str = "mini-v1",
    with_git: bool = True,
) -> Path:
    (root / "contracts").mkdir(parents=True, exist_ok=True)
    (root / "falsifiers").mkdir(exist_ok=True)
    (root / "pyproject.toml").write_text(PYPROJECT)
    (root / "contracts" / f"{name}.yaml").write_text(textwrap.dedent(contract))
    if test is not None:
        (root / "falsifiers" / f"test_{name.replace('-', '_')}.py").write_text(test)
    if with_git:
        git(root, "init", "-q", "-b", "main")
        (root / ".gitignore").write_text("evidence/*/history.jsonl\n__pycache__/\n")
        git(root, "add", "-A")
        git(root, "commit", "-q", "-m", "start")
    return root


def run_pytest(root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """A real run of the project's falsifiers (statuses and evidence are written)."""
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *args],
        cwd=root,
        env=env(),
        capture_output=True,
        text=True,
        timeout=300,
    )


def run_pv(root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "provable.cli.main", *args],
        cwd=root,
        env=env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
