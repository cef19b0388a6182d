"""A falsifier whose last run errored (or was flaky) is "not checked": `pv status`, `pv
dashboard` and `pv check` say so, from ``evidence/<contract>/history.jsonl`` alone."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest

from provable.cli.main import main
from provable.reports import dashboard, lastrun
from tests.contract_samples import CLEAN_CONTRACT

ROOT = Path(__file__).resolve().parents[1]
QUIET = "0 discharged · 1 partial · 1 proposed · 0 falsified (of 2 falsifiers in 1 contracts)"
ERROR = {
    "type": "ModuleNotFoundError",
    "message": "No module named 'x'",
    "when": "call",
    "frame": "falsifiers/test_clean.py:12 in test_it",
}


def line(fid: str, outcome: str, error: dict[str, Any] | None = None, **more: Any) -> str:
    item: dict[str, Any] = {
        "time": more.pop("time", "2026-12-06T01:02:03+00:00"),
        "contract": more.pop("contract", "clean-v1"),
        "falsifier": fid,
        "outcome": outcome,
        "before": "PARTIAL",
        "after": "PARTIAL",
        **more,
    }
    if error is not None:
        item["error"] = error
    return json.dumps(item)


@pytest.fixture
def project(tmp_path: Path) -> Path:
    (tmp_path / "pyproject.toml").write_text("")
    (tmp_path / "contracts").mkdir()
    (tmp_path / "contracts" / "clean-v1.yaml").write_text(CLEAN_CONTRACT.format(id="clean-v1"))
    (tmp_path / "evidence" / "clean-v1").mkdir(parents=True)
    return tmp_path


def history(project: Path, *lines: str | bytes, cid: str = "clean-v1") -> Path:
    path = project / "evidence" / cid / "history.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "ab") as fh:
        for item in lines:
            fh.write((item.encode() if isinstance(item, str) else item) + b"\n")
    return path


def status_json(project: Path, capsys: pytest.CaptureFixture[str]) -> dict[str, Any]:
    capsys.readouterr()
    assert main(["status", "--json", str(project / "contracts")]) == 0
    return json.loads(capsys.readouterr().out)


def dashboard_run(project: Path, *extra: str) -> int:
    args = ["dashboard", "--contracts", str(project / "contracts")]
    args += ["--evidence", str(project / "evidence"), "--out", str(project / "d"), *extra]
    return main(args)


# --- the one reader ----------------------------------------------------------------------


def test_last_line_per_falsifier_wins(project):
    history(
        project,
        line("FALSIFY-CLEAN-001", "not_checked", ERROR),
        line("FALSIFY-CLEAN-002", "passed"),
        line("FALSIFY-CLEAN-001", "passed", time="2026-12-07T00:00:00+00:00"),
        line("FALSIFY-CLEAN-002", "flaky", {"type": "AssertionError", "message": "1 != 2"}),
        line("FALSIFY-CLEAN-002", "not_checked", ERROR, contract="other-v1"),  # not this one
    )
    runs = lastrun.last_runs(
        project / "evidence",
        "clean-v1",
        ["FALSIFY-CLEAN-001", "FALSIFY-CLEAN-002", "FALSIFY-CLEAN-003"],
    )
    assert runs["FALSIFY-CLEAN-001"] == {
        "outcome": "passed",
        "error": None,
        "time": "2026-12-07T00:00:00+00:00",
    }
    assert runs["FALSIFY-CLEAN-002"] is not None
    assert runs["FALSIFY-CLEAN-002"]["outcome"] == "flaky"
    assert runs["FALSIFY-CLEAN-002"]["error"] == {
        "type": "AssertionError",
        "message": "1 != 2",
        "when": None,
        "frame": None,
    }
    assert runs["FALSIFY-CLEAN-003"] is None
    assert lastrun.last_runs(project / "evidence", "nobody-v1", ["FALSIFY-CLEAN-001"]) == {
        "FALSIFY-CLEAN-001": None
    }


def test_garbage_huge_lines_and_odd_files_give_no_record_and_no_traceback(project):
    fids = ["FALSIFY-CLEAN-001", "FALSIFY-CLEAN-002"]
    history(
        project,
        line("FALSIFY-CLEAN-002", "not_checked", ERROR),  # beyond the bound once the tail grows
        b"\xff\xfe not utf-8",
        b"[1, 2, 3]",
        b'"a string"',
        b"[" * 100_000 + b"]" * 100_000,  # deep nesting
        b'{"falsifier": "FALSIFY-CLEAN-001", "outcome": 7}',  # unreadable record
        b'{"falsifier": ["FALSIFY-CLEAN-001"], "outcome": "failed"}',
        b"x" * (lastrun.MAX_BYTES + 10),  # one huge line
        line("FALSIFY-CLEAN-001", "not_checked", {**ERROR, "message": "m" * 10_000}).encode(),
        b'{"truncated": ',  # a half line another writer left
    )
    runs = lastrun.last_runs(project / "evidence", "clean-v1", fids)
    one = runs["FALSIFY-CLEAN-001"]
    assert one is not None and one["outcome"] == "not_checked" and one["error"] is not None
    message = one["error"]["message"]
    assert message is not None and len(message) == 500 and message.endswith("…")
    assert runs["FALSIFY-CLEAN-002"] is None  # only the last MAX_BYTES are read

    odd = project / "evidence" / "odd-v1"
    (odd / "history.jsonl").mkdir(parents=True)  # a folder in its place
    assert lastrun.last_runs(project / "evidence", "odd-v1", fids) == dict.fromkeys(fids)


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs here")
def test_a_fifo_in_place_of_the_history_does_not_hang(project):
    os.mkfifo(project / "evidence" / "clean-v1" / "history.jsonl")
    result: list[Any] = []
    reader = threading.Thread(
        target=lambda: result.append(
            lastrun.last_runs(project / "evidence", "clean-v1", ["FALSIFY-CLEAN-001"])
        ),
        daemon=True,
    )
    reader.start()
    reader.join(10)
    assert result == [{"FALSIFY-CLEAN-001": None}]


# --- pv status ---------------------------------------------------------------------------


def test_pv_status_counts_and_shows_a_not_checked_falsifier(project, capsys):
    history(
        project,
        line("FALSIFY-CLEAN-001", "passed"),
        line("FALSIFY-CLEAN-001", "not_checked", {**ERROR, "message": "a|b <img src=x> *x*"}),
    )
    doc = status_json(project, capsys)
    assert doc["not_checked"] == 1 and doc["flaky"] == 0
    assert doc["scoreboard"] == QUIET + " · 1 not checked"
    [row] = doc["contracts"]
    assert row["falsifiers"] == {"DISCHARGED": 0, "PARTIAL": 1, "PROPOSED": 1, "FALSIFIED": 0}
    assert row["not_checked"] == 1 and row["flaky"] == 0
    assert row["last_errors"] == [
        {
            "id": "FALSIFY-CLEAN-001",
            "outcome": "not_checked",
            "time": "2026-12-06T01:02:03+00:00",
            "last_error": {**ERROR, "message": "a|b <img src=x> *x*"},
        }
    ]

    assert main(["status", "--format", "markdown", str(project / "contracts")]) == 0
    md = capsys.readouterr().out
    assert QUIET + " · 1 not checked" in md
    assert (
        "| `FALSIFY-CLEAN-001` | `clean-v1` | not checked | 2026-12-06T01:02:03+00:00 | "
        "ModuleNotFoundError: a\\|b &lt;img src=x&gt; \\*x\\* "
        "(call, falsifiers/test\\_clean.py:12 in test\\_it) |" in md
    ), md

    assert main(["status", str(project / "contracts")]) == 0  # the table
    out = capsys.readouterr().out
    assert "not checked" in out.splitlines()[2]  # a column of its own, in the header
    assert QUIET + " · 1 not checked" in out
    assert (
        "not checked: FALSIFY-CLEAN-001 (clean-v1, 2026-12-06T01:02:03+00:00): "
        "ModuleNotFoundError: a|b <img src=x> *x* (call, falsifiers/test_clean.py:12 in test_it)"
    ) in out


def test_flaky_is_counted_on_its_own(project, capsys):
    history(project, line("FALSIFY-CLEAN-002", "flaky", {"type": "AssertionError"}))
    doc = status_json(project, capsys)
    assert doc["scoreboard"] == QUIET + " · 1 flaky"
    assert doc["not_checked"] == 0 and doc["flaky"] == 1
    assert doc["contracts"][0]["last_errors"][0]["outcome"] == "flaky"


def test_a_later_pass_clears_it_and_the_output_is_as_before(project, capsys):
    history(
        project,
        line("FALSIFY-CLEAN-001", "not_checked", ERROR),
        line("FALSIFY-CLEAN-002", "flaky", ERROR),
        line("FALSIFY-CLEAN-001", "passed"),
        line("FALSIFY-CLEAN-002", "failed"),
    )
    doc = status_json(project, capsys)
    assert doc["scoreboard"] == QUIET and doc["not_checked"] == 0 and doc["flaky"] == 0
    assert doc["contracts"][0]["last_errors"] == []
    assert main(["status", str(project / "contracts")]) == 0
    out = capsys.readouterr().out
    assert "not checked" not in out and "flaky" not in out
    assert out.rstrip().splitlines()[-1] == QUIET


def test_garbage_history_in_pv_status_is_no_traceback(project, capsys):
    history(project, b"\x00\xff garbage", b"{", b"x" * (lastrun.MAX_BYTES + 1))
    doc = status_json(project, capsys)
    assert doc["scoreboard"] == QUIET and doc["not_checked"] == 0


# --- pv dashboard and pv check -----------------------------------------------------------


def test_dashboard_shows_not_checked_and_check_fails(project, capsys):
    error = {**ERROR, "message": "<script>alert(1)</script> a|b"}
    history(project, line("FALSIFY-CLEAN-001", "not_checked", error))
    assert dashboard_run(project) == 0  # without --check, it only shows
    capsys.readouterr()
    assert dashboard_run(project, "--check") == 1
    err = capsys.readouterr().err
    where = project / "d" / "status.md"
    assert (
        f"pv dashboard: not checked: 1 (the claims were not tested; see {where})"
        in err.splitlines()
    )

    out = project / "d"
    board = json.loads((out / "status.json").read_text())
    assert board["totals"] == {"DISCHARGED": 0, "PARTIAL": 1, "PROPOSED": 1, "FALSIFIED": 0}
    assert board["not_checked"] == 1 and board["flaky"] == 0
    assert board["scoreboard"] == QUIET + " · 1 not checked"
    views = {f["id"]: f for f in board["contracts"][0]["falsifiers"]}
    assert views["FALSIFY-CLEAN-001"]["last_outcome"] == "not_checked"
    assert views["FALSIFY-CLEAN-001"]["last_error"] == error
    assert views["FALSIFY-CLEAN-002"]["last_error"] is None
    assert board["contracts"][0]["not_checked"] == 1

    md = (out / "status.md").read_text()
    assert "## Not checked" in md
    assert (
        "| `FALSIFY-CLEAN-001` | `clean-v1` | PARTIAL | not checked | ModuleNotFoundError: "
        "&lt;script&gt;alert(1)&lt;/script&gt; a\\|b (call, falsifiers/test\\_clean.py:12 in "
        "test\\_it) |"
    ) in md
    assert "| `FALSIFY-CLEAN-001` | PARTIAL (not checked) |" in md
    assert "| `FALSIFY-CLEAN-002` | PROPOSED |" in md

    page = (out / "index.html").read_text()
    assert "<script>alert(1)" not in page and "&lt;script&gt;alert(1)" in page
    assert '<span class="tot NOT_CHECKED">not checked: <span data-not-checked>1</span>' in page
    assert ".NOT_CHECKED{color:#e65100}" in page
    marked = re.findall(
        r'<tr class="NOT_CHECKED" data-last-outcome="(\w+)"><td><code>([^<]+)', page
    )
    assert marked == [("not_checked", "FALSIFY-CLEAN-001")]
    assert '<td class="NOT_CHECKED" data-not-checked>1</td>' in page
    # the status counts stay the statuses: nothing else carries data-count
    assert set(re.findall(r'data-count="(\w+)"', page)) == set(board["totals"])

    badge = (out / "badge.svg").read_text()
    assert 'fill="#e65100"' in badge and "0/2 discharged, 1 not checked" in badge


def test_dashboard_flaky_fails_check_and_a_later_pass_clears_everything(project, capsys):
    history(project, line("FALSIFY-CLEAN-002", "flaky", ERROR))
    assert dashboard_run(project, "--check") == 1
    assert "pv dashboard: flaky: 1 (failed, then passed" in capsys.readouterr().err
    board = json.loads((project / "d" / "status.json").read_text())
    assert board["flaky"] == 1 and board["not_checked"] == 0

    history(project, line("FALSIFY-CLEAN-002", "passed"))
    assert dashboard_run(project, "--check") == 0
    assert "not checked" not in capsys.readouterr().err
    board = json.loads((project / "d" / "status.json").read_text())
    assert board["flaky"] == 0 and board["not_checked"] == 0 and board["scoreboard"] == QUIET
    assert "## Not checked" not in (project / "d" / "status.md").read_text()
    page = (project / "d" / "index.html").read_text()
    assert '<tr class="NOT_CHECKED"' not in page and "data-not-checked>0<" in page
    badge = (project / "d" / "badge.svg").read_text()
    assert "#e65100" not in badge and dashboard.COLOURS["PROPOSED"] in badge


def test_a_refutation_keeps_the_badge_red(project):
    path = project / "contracts" / "clean-v1.yaml"
    path.write_text(path.read_text().replace("status: PARTIAL\n", "status: FALSIFIED\n", 1))
    history(project, line("FALSIFY-CLEAN-002", "not_checked", ERROR))
    assert dashboard_run(project, "--check") == 1
    badge = (project / "d" / "badge.svg").read_text()
    assert 'fill="#c62828"' in badge and "#e65100" not in badge


def test_garbage_history_in_the_dashboard_is_no_traceback(project, capsys):
    history(project, b"\x00\xff", b"{}", b"[]", b"x" * (lastrun.MAX_BYTES + 1))
    assert dashboard_run(project, "--check") == 0
    assert json.loads((project / "d" / "status.json").read_text())["not_checked"] == 0


def test_dashboard_markdown_cells_escape_a_backslash_before_a_pipe():
    assert dashboard._md("a\\|b") == "a\\\\\\|b"


def test_pv_check_fails_when_a_falsifier_is_not_checked(tmp_path):
    """pytest passed, but a falsifier it did not run was last not checked: still red."""
    (tmp_path / "contracts").mkdir()
    (tmp_path / "contracts" / "mini-v1.yaml").write_text(
        "metadata:\n  version: '1.0.0'\nfalsification_tests:\n"
        "  - {id: FALSIFY-MINI-001, rule: r, prediction: p}\n"
        "  - {id: FALSIFY-MINI-002, rule: r, prediction: p}\n"
    )
    (tmp_path / "falsifiers").mkdir()
    (tmp_path / "falsifiers" / "test_mini.py").write_text(
        "import pytest\n\n@pytest.mark.falsifies('FALSIFY-MINI-001')\ndef test_m():\n    pass\n"
    )
    history(
        tmp_path, line("FALSIFY-MINI-002", "not_checked", ERROR, contract="mini-v1"), cid="mini-v1"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}  # this checkout's provable
    result = subprocess.run(
        [sys.executable, "-m", "provable.cli.main", "check", "--", "-q", "-p", "no:cacheprovider"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert result.returncode == 1, result.stdout + result.stderr
    assert "passed" in result.stdout  # pytest itself passed
    assert result.stdout.rstrip().splitlines()[-1].endswith(" · 1 not checked")
    assert (
        "pv check: not checked: 1 (the claims were not tested; see dashboard/status.md)"
        in result.stderr.splitlines()
    )
