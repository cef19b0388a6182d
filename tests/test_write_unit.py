"""Issue 9 cases 2 and 3: one lock beside the contracts; the write phase as one unit."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import yaml

from provable.contracts.validate import discover, validate_paths
from tests.killwrite import FALSIFIERS, make_project

JOURNAL_NAME = ".provable-journal.json"

REPO = Path(__file__).resolve().parents[1]


def test_the_lock_lives_beside_the_contracts_whatever_the_tmpdir(tmp_path, monkeypatch):
    from provable.plugin.writer import LOCK_NAME, lock_for

    paths = set()
    for tmp in ("a", "b"):
        (tmp_path / tmp).mkdir()
        monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / tmp))
        paths.add(lock_for(tmp_path / "contracts").lock_file)
    assert paths == {str(tmp_path / "contracts" / LOCK_NAME)}


def test_two_runs_with_different_tmpdirs_lose_no_update(pytester):
    items = "".join(f"  - {{id: FALSIFY-TWO-{i:03d}, rule: r, prediction: p}}\n" for i in range(8))
    (pytester.path / "contracts").mkdir()
    (pytester.path / "contracts" / "two-v1.yaml").write_text(
        f"metadata:\n  version: '1.0.0'\nfalsification_tests:\n{items}"
    )
    tests = "".join(
        f"@pytest.mark.falsifies('FALSIFY-TWO-{i:03d}')\ndef test_{i}():\n    pass\n\n"
        for i in range(8)
    )
    pytester.makepyfile(test_two="import pytest\n\n" + tests)
    procs = []
    for k in range(2):
        tmp = pytester.path / f"tmp{k}"
        tmp.mkdir()
        picks = [a for i in range(k, 8, 2) for a in ("--falsifier", f"FALSIFY-TWO-{i:03d}")]
        procs.append(
            subprocess.Popen(
                [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", *picks],
                cwd=pytester.path,
                env={**os.environ, "TMPDIR": str(tmp), "PYTHONPATH": str(REPO)},
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
            )
        )
    outputs = [p.communicate(timeout=120)[0].decode() for p in procs]
    assert all(p.returncode == 0 for p in procs), outputs
    data = yaml.safe_load((pytester.path / "contracts" / "two-v1.yaml").read_text())
    assert [f.get("status") for f in data["falsification_tests"]] == ["DISCHARGED"] * 8


def _kill(root: Path, at: int) -> int:
    return subprocess.run(
        [sys.executable, "-m", "tests.killwrite", str(root), str(at)], cwd=REPO, timeout=120
    ).returncode


def _temps(root: Path) -> list[Path]:
    return [p for p in root.rglob(".*.tmp")]


@pytest.mark.parametrize("at", [1, 7, 12, 13])
def test_sigkill_in_the_write_phase_leaves_valid_contracts_and_no_temps(tmp_path, at):
    """4 contracts x 3 falsifiers: 12 evidence + 4 contract temps, a journal, 16 renames.

    Killed at the 1st os.replace (the journal's, before any rename), the 7th (mid-evidence),
    the 12th (evidence done, no contract yet) and the 13th (first contract). ``pv validate``
    finishes or drops the unit, and leaves no temp file.
    """
    make_project(tmp_path, 4)
    assert _kill(tmp_path, at) == -9
    from provable.cli.main import main

    assert main(["validate", "--strict", str(tmp_path / "contracts")]) == 0
    assert _temps(tmp_path) == []
    assert not (tmp_path / "contracts" / JOURNAL_NAME).exists()
    texts = [p.read_text() for p in sorted((tmp_path / "contracts").glob("*.yaml"))]
    rolled = [t.count("status: DISCHARGED") for t in texts]
    # all or nothing: the journal was written at rename 1, so every later kill rolls forward
    assert rolled == ([0] * 4 if at == 1 else [FALSIFIERS + 1] * 4)


def test_stale_temps_of_a_dead_run_are_removed(tmp_path):
    make_project(tmp_path, 1)
    stale = tmp_path / "evidence" / "kill-000-v1" / ".FALSIFY-K000-000.json.abc_1234.tmp"
    stale.write_text("{")
    also = tmp_path / "contracts" / ".kill-000-v1.yaml.xyz98765.tmp"
    also.write_text("metadata:")
    from provable.plugin.writer import recover

    mine = tmp_path / "contracts" / ".notes.tmp"  # not one of ours: left alone
    mine.write_text("x")
    recover(tmp_path / "contracts", tmp_path / "evidence")
    assert _temps(tmp_path) == [mine]
    report = validate_paths(discover([str(tmp_path / "contracts")]), strict=True)
    assert report.errors == 0, report.render_text()
