"""``pv dashboard``: its files, their numbers against ``pv status --json``, the page."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from provable.cli.main import main
from provable.reports.dashboard import build_dashboard

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """A copy of this project's contracts and evidence, with a mix of statuses."""
    shutil.copytree(ROOT / "contracts", tmp_path / "contracts")
    shutil.copytree(
        ROOT / "evidence", tmp_path / "evidence", ignore=shutil.ignore_patterns("*.jsonl")
    )
    layout = tmp_path / "contracts" / "tensor-layout-v1.yaml"
    text = layout.read_text()
    text = text.replace("status: DISCHARGED", "status: FALSIFIED", 2)  # contract + first one
    layout.write_text(text)
    tied = tmp_path / "contracts" / "tied-embeddings-v1.yaml"
    text = tied.read_text().replace('"Tied models', '"<script>alert(1)</script> Tied models', 1)
    tied.write_text(
        text.replace("status: DISCHARGED\n    evidence", "status: PARTIAL\n    evidence", 1)
    )
    (tmp_path / "evidence" / "tied-embeddings-v1" / "history.jsonl").write_text(
        json.dumps(
            {
                "time": "2026-11-25T10:00:00+00:00",
                "contract": "tied-embeddings-v1",
                "falsifier": "FALSIFY-TIED-001",
                "outcome": "passed",
                "before": "DISCHARGED",
                "after": "PARTIAL",
            }
        )
        + "\nnot json\n"
    )
    return tmp_path


def _status_json(project: Path, capsys: pytest.CaptureFixture[str]) -> dict:
    capsys.readouterr()
    main(["status", "--json", str(project / "contracts")])
    return json.loads(capsys.readouterr().out)


def _totals(status: dict) -> dict[str, int]:
    totals: dict[str, int] = {}
    for c in status["contracts"]:
        for s, n in c["falsifiers"].items():
            totals[s] = totals.get(s, 0) + n
    return totals


def test_files_and_numbers_agree_with_pv_status(project, capsys):
    before = _totals(_status_json(ROOT, capsys))  # the project as committed (cuda: PARTIAL)
    out = project / "dashboard"
    code = main(
        [
            "dashboard",
            "--contracts",
            str(project / "contracts"),
            "--evidence",
            str(project / "evidence"),
            "--out",
            str(out),
            "--check",
        ]
    )
    assert code == 1  # a contract is FALSIFIED
    status = _status_json(project, capsys)
    board = json.loads((out / "status.json").read_text())
    assert board["scoreboard"] == status["scoreboard"]
    assert board["totals"] == _totals(status)
    assert {c["id"]: c["status"] for c in board["contracts"]} == {
        c["id"]: c["status"] for c in status["contracts"]
    }
    # the fixture falsified one DISCHARGED falsifier and demoted another to PARTIAL
    assert board["totals"]["FALSIFIED"] == before.get("FALSIFIED", 0) + 1
    assert board["totals"]["PARTIAL"] == before.get("PARTIAL", 0) + 1
    assert board["totals"]["DISCHARGED"] == before["DISCHARGED"] - 2
    md = (out / "status.md").read_text()
    assert status["scoreboard"] in md and "| `FALSIFY-LAYOUT-001` | FALSIFIED | cpu |" in md
    badge = (out / "badge.svg").read_text()
    total = sum(board["totals"].values())
    assert f"{board['totals']['DISCHARGED']}/{total} discharged" in badge and "#c62828" in badge
    page = (out / "index.html").read_text()
    assert "<script>alert(1)</script>" not in page and "&lt;script&gt;alert(1)" in page
    assert not re.search(r'(src|href)="(https?:)?//', page), "no external assets"
    link = re.search(r'href="([^"]+FALSIFY-TIED-001\.json)"', page).group(1)
    assert (out / link).resolve().is_file()
    # the chart: everything proposed at first, then the changelog's day, then history.jsonl
    history = board["history"]
    assert history[0]["PROPOSED"] == total and history[-1] == {
        "time": history[-1]["time"],
        **board["totals"],
    }
    assert any(h["time"].startswith("2026-11-25") for h in history)
    chart = (out / "history.svg").read_text()
    assert chart.count("<polyline") == 4 and f"falsified {board['totals']['FALSIFIED']}" in chart


def test_rebuild_is_stable_and_missing_folder_is_a_usage_error(project, capsys):
    out = project / "d"
    build_dashboard(project / "contracts", project / "evidence", out)
    first = (out / "status.md").read_bytes()
    build_dashboard(project / "contracts", project / "evidence", out)
    assert (out / "status.md").read_bytes() == first
    assert main(["dashboard", "--contracts", str(project / "nope"), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "nope" in err and len(err.strip().splitlines()) == 1


def test_a_binding_registry_is_skipped_and_a_non_contract_is_an_error_row(project):
    (project / "contracts" / "binding.yaml").write_text(
        "version: '1'\nbindings:\n  - contract: x\n    equation: y\n"
    )
    (project / "contracts" / "zz-list.yaml").write_text("- not\n- a contract\n")
    board = build_dashboard(project / "contracts", project / "evidence", project / "d")
    assert board.errors
    listed = {Path(c.row.path).name: c for c in board.contracts}
    assert "binding.yaml" not in listed
    assert listed["zz-list.yaml"].row.error and listed["zz-list.yaml"].falsifiers == []
    assert all(c.falsifiers for name, c in listed.items() if name != "zz-list.yaml")


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (apt-get install chromium)")
def test_the_page_in_headless_chromium_shows_pv_status_numbers(project, capsys):
    out = project / "dashboard"
    build_dashboard(project / "contracts", project / "evidence", out)
    status = _status_json(project, capsys)
    flags = [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--hide-scrollbars",
        "--window-size=1100,1400",
        "--user-data-dir=" + str(project / "chrome"),
    ]
    url = (out / "index.html").as_uri()
    shot = out / "screenshot.png"
    subprocess.run(
        [CHROMIUM, *flags, f"--screenshot={shot}", url],
        capture_output=True,
        timeout=120,
        check=True,
    )
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 20_000
    dom = subprocess.run(
        [CHROMIUM, *flags, "--dump-dom", url],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    ).stdout
    shown = {s: int(n) for s, n in re.findall(r'<span data-count="(\w+)">(\d+)</span>', dom)}
    assert shown == _totals(status)
    assert status["scoreboard"] in dom
    rows = re.findall(r'<tr data-contract="([^"]+)">(.*?)</tr>', dom)
    by_id = {c["id"]: c for c in status["contracts"]}
    assert {cid for cid, _ in rows} == set(by_id)
    for cid, cells in rows:
        counts = dict(re.findall(r'<td data-count="(\w+)">(\d+)</td>', cells))
        assert {s: int(n) for s, n in counts.items()} == by_id[cid]["falsifiers"]
        assert f">{by_id[cid]['status']}<" in cells
    assert 'id="filter" type="search" placeholder="filter rows">' in dom  # the script ran


def test_pv_check_ends_by_writing_the_dashboard_and_its_scoreboard(pytester):
    (pytester.path / "contracts").mkdir()
    (pytester.path / "contracts" / "mini-v1.yaml").write_text(
        "metadata:\n  version: '1.0.0'\nfalsification_tests:\n"
        "  - {id: FALSIFY-MINI-001, rule: r, prediction: p}\n"
    )
    (pytester.path / "falsifiers").mkdir()
    (pytester.path / "falsifiers" / "test_mini.py").write_text(
        "import pytest\n\n@pytest.mark.falsifies('FALSIFY-MINI-001')\ndef test_m():\n    pass\n"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}  # this checkout's provable
    result = subprocess.run(
        [sys.executable, "-m", "provable.cli.main", "check", "--", "-q", "-p", "no:cacheprovider"],
        cwd=pytester.path,
        capture_output=True,
        text=True,
        env=env,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    tail = result.stdout.strip().splitlines()[-2:]
    assert tail[0].startswith("dashboard: dashboard/index.html")
    assert (
        tail[1]
        == "1 discharged · 0 partial · 0 proposed · 0 falsified (of 1 falsifiers in 1 contracts)"
    )
    board = json.loads((pytester.path / "dashboard" / "status.json").read_text())
    assert board["totals"]["DISCHARGED"] == 1
    assert board["contracts"][0]["falsifiers"][0]["passed_on"] == ["cpu"]
