"""Findings of the adversarial review of ``provable/``: each test failed before its fix."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from provable.cli import main
from provable.model import load_contract
from provable.skeleton import scaffold

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
