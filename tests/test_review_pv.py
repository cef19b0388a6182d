"""Findings of the adversarial review of ``provable/``: each test failed before its fix."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from provable.cli.main import main
from provable.contracts.model import load_contract
from provable.reports.skeleton import scaffold

HOSTILE_ID = 'evil"""; import os; os.system("touch PWNED"); """'


def _contract(path: Path, contract_id: str, description: str) -> Path:
    path.write_text(
        "metadata:\n"
        f"  id: '{contract_id}'\n"
        '  version: "1.0.0"\n'
        "  status: PROPOSED\n"
        f"  description: '{description}'\n"
        "falsification_tests:\n"
        "  - {id: FALSIFY-EVIL-001, rule: r, prediction: p, test: t, if_fails: f}\n",
        encoding="utf-8",
    )
    return path


def _statements_outside_tests(source: str) -> list[str]:
    """Top-level statements other than the docstring, ``import pytest`` and test functions."""
    extra = []
    for i, node in enumerate(ast.parse(source).body):
        if i == 0 and isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant):
            continue
        if isinstance(node, ast.Import) and [a.name for a in node.names] == ["pytest"]:
            continue
        if isinstance(node, ast.FunctionDef):
            continue
        extra.append(ast.dump(node))
    return extra


@pytest.mark.parametrize(
    ("contract_id", "description"),
    [
        (HOSTILE_ID, "d"),  # the id closed the header docstring: code ran on import
        ("plain-v1", 'x""" + __import__("os").getcwd() + """'),
        ("plain-v1", "ends in a backslash \\"),
        ("plain-v1", "a unicode escape \\N{ that is malformed"),
    ],
)
def test_scaffold_header_never_becomes_code(tmp_path, contract_id, description):
    path = _contract(tmp_path / "c.yaml", contract_id, description)
    result = scaffold(load_contract(path), tmp_path / "out")
    source = result.path.read_text(encoding="utf-8")
    assert _statements_outside_tests(source) == []
    docstring = ast.get_docstring(ast.parse(source)) or ""
    assert contract_id in docstring and description in docstring


def test_scaffold_cli_on_a_description_with_a_backslash_escape(tmp_path, capsys):
    path = _contract(tmp_path / "c.yaml", "plain-v1", "\\N{")
    assert main(["scaffold", str(path), "--out", str(tmp_path / "out")]) == 0
    assert "does not parse" not in capsys.readouterr().err


CONTROL = """\
metadata:
  id: ctl-v1
  version: "1.0.0"
  status: PROPOSED
  description: "d"
  depends_on: ["dep\\e]0;title\\a", "x\\ny"]
equations:
  "eq\\e[2J":
    formula: "f\\e[31m(x)"
falsification_tests:
  - {id: "FALSIFY-CTL-001\\e[31m", rule: "r"}
"""


def test_findings_are_one_line_each_and_carry_no_terminal_escapes(tmp_path, capsys):
    path = tmp_path / "ctl-v1.yaml"
    path.write_text(CONTROL, encoding="utf-8")
    assert main(["validate", str(path)]) == 1
    out = capsys.readouterr().out
    assert "\x1b" not in out and "\x07" not in out
    findings = out.splitlines()[:-2]  # then the count and the verdict
    assert findings and all(line.startswith(str(path)) for line in findings), out
    assert "FALSIFY-CTL-001\\x1b[31m" in out and "'x\\ny'" in out


@pytest.mark.parametrize("argv", [["graph"], ["graph", "--format", "dot"], ["equations"]])
def test_graph_and_equations_print_no_terminal_escapes(tmp_path, capsys, argv):
    path = tmp_path / "ctl-v1.yaml"
    path.write_text(CONTROL, encoding="utf-8")
    main([*argv, str(path)])
    captured = capsys.readouterr()
    assert "\x1b" not in captured.out + captured.err
    assert "\x07" not in captured.out + captured.err


def test_mermaid_label_cannot_be_closed_by_a_contract_id(tmp_path, capsys):
    # in metadata.id the schema refuses it (pv graph reads as pv validate does); a contract
    # without metadata.id takes its file name as its id, which the schema does not see
    path = tmp_path / 'q"] --> x["<img src=x onerror=alert(1)>.yaml'
    path.write_text('metadata: {version: "1.0.0", status: PROPOSED, description: d}\n')
    main(["graph", "--format", "mermaid", str(path)])
    node = capsys.readouterr().out.splitlines()[1]
    label = node.split('["', 1)[1]
    assert label.endswith('"]') and '"' not in label[:-2] and "<img" not in label


@pytest.mark.parametrize("xdist", [[], ["-n", "2"]], ids=["serial", "xdist"])
def test_last_failed_run_does_not_overturn_a_sibling_cases_refutation(pytester, monkeypatch, xdist):
    """``--lf`` collects test_cases.py with only its failed case: 1 of 16 cases ran."""
    from tests.test_partial_runs import CONTRACT, TEST_A, TEST_B, TEST_CASES, statuses

    monkeypatch.setenv("PYTHONPATH", str(Path(__file__).resolve().parents[1]))  # this provable

    (pytester.path / "contracts").mkdir()
    (pytester.path / "contracts" / "part-v1.yaml").write_text(CONTRACT)
    pytester.makepyfile(test_a=TEST_A, test_b=TEST_B, test_cases=TEST_CASES)
    (pytester.path / "FAIL_CASE").write_text("")
    pytester.runpytest_inprocess()
    assert statuses(pytester)["FALSIFY-PART-002"] == "FALSIFIED"
    (pytester.path / "FAIL_CASE").unlink()
    result = pytester.runpytest_subprocess("--lf", *xdist)
    result.assert_outcomes(passed=1)
    assert statuses(pytester)["FALSIFY-PART-002"] == "FALSIFIED", result.stdout.str()
    pytester.runpytest_inprocess()  # the whole suite may overturn it
    assert statuses(pytester)["FALSIFY-PART-002"] == "DISCHARGED"


def test_last_failed_with_nothing_to_rerun_is_a_whole_run(pytester, monkeypatch):
    from tests.test_partial_runs import CONTRACT, TEST_A, TEST_B, TEST_CASES, statuses

    monkeypatch.setenv("PYTHONPATH", str(Path(__file__).resolve().parents[1]))  # this provable
    (pytester.path / "contracts").mkdir()
    (pytester.path / "contracts" / "part-v1.yaml").write_text(CONTRACT)
    pytester.makepyfile(test_a=TEST_A, test_b=TEST_B, test_cases=TEST_CASES)
    pytester.runpytest_subprocess("--lf").assert_outcomes(passed=18)
    assert set(statuses(pytester).values()) == {"DISCHARGED"}


@pytest.mark.parametrize(
    ("folder", "says"),
    [
        ("/proc/no-such-folder", "cannot write /proc/no-such-folder"),
        ("/dev/null", "/dev/null: exists and is not a folder"),
    ],
)
def test_pv_new_in_a_folder_it_cannot_make_is_one_line_exit_1(folder, says, capsys):
    assert main(["new", "fresh-v1", "--dir", folder]) == 1
    err = capsys.readouterr().err
    assert says in err and len(err.strip().splitlines()) == 1, err


def test_pv_new_where_gitignore_cannot_be_written_is_one_line(tmp_path, capsys):
    (tmp_path / "contracts").mkdir()
    (tmp_path / ".gitignore").mkdir()  # a folder: reading it fails
    assert main(["new", "fresh-v1", "--dir", str(tmp_path / "contracts")]) == 1
    err = capsys.readouterr().err
    assert ".gitignore" in err and len(err.strip().splitlines()) == 1


NESTED = "[" * 100_000  # json meets this with a RecursionError


@pytest.mark.parametrize(
    "body", [NESTED, "{not json", "x" * (5 * 2**20)], ids=["deep", "bad", "big"]
)
def test_a_run_over_corrupt_evidence_rewrites_it_instead_of_crashing(pytester, body):
    (pytester.path / "contracts").mkdir()
    (pytester.path / "evidence" / "ev-v1").mkdir(parents=True)
    (pytester.path / "contracts" / "ev-v1.yaml").write_text(
        'metadata: {id: ev-v1, version: "1.0.0", status: PARTIAL_ALGORITHM_LEVEL}\n'
        "falsification_tests:\n"
        "  - {id: FALSIFY-EV-001, rule: r, prediction: p, status: PARTIAL,\n"
        "     evidence: evidence/ev-v1/FALSIFY-EV-001.json}\n"
    )
    evidence = pytester.path / "evidence" / "ev-v1" / "FALSIFY-EV-001.json"
    evidence.write_text(body)
    pytester.makepyfile(
        test_ev='import pytest\n\n@pytest.mark.falsifies("FALSIFY-EV-001")\n'
        "def test_ev():\n    pass\n"
    )
    result = pytester.runpytest_inprocess("-p", "no:cacheprovider")
    assert result.ret == 0, result.stdout.str()[-3000:]
    assert "INTERNALERROR" not in result.stdout.str()
    assert main(["validate", str(pytester.path / "contracts")]) == 0


def test_validate_names_deep_evidence_in_one_line(tmp_path, capsys):
    (tmp_path / "contracts").mkdir()
    (tmp_path / "evidence" / "ev-v1").mkdir(parents=True)
    (tmp_path / "contracts" / "ev-v1.yaml").write_text(
        'metadata: {id: ev-v1, version: "1.0.0", status: DISCHARGED, description: d}\n'
        "falsification_tests:\n"
        "  - {id: FALSIFY-EV-001, rule: r, prediction: p, test: t, if_fails: f,\n"
        "     status: DISCHARGED, evidence: evidence/ev-v1/FALSIFY-EV-001.json}\n"
    )
    (tmp_path / "evidence" / "ev-v1" / "FALSIFY-EV-001.json").write_text(NESTED)
    assert main(["validate", str(tmp_path / "contracts")]) == 1
    out = capsys.readouterr().out
    assert "FALSIFY-EV-001: evidence evidence/ev-v1/FALSIFY-EV-001.json is unreadable" in out


@pytest.mark.parametrize(
    "args", [["test_a.py"], ["--ignore=test_b.py"], ["--ignore-glob=*_b.py"]], ids=str
)
def test_a_first_run_of_some_files_does_not_promote_what_another_file_binds(pytester, args):
    """No evidence yet, so only test_b.py's source can say that it binds FALSIFY-PART-001."""
    from tests.test_partial_runs import CONTRACT, TEST_A, TEST_B, TEST_CASES, statuses

    (pytester.path / "contracts").mkdir()
    (pytester.path / "contracts" / "part-v1.yaml").write_text(CONTRACT)
    pytester.makepyfile(test_a=TEST_A, test_b=TEST_B, test_cases=TEST_CASES)
    result = pytester.runpytest_inprocess("-p", "no:cacheprovider", *args)
    assert statuses(pytester)["FALSIFY-PART-001"] is None, result.stdout.str()
    assert "not promoted: 1 of 2 bound cases ran" in result.stdout.str()
    pytester.runpytest_inprocess("-p", "no:cacheprovider")
    assert statuses(pytester)["FALSIFY-PART-001"] == "DISCHARGED"


def test_an_interrupted_run_still_records_the_refutation_it_saw(pytester, monkeypatch):
    """A failure, then Ctrl-C: the failure refutes (the passes before it promote nothing)."""
    from provable.contracts.validate import discover, validate_paths
    from tests.test_partial_runs import CONTRACT, statuses

    (pytester.path / "contracts").mkdir()
    (pytester.path / "contracts" / "part-v1.yaml").write_text(CONTRACT)
    pytester.makepyfile(
        test_a='import pytest\n\n@pytest.mark.falsifies("FALSIFY-PART-001")\n'
        "def test_a():\n    assert False, 'refuted'\n",
        test_b='import pytest\n\n@pytest.mark.falsifies("FALSIFY-PART-002")\n'
        "def test_b():\n    pass\n",
        test_c="def test_c():\n    raise KeyboardInterrupt\n",
    )
    monkeypatch.setenv("PYTHONPATH", str(Path(__file__).resolve().parents[1]))  # this provable
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    assert result.ret == pytest.ExitCode.INTERRUPTED
    assert statuses(pytester) == {"FALSIFY-PART-001": "FALSIFIED", "FALSIFY-PART-002": None}
    assert "run interrupted: only its refutations were written" in result.stdout.str()
    assert validate_paths(discover([str(pytester.path / "contracts")])).errors == 0
