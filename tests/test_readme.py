"""The README's two commands exist, and CI runs the test command verbatim."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def readme_commands() -> list[str]:
    text = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```sh\n(.*?)```", text, flags=re.S)
    return [line for block in blocks for line in block.strip().splitlines()]


def test_readme_has_exactly_two_commands():
    main_job, tests = readme_commands()
    assert main_job.endswith("pv check")
    # two workers (pytest-xdist; the plugin's results travel on its reports): the suite
    # took 10.9 min serially on a 2-core machine, 6.8 min this way
    assert tests.endswith("pytest -n 2")
    assert "-r requirements.lock" in main_job and "-r requirements.lock" in tests
    assert "torch==2.13.0" in (ROOT / "requirements.lock").read_text().splitlines()


def test_ci_runs_the_readme_test_command_verbatim():
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    assert readme_commands()[1] in ci
