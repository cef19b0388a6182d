"""`pv status`, `pv new`, `pv check` and `apr` from the command line."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from provable.cli.main import main
from provable.contracts.validate import discover, validate_paths
from tests.contract_samples import CLEAN_CONTRACT

ROOT = Path(__file__).resolve().parents[1]


def test_status_table_and_scoreboard(write_contract, capsys):
    path = write_contract()
    write_contract(
        CLEAN_CONTRACT.format(id="other-v1")
        .replace("CLEAN", "OTHER")
        .replace("  status: PARTIAL_ALGORITHM_LEVEL\n", ""),
        name="other-v1",
    )
    assert main(["status", str(path.parent)]) == 0
    out = capsys.readouterr().out
    assert re.search(r"clean-v1\s+│\s+1\.1\.0\s+│\s+PARTIAL_ALGORITHM_LEVEL", out)
    assert "(derived)" in out  # other-v1 declares no status: it is derived
    assert (
        "0 discharged · 2 partial · 2 proposed · 0 falsified (of 4 falsifiers in 2 "
        "contracts)" in out
    )


def test_status_json_and_markdown(write_contract, capsys):
    path = write_contract()
    assert main(["status", "--json", str(path)]) == 0
    doc = json.loads(capsys.readouterr().out)
    [row] = doc["contracts"]
    assert row["status"] == "PARTIAL_ALGORITHM_LEVEL" and row["status_derived"] is False
    assert row["falsifiers"] == {"DISCHARGED": 0, "PARTIAL": 1, "PROPOSED": 1, "FALSIFIED": 0}
    assert main(["status", "--format", "markdown", str(path)]) == 0
    md = capsys.readouterr().out
    assert "| `clean-v1` | 1.1.0 | PARTIAL_ALGORITHM_LEVEL | 0 | 1 | 1 | 0 |" in md


def test_status_of_a_broken_file_is_a_row_and_exit_1(write_contract, capsys):
    path = write_contract("metadata: [\n", name="broken-v1")
    assert main(["status", str(path)]) == 1
    assert "INVALID" in capsys.readouterr().out


def test_new_contract_validates_strictly_and_is_not_overwritten(tmp_path, capsys):
    folder = tmp_path / "contracts"
    assert main(["new", "tensor-layout-v1", "--dir", str(folder)]) == 0
    path = folder / "tensor-layout-v1.yaml"
    text = path.read_text()
    assert "FALSIFY-LAYOUT-001" in text
    report = validate_paths(discover([str(path)]), strict=True)
    assert report.errors == 0, report.render_text()
    path.write_text(text + "# my edits\n")
    assert main(["new", "tensor-layout-v1", "--dir", str(folder)]) == 1
    assert path.read_text().endswith("# my edits\n")
    assert main(["new", "Bad ID", "--dir", str(folder)]) == 2
    assert "already exists" in capsys.readouterr().err


def test_help_everywhere():
    for argv in (
        ["--help"],
        ["validate", "--help"],
        ["status", "--help"],
        ["new", "--help"],
        ["check", "--help"],
    ):
        with pytest.raises(SystemExit) as info:
            main(argv)
        assert info.value.code == 0


def test_console_scripts_are_installed():
    for script in ("pv", "apr"):
        result = subprocess.run(
            [Path(sys.executable).parent / script, "--help"], capture_output=True, text=True
        )
        assert result.returncode == 0 and "usage:" in result.stdout


def test_check_runs_validate_falsifiers_and_status(pytester):
    (pytester.path / "contracts").mkdir()
    (pytester.path / "contracts" / "mini-v1.yaml").write_text(
        "metadata:\n  version: '1.0.0'\nfalsification_tests:\n"
        "  - {id: FALSIFY-MINI-001, rule: r, prediction: p}\n"
    )
    (pytester.path / "falsifiers").mkdir()
    (pytester.path / "falsifiers" / "test_mini.py").write_text(
        "import pytest\n\n@pytest.mark.falsifies('FALSIFY-MINI-001')\ndef test_m():\n    pass\n"
    )
    result = subprocess.run(
        [sys.executable, "-m", "provable.cli.main", "check", "--", "-q", "-p", "no:cacheprovider"],
        cwd=pytester.path,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Contracts are valid." in result.stdout or "Contract is valid." in result.stdout
    assert "1 discharged · 0 partial · 0 proposed · 0 falsified" in result.stdout
