"""`pv scaffold` takes a contract id as well as a path; its placeholders call
``provable.plugin.outcomes.not_yet_written`` (imported once per module)."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest

from falsifiers.mini_project import MINI_CONTRACT, make_project, run_pytest
from provable.cli.main import main
from provable.contracts.model import load_contract
from provable.plugin.markers import bound_ids
from provable.reports.skeleton import NOT_YET_WRITTEN, PLACEHOLDER_IMPORT, scaffold


@pytest.fixture
def root(tmp_path: Path) -> Path:
    return make_project(tmp_path / "proj", MINI_CONTRACT, test=None, with_git=False)


def module(root: Path) -> Path:
    return root / "falsifiers" / "test_mini_v1.py"


def test_by_path_as_before(root, monkeypatch, capsys):
    monkeypatch.chdir(root)
    assert main(["scaffold", "contracts/mini-v1.yaml"]) == 0
    assert "wrote falsifiers/test_mini_v1.py: 1 failing test(s)" in capsys.readouterr().out
    assert bound_ids(module(root).read_text()) == {"FALSIFY-MINI-001"}


def test_by_id_from_the_project_root(root, monkeypatch, capsys):
    monkeypatch.chdir(root)
    assert main(["scaffold", "mini-v1"]) == 0
    assert "wrote falsifiers/test_mini_v1.py: 1 failing test(s)" in capsys.readouterr().out
    assert bound_ids(module(root).read_text()) == {"FALSIFY-MINI-001"}


def test_by_id_from_a_subfolder_writes_beside_the_projects_falsifiers(root, monkeypatch, capsys):
    sub = root / "docs" / "deep"
    sub.mkdir(parents=True)
    monkeypatch.chdir(sub)
    assert main(["scaffold", "mini-v1", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert Path(doc["path"]).resolve() == module(root).resolve() and doc["created"]
    assert not (sub / "falsifiers").exists()
    # an explicit --out is kept, relative to the working directory as always
    assert main(["scaffold", "mini-v1", "--out", "here"]) == 0
    assert (sub / "here" / "test_mini_v1.py").is_file()


def test_by_id_a_yml_file_and_a_file_named_otherwise(root, monkeypatch, capsys):
    contracts = root / "contracts"
    (contracts / "mini-v1.yaml").rename(contracts / "mini-v1.yml")
    renamed = MINI_CONTRACT.replace("id: mini-v1", "id: renamed-v2").replace("MINI", "REN")
    (contracts / "sub").mkdir()
    (contracts / "sub" / "some-file.yaml").write_text(renamed)
    (contracts / "broken.yaml").write_text("metadata: [\n")  # unreadable: no match, no crash
    monkeypatch.chdir(root / "falsifiers")
    assert main(["scaffold", "mini-v1"]) == 0
    assert main(["scaffold", "renamed-v2"]) == 0  # found by its metadata.id
    assert bound_ids((root / "falsifiers" / "test_renamed_v2.py").read_text()) == {
        "FALSIFY-REN-001"
    }
    assert module(root).is_file()


def test_an_unknown_id_names_both_tries_in_one_line(root, monkeypatch, capsys):
    monkeypatch.chdir(root)
    assert main(["scaffold", "demo-v1"]) == 2
    err = capsys.readouterr().err
    assert err == "pv: error: demo-v1: no such file, and no contract with that id in contracts/\n"
    assert not (root / "falsifiers" / "test_demo_v1.py").exists()


def test_two_files_with_one_id_are_ambiguous(root, monkeypatch, capsys):
    (root / "contracts" / "copy.yaml").write_text(MINI_CONTRACT.replace("mini-v1", "twice-v1"))
    (root / "contracts" / "copy2.yaml").write_text(MINI_CONTRACT.replace("mini-v1", "twice-v1"))
    monkeypatch.chdir(root)
    assert main(["scaffold", "twice-v1"]) == 2
    err = capsys.readouterr().err.strip()
    assert "twice-v1: 2 contracts in contracts/ have that id" in err
    assert len(err.splitlines()) == 1


def test_a_missing_path_keeps_its_message(root, monkeypatch, capsys):
    monkeypatch.chdir(root)
    for path in ("contracts/nope.yaml", "nope.yaml"):  # a path, a file name: not an id
        assert main(["scaffold", path]) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"pv: error: {path}") and err.endswith(": no such file\n")
        assert "no contract with that id" not in err and len(err.splitlines()) == 1


# --- the placeholder ---------------------------------------------------------------------


def test_placeholder_calls_not_yet_written_with_its_own_import(root):
    contract_path = root / "contracts" / "mini-v1.yaml"
    first = scaffold(load_contract(contract_path), root / "falsifiers")
    text = first.path.read_text()
    message = f"FALSIFY-MINI-001 {NOT_YET_WRITTEN}: write a test that would observe the claim fail"
    assert f"    {PLACEHOLDER_IMPORT}\n\n    not_yet_written({message!r})\n" in text
    assert "pytest.fail" not in text
    # nothing at module level but the docstring, `import pytest` and the tests: once every
    # test is written, no unused import is left
    assert [type(n).__name__ for n in ast.parse(text).body] == ["Expr", "Import", "FunctionDef"]


def test_a_test_appended_to_an_older_module_runs(root):
    old = (
        '"""written before the placeholder changed"""\n\nimport pytest\n\n\n'
        "@pytest.mark.falsifies('FALSIFY-MINI-001')\ndef test_old():\n"
        "    pytest.fail('FALSIFY-MINI-001 not yet written', pytrace=False)\n"
    )
    module(root).write_text(old)
    contract_path = root / "contracts" / "mini-v1.yaml"
    contract_path.write_text(
        MINI_CONTRACT.replace(
            "\nchangelog:",
            "\n  - {id: FALSIFY-MINI-002, rule: r, prediction: p, status: PROPOSED}\n\nchangelog:",
        )
    )
    result = scaffold(load_contract(contract_path), root / "falsifiers")
    text = result.path.read_text()
    assert text.startswith(old.rstrip("\n")) and result.added == ["FALSIFY-MINI-002"]
    assert text.count(PLACEHOLDER_IMPORT) == 1 and text.count("import pytest") == 1
    run = run_pytest(root, "--no-status-write", "-rf")
    assert "2 failed" in run.stdout, run.stdout
    assert "NameError" not in run.stdout
    assert f"NotYetWritten: FALSIFY-MINI-002 {NOT_YET_WRITTEN}" in run.stdout, run.stdout
