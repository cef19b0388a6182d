"""Issue 9 cases 8 and 9: evidence changes only when its substance does; small defects."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml

from provable.cli.main import main
from provable.contracts.evidence import merge_record
from tests.contract_samples import CLEAN_CONTRACT

REPO = Path(__file__).resolve().parents[1]

CONTRACT = """\
metadata:
  id: churn-v1
  version: "1.0.0"
falsification_tests:
  - id: FALSIFY-CHURN-001
    rule: "fails with an object in its message"
    prediction: "p"
  - id: FALSIFY-CHURN-002
    rule: "passes with a value that moves"
    prediction: "p"
"""

TESTS = """\
import os
import pytest

@pytest.mark.falsifies("FALSIFY-CHURN-001")
def test_fails(evidence):
    evidence.record(n=1)
    assert object() is None

@pytest.mark.falsifies("FALSIFY-CHURN-002")
def test_moves(evidence):
    diff = float(os.environ.get("DIFF", "1e-7"))
    evidence.record(max_abs_diff=diff, tolerance=float(os.environ.get("TOL", "1e-5")))
    assert diff < 1e-5
"""


@pytest.fixture
def project(pytester: pytest.Pytester) -> pytest.Pytester:
    (pytester.path / "contracts").mkdir()
    (pytester.path / "contracts" / "churn-v1.yaml").write_text(CONTRACT)
    pytester.makepyfile(test_churn=TESTS)
    return pytester


def evidence_bytes(pytester: pytest.Pytester) -> dict[str, bytes]:
    folder = pytester.path / "evidence" / "churn-v1"
    return {p.name: p.read_bytes() for p in sorted(folder.glob("*.json"))}


def run(pytester: pytest.Pytester, *args: str) -> pytest.RunResult:
    return pytester.runpytest_inprocess("-p", "no:cacheprovider", *args)


def test_an_identical_failure_rewrites_nothing(project):
    run(project)
    first = evidence_bytes(project)
    assert b"0x" in first["FALSIFY-CHURN-001.json"]  # the address is there, masked
    run(project)
    assert evidence_bytes(project) == first


def test_a_value_moving_within_its_bound_goes_to_history_only(project, monkeypatch):
    run(project)
    first = evidence_bytes(project)
    monkeypatch.setenv("DIFF", "2.5e-7")
    run(project)
    assert evidence_bytes(project) == first
    history = (project.path / "evidence" / "churn-v1" / "history.jsonl").read_text()
    assert "2.5e-07" in history
    monkeypatch.setenv("TOL", "1e-6")  # the requirement changed: the evidence must say so
    run(project)
    record = json.loads(evidence_bytes(project)["FALSIFY-CHURN-002.json"])
    assert record["runs"]["cpu"]["recorded"]["test_churn.py::test_moves"]["tolerance"] == 1e-6


def test_xdist_and_serial_failures_store_the_same_message(project):
    run(project)
    first = evidence_bytes(project)
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", "-n", "2"],
        cwd=project.path,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert "FALSIFY-CHURN-001" in proc.stdout, proc.stdout + proc.stderr
    assert evidence_bytes(project) == first


def test_clean_message_drops_addresses_and_the_worker_header():
    from provable.contracts.evidence import clean_message

    raw = (
        "[gw2] linux -- Python 3.11.7 /usr/bin/python3\n"
        "E   assert <object object at 0x7f3a2c1d9e40> is None\n"
    )
    assert clean_message(raw) == "E   assert <object object at 0x…> is None\n"


def test_another_host_with_the_same_outcome_rewrites_nothing():
    section = {"tests": [{"nodeid": "t::a", "outcome": "passed"}], "recorded": {"t::a": {}}}
    old = {"runs": {"cpu": {**section, "host": {"cpu": "A"}, "commit": "1"}}}
    new = {"runs": {"cpu": {**section, "host": {"cpu": "B"}, "commit": "2"}}}
    assert merge_record(old, new, ["cpu"], True)["runs"]["cpu"]["host"] == {"cpu": "A"}


def test_pv_new_project_ignores_history(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["new", "x-v1"]) == 0
    ignored = (tmp_path / ".gitignore").read_text().splitlines()
    assert "evidence/**/history.jsonl" in ignored and ".provable.lock" in ignored
    assert main(["new", "y-v1"]) == 0
    assert (tmp_path / ".gitignore").read_text().count("history.jsonl") == 1


def test_crlf_contract_stays_crlf(pytester):
    (pytester.path / "contracts").mkdir()
    text = CONTRACT.replace("\n", "\r\n")
    (pytester.path / "contracts" / "churn-v1.yaml").write_bytes(text.encode())
    pytester.makepyfile(test_churn=TESTS)
    run(pytester)
    after = (pytester.path / "contracts" / "churn-v1.yaml").read_bytes()
    assert b"FALSIFIED" in after
    assert after.count(b"\n") == after.count(b"\r\n")


def test_evidence_works_with_given(pytester):
    (pytester.path / "contracts").mkdir()
    (pytester.path / "contracts" / "churn-v1.yaml").write_text(CONTRACT)
    pytester.makepyfile(
        test_given=textwrap.dedent("""\
        import pytest
        from hypothesis import given, settings, strategies as st

        @pytest.mark.falsifies("FALSIFY-CHURN-002")
        @settings(max_examples=5, database=None)
        @given(st.integers(0, 9))
        def test_given(evidence, n):
            evidence.record(n=n)
            assert n < 10
        """)
    )
    run(pytester, "test_given.py").assert_outcomes(passed=1)
    data = yaml.safe_load((pytester.path / "contracts" / "churn-v1.yaml").read_text())
    assert data["falsification_tests"][1]["status"] == "DISCHARGED"


def test_pv_new_description_with_newline_and_yaml_suffix(tmp_path):
    folder = tmp_path / "contracts"
    assert main(["new", "x.yaml", "--dir", str(folder), "--description", "a\nb: c"]) == 0
    assert [p.name for p in folder.iterdir()] == ["x.yaml"]
    assert main(["validate", "--strict", str(folder)]) == 0
    meta = yaml.safe_load((folder / "x.yaml").read_text())["metadata"]
    assert meta["description"] == "a b: c"


@pytest.mark.parametrize(("umask", "mode"), [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_new_files_respect_the_umask(tmp_path, umask, mode):
    old = os.umask(umask)
    try:
        assert main(["new", "x-v1", "--dir", str(tmp_path / "contracts")]) == 0
    finally:
        os.umask(old)
    assert (tmp_path / "contracts" / "x-v1.yaml").stat().st_mode & 0o777 == mode


def test_the_same_file_named_twice_counts_once(tmp_path, capsys):
    (tmp_path / "a").mkdir()
    path = tmp_path / "a" / "ok-v1.yaml"
    path.write_text(CLEAN_CONTRACT.format(id="ok-v1"))
    assert main(["validate", str(path), str(tmp_path / "a" / ".." / "a" / "ok-v1.yaml")]) == 0
    assert "in 1 file" in capsys.readouterr().out


def test_markdown_table_escapes_the_pipe(tmp_path, capsys):
    text = CLEAN_CONTRACT.format(id="p-v1").replace('version: "1.1.0"', 'version: "1|1"')
    (tmp_path / "p-v1.yaml").write_text(text)
    main(["status", "--format", "markdown", str(tmp_path)])
    row = next(ln for ln in capsys.readouterr().out.splitlines() if "p-v1" in ln)
    cells = row.replace("\\|", "").split("|")
    assert len(cells) == 9, row  # 7 columns between 8 pipes


def test_one_contract_id_in_two_subfolders_is_an_error(tmp_path, capsys):
    for sub in ("a", "b"):
        (tmp_path / "contracts" / sub).mkdir(parents=True)
        (tmp_path / "contracts" / sub / "dup-v1.yaml").write_text(
            CLEAN_CONTRACT.format(id="dup-v1").replace("CLEAN", sub.upper())
        )
    assert main(["validate", "--strict", str(tmp_path / "contracts")]) == 1
    assert "contract-id-unique" in capsys.readouterr().out


def test_depends_on_resolves_against_the_whole_contracts_root(tmp_path, capsys):
    (tmp_path / "pyproject.toml").write_text("")
    for sub, cid in (("a", "x-v1"), ("b", "y-v1")):
        (tmp_path / "contracts" / sub).mkdir(parents=True)
        text = CLEAN_CONTRACT.format(id=cid).replace("CLEAN", cid[0].upper())
        if cid == "x-v1":
            text = text.replace("depends_on: []", "depends_on: [y-v1]")
        (tmp_path / "contracts" / sub / f"{cid}.yaml").write_text(text)
    assert main(["validate", "--strict", str(tmp_path / "contracts" / "a" / "x-v1.yaml")]) == 0
    capsys.readouterr()
