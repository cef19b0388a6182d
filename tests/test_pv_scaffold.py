"""``pv scaffold``: failing test skeletons the plugin binds, extended but never overwritten."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from falsifiers.mini_project import MINI_CONTRACT, make_project, run_pv, run_pytest
from provable.cli.main import main
from provable.contracts.model import load_contract
from provable.plugin.markers import bound_ids
from provable.reports.skeleton import NOT_YET_WRITTEN, PLACEHOLDER_IMPORT, scaffold

ROOT = Path(__file__).resolve().parents[1]

SECOND = """\
  - id: FALSIFY-MINI-002
    rule: "zero is neutral, even with \\"quotes\\" and a '''triple''' and a backslash \\\\"
    prediction: "a + 0 == a"
    status: PROPOSED
"""


def test_scaffold_of_a_new_contract_is_bound_and_fails_until_written(tmp_path):
    root = tmp_path
    assert run_pv(root, "new", "fresh-v1", "--dir", "contracts").returncode == 0
    (root / "pyproject.toml").write_text('[tool.pytest.ini_options]\ntestpaths = ["falsifiers"]\n')
    result = run_pv(root, "scaffold", "contracts/fresh-v1.yaml")
    assert result.returncode == 0, result.stderr
    assert "wrote falsifiers/test_fresh_v1.py" in result.stdout
    run = run_pytest(root, "--no-status-write", "-rf")
    assert run.returncode == 1, run.stdout
    assert "1 failed" in run.stdout and "passed" not in run.stdout.splitlines()[-1]
    assert f"FALSIFY-FRESH-001 {NOT_YET_WRITTEN}" in run.stdout
    # the plugin bound it (whatever status it gives a placeholder): it is not listed unbound
    assert "FALSIFY-FRESH-001" in run.stdout and "unbound" not in run.stdout


def test_rerun_adds_only_missing_tests_and_never_overwrites(tmp_path):
    root = make_project(tmp_path, MINI_CONTRACT, test=None, with_git=False)
    contract_path = root / "contracts" / "mini-v1.yaml"
    first = scaffold(load_contract(contract_path), root / "falsifiers")
    assert first.created and first.added == ["FALSIFY-MINI-001"]
    module = first.path
    # the author writes the test
    written = module.read_text().replace(
        f"not_yet_written('FALSIFY-MINI-001 {NOT_YET_WRITTEN}", "assert 1 + 2 == 2 + 1  # ('"
    )
    module.write_text(written)
    again = scaffold(load_contract(contract_path), root / "falsifiers")
    assert again.added == [] and module.read_text() == written

    contract_path.write_text(
        contract_path.read_text().replace("\nchangelog:", "\n" + SECOND + "\nchangelog:")
    )
    third = scaffold(load_contract(contract_path), root / "falsifiers")
    assert third.added == ["FALSIFY-MINI-002"] and third.present == ["FALSIFY-MINI-001"]
    text = module.read_text()
    assert text.startswith(written.rstrip("\n"))
    assert bound_ids(text) == {"FALSIFY-MINI-001", "FALSIFY-MINI-002"}
    run = run_pytest(root, "--no-status-write")
    assert "1 failed, 1 passed" in run.stdout, run.stdout


def test_existing_module_that_does_not_parse_is_left_alone(tmp_path, capsys):
    root = make_project(tmp_path, MINI_CONTRACT, test="def broken(:\n", with_git=False)
    module = root / "falsifiers" / "test_mini_v1.py"
    rc = main(
        ["scaffold", str(root / "contracts" / "mini-v1.yaml"), "--out", str(root / "falsifiers")]
    )
    assert rc == 1 and module.read_text() == "def broken(:\n"
    assert "does not parse" in capsys.readouterr().err


def test_qualified_markers_count_as_present_and_json(tmp_path, capsys):
    root = make_project(
        tmp_path,
        MINI_CONTRACT,
        test="import pytest\n\n@pytest.mark.falsifies('mini-v1:FALSIFY-MINI-001')\ndef test_x():\n"
        "    pass\n",
        with_git=False,
    )
    args = ["scaffold", str(root / "contracts" / "mini-v1.yaml"), "--out", str(root / "falsifiers")]
    assert main([*args, "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc == {
        "path": str(root / "falsifiers" / "test_mini_v1.py"),
        "created": False,
        "added": [],
        "present": ["FALSIFY-MINI-001"],
    }


@pytest.mark.parametrize("name", ["tensor-layout-v1", "model-diff-v1"])
def test_scaffold_of_real_contracts_compiles_with_one_test_per_falsifier(tmp_path, name):
    contract = load_contract(ROOT / "contracts" / f"{name}.yaml")
    result = scaffold(contract, tmp_path)
    text = result.path.read_text()
    compile(text, str(result.path), "exec")
    assert bound_ids(text) == {f.id for f in contract.falsifiers}
    assert len(re.findall(r"^def test_", text, re.M)) == len(contract.falsifiers)
    assert text.count("not_yet_written(") == len(contract.falsifiers)
    assert "pytest.fail(" not in text
    assert text.count(f"    {PLACEHOLDER_IMPORT}\n") == len(contract.falsifiers)


def test_an_id_too_long_for_a_file_name_is_refused_not_a_traceback(tmp_path):
    """A safe-shaped id of 250 characters makes a module name the file system cannot hold
    (with the atomic write's temp file beside it): a refusal naming the size, nothing
    written, where it was an OSError traceback."""
    from provable.reports.skeleton import MAX_MODULE_NAME_BYTES, ScaffoldRefused

    path = tmp_path / "c.yaml"
    path.write_text(MINI_CONTRACT, encoding="utf-8")
    contract = load_contract(path)
    contract.id = "a" * 250
    out = tmp_path / "out"
    with pytest.raises(ScaffoldRefused, match=r"bytes .*file names hold 255"):
        scaffold(contract, out)
    assert not out.exists() or not any(out.iterdir())
    contract.id = "a" * (MAX_MODULE_NAME_BYTES - len("test_.py"))
    assert scaffold(contract, out).path.is_file()  # the longest that fits is written
