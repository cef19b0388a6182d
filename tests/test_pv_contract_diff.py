"""``pv diff OLD NEW``: changes between two versions of a contract and the bump they need."""

from __future__ import annotations

import json
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from provable.cli.main import main
from provable.contracts.model import load_contract
from provable.reports.contract_diff import MAJOR, MINOR, NONE, PATCH, diff_contracts

# Frozen copies of real contracts (model-diff-v1 at 1.1.1, gguf-export-v1 at 1.1.0): the
# project's own files change with every `pv check` and every new falsifier, and these tests
# edit exact lines and versions of them.
FIXTURES = Path(__file__).resolve().parent / "data" / "contract_diff"
REAL = FIXTURES / "model-diff-v1.yaml"


def write(tmp_path: Path, name: str, text: str) -> Path:
    folder = tmp_path / name
    folder.mkdir(exist_ok=True)
    path = folder / REAL.name
    path.write_text(text)
    return path


def bump(text: str, new: str) -> str:
    return text.replace('  version: "1.1.1"', f'  version: "{new}"', 1)


def diff(tmp_path: Path, new_text: str, old_text: str | None = None):
    old = write(tmp_path, "old", old_text or REAL.read_text())
    new = write(tmp_path, "new", new_text)
    return diff_contracts(load_contract(old), load_contract(new)), old, new


def kinds(result) -> set[str]:
    return {c.kind for c in result.changes}


def test_identical_contract_needs_nothing(tmp_path):
    result, old, new = diff(tmp_path, REAL.read_text())
    assert result.changes == [] and result.required == NONE and result.enough
    assert main(["diff", str(old), str(new)]) == 0


def test_removed_falsifier_is_major_and_a_minor_bump_is_not_enough(tmp_path, capsys):
    text = REAL.read_text()
    start = text.index("  - id: FALSIFY-DIFF-011")
    end = text.index("\nchangelog:")
    result, old, new = diff(tmp_path, bump(text[:start] + text[end:], "1.2.0"))
    assert kinds(result) == {"falsifier-removed"} and result.required == MAJOR
    assert not result.enough and result.suggested == "2.0.0"
    assert main(["diff", str(old), str(new)]) == 1
    out = capsys.readouterr().out
    assert "error [semver-bump] version 1.1.1 -> 1.2.0 is a minor bump, but the changes need" in out
    assert "FALSIFY-DIFF-011 removed" in out


def test_added_falsifier_is_minor(tmp_path, capsys):
    text = REAL.read_text().replace(
        "\nchangelog:",
        "  - {id: FALSIFY-DIFF-012, rule: r, prediction: p}\n\nchangelog:",
    )
    result, old, new = diff(tmp_path, bump(text, "1.2.0"))
    assert kinds(result) == {"falsifier-added"} and result.required == MINOR and result.enough
    result, old, new = diff(tmp_path, text)  # not bumped at all
    assert not result.enough
    assert main(["diff", str(old), str(new), "--json"]) == 1
    doc = json.loads(capsys.readouterr().out)
    assert doc["required"] == "minor" and doc["actual"] == "none" and doc["suggested"] == "1.2.0"


def test_rewording_is_patch(tmp_path):
    text = REAL.read_text().replace(
        'rule: "A tensor multiplied by a constant is tagged SCALED with the ratio"',
        'rule: "A tensor multiplied by a constant is tagged SCALED, with the ratio"',
    )
    result, _, _ = diff(tmp_path, bump(text, "1.1.2"))
    assert kinds(result) == {"falsifier-reworded"} and result.required == PATCH and result.enough


def test_tolerance_loosened_is_major_tightened_is_minor(tmp_path):
    gguf = FIXTURES / "gguf-export-v1.yaml"
    text = gguf.read_text()
    assert "tolerance: 1.0e-4" in text
    old = tmp_path / "old.yaml"
    old.write_text(text)
    for tolerance, kind, level in (
        ("1.0e-3", "tolerance-loosened", MAJOR),
        ("1.0e-5", "tolerance-tightened", MINOR),
    ):
        new = tmp_path / f"new-{tolerance}.yaml"
        new.write_text(text.replace("tolerance: 1.0e-4", f"tolerance: {tolerance}"))
        result = diff_contracts(load_contract(old), load_contract(new))
        assert kinds(result) == {kind} and result.required == level


def test_equation_obligation_and_hosts_changes(tmp_path):
    text = REAL.read_text()
    new = text.replace(
        '      - "exactly one tag per pair"\n', ""
    ).replace(  # an invariant dropped: major
        '    property: "no false alarms"', '    property: "no false alarms at all"'
    )  # reworded property, same type: patch
    result, _, _ = diff(tmp_path, new)
    assert {"invariant-removed", "obligation-reworded"} <= kinds(result)
    assert result.required == MAJOR
    hosts = text.replace(
        "  - id: FALSIFY-DIFF-001\n", "  - id: FALSIFY-DIFF-001\n    hosts: [cpu, cuda]\n"
    )
    result, _, _ = diff(tmp_path, hosts)
    assert kinds(result) == {"hosts-tightened"} and result.required == MINOR
    result, _, _ = diff(tmp_path, text, old_text=hosts)
    assert kinds(result) == {"hosts-loosened"} and result.required == MAJOR


def test_usage_errors(tmp_path):
    assert main(["diff", str(tmp_path / "a.yaml"), str(REAL)]) == 2
    bad = tmp_path / "bad.yaml"
    bad.write_text("metadata: [unclosed\n")
    assert main(["diff", str(bad), str(REAL)]) == 1  # unreadable: a finding, as in validate


@settings(max_examples=40, deadline=None)
@given(
    removed=st.sets(st.integers(1, 11), max_size=4),
    added=st.integers(0, 3),
    minor_bump=st.booleans(),
)
def test_rule_removal_major_addition_minor(tmp_path_factory, removed, added, minor_bump):
    """Over random edits: the required bump is major iff a falsifier was removed, else minor
    iff one was added; a minor bump is enough exactly when nothing was removed."""
    text = REAL.read_text()
    blocks = text.split("\n  - id: ")
    head, items = blocks[0], blocks[1:]
    last_tail = items[-1][items[-1].index("\n\nchangelog:") :]
    items[-1] = items[-1][: items[-1].index("\n\nchangelog:")]
    kept = [b for i, b in enumerate(items, 1) if i not in removed]
    kept += [f"FALSIFY-DIFF-{100 + k}\n    rule: r\n    prediction: p" for k in range(added)]
    new_text = head + "".join("\n  - id: " + b for b in kept) + last_tail
    if minor_bump:
        new_text = bump(new_text, "1.2.0")
    tmp = tmp_path_factory.mktemp("fuzz")
    result, _, _ = diff(tmp, new_text)
    expected = MAJOR if removed else MINOR if added else NONE
    assert result.required == expected
    assert result.enough == (expected == NONE or (minor_bump and expected == MINOR))
