"""Falsifiers of traceability-v1: pv audit, pv diff and pv scaffold keep the chain honest.

Each check takes the implementation it attacks as a parameter, so that
``tests/test_traceability_catches_defects.py`` can hand it a defective one and see it fail.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from falsifiers.mini_project import (
    BROKEN_CHAIN,
    BROKEN_TESTS,
    MINI_CONTRACT,
    MINI_TEST,
    git,
    make_project,
    run_pytest,
)
from provable.contracts.model import load_contract
from provable.reports.audit import audit
from provable.reports.contract_diff import MAJOR, MINOR, NONE, diff_contracts
from provable.reports.skeleton import NOT_YET_WRITTEN, scaffold

ROOT = Path(__file__).resolve().parents[1]


def _discharge(root: Path) -> None:
    result = run_pytest(root)
    assert result.returncode == 0, result.stdout + result.stderr
    git(root, "add", "-A")
    git(root, "commit", "-q", "-m", "discharge")


def _stale(audit_fn: Callable[..., Any]) -> list[str]:
    return [f.message for f in audit_fn(["contracts"]).findings if f.rule == "evidence-stale"]


def check_stale_evidence(root: Path, audit_fn: Callable[..., Any] = audit) -> int:
    """``root``: a fresh mini project (git, one falsifier). The cwd must be ``root``."""
    _discharge(root)
    assert _stale(audit_fn) == [], "current evidence reported stale"
    (root / "falsifiers" / "test_mini_v1.py").write_text(
        MINI_TEST.replace("(-3, 7)", "(-3, 7), (5, 5)")
    )
    git(root, "commit", "-qam", "edit the bound test")
    stale = _stale(audit_fn)
    assert len(stale) == 1 and "test_mini_v1.py changed" in stale[0], stale
    _discharge(root)
    assert _stale(audit_fn) == [], "a re-run with the same outcome did not refresh the evidence"
    # evidence carried over from a commit that is not on this history
    git(root, "checkout", "-q", "-b", "side")
    (root / "SIDE").write_text("side\n")
    git(root, "add", "-A")
    git(root, "commit", "-q", "-m", "side")
    side = git(root, "rev-parse", "HEAD")
    git(root, "checkout", "-q", "main")
    path = root / "evidence" / "mini-v1" / "FALSIFY-MINI-001.json"
    record = json.loads(path.read_text())
    record["runs"]["cpu"]["commit"] = side
    path.write_text(json.dumps(record))
    stale = _stale(audit_fn)
    assert len(stale) == 1 and "not an ancestor of HEAD" in stale[0], stale
    return 3


def check_only_the_plugin_binds(root: Path, audit_fn: Callable[..., Any] = audit) -> int:
    """``root``: the hand-made broken project (two bound falsifiers, one free-text, one
    dangling marker). The cwd must be ``root``."""
    report = audit_fn(["contracts"])
    unbound = [f.message for f in report.findings if f.rule == "trace-unbound"]
    collect = [f.message for f in report.findings if f.rule == "trace-collect"]
    assert len(unbound) == 1 and "FALSIFY-BROKEN-003" in unbound[0], unbound
    assert len(collect) == 1 and "FALSIFY-BROKEN-099" in collect[0], collect
    assert report.totals()["bound"] == 2
    return len(report.findings)


def _falsifier_blocks(text: str) -> tuple[str, list[str], str]:
    head, _, rest = text.partition("\nfalsification_tests:\n")
    body, _, tail = rest.partition("\n\nchangelog:")
    blocks = ["  - id: " + b.rstrip("\n") + "\n" for b in body.split("  - id: ")[1:]]
    return head + "\nfalsification_tests:\n", blocks, "\n\nchangelog:" + tail


def expected_level(removed: bool, added: bool, tol_old: float, tol_new: float) -> int:
    """The semver rule of the contract, written independently of pv diff."""
    if removed or tol_new > tol_old:
        return MAJOR
    if added or tol_new < tol_old:
        return MINOR
    return NONE


def check_semver_rule(diff_fn: Callable[..., Any] = diff_contracts, examples: int = 40) -> None:
    source = (ROOT / "contracts" / "gguf-export-v1.yaml").read_text()
    assert "tolerance: 1.0e-4" in source
    head, blocks, tail = _falsifier_blocks(source)
    version = load_contract(ROOT / "contracts" / "gguf-export-v1.yaml").version
    assert version is not None
    major, minor, patch = (int(x) for x in version.split("."))

    @settings(max_examples=examples, deadline=None, derandomize=True)
    @given(
        keep=st.lists(st.booleans(), min_size=len(blocks), max_size=len(blocks)),
        added=st.integers(0, 2),
        tolerance=st.sampled_from([1.0e-6, 1.0e-5, 1.0e-4, 2.0e-4, 1.0e-2]),
        bumped=st.sampled_from(["none", "patch", "minor", "major"]),
    )
    def run(keep: list[bool], added: int, tolerance: float, bumped: str) -> None:
        kept = [b for b, k in zip(blocks, keep, strict=True) if k]
        kept += [
            f"  - id: FALSIFY-GGUF-LLAMACPP-{100 + i}\n    rule: r\n    prediction: p\n"
            for i in range(added)
        ]
        new_version = {
            "none": version,
            "patch": f"{major}.{minor}.{patch + 1}",
            "minor": f"{major}.{minor + 1}.0",
            "major": f"{major + 1}.0.0",
        }[bumped]
        text = (head + "".join(kept).rstrip("\n") + tail).replace(
            "tolerance: 1.0e-4", f"tolerance: {tolerance!r}"
        )
        text = text.replace(f'version: "{version}"', f'version: "{new_version}"', 1)
        with tempfile.TemporaryDirectory() as tmp:
            old_path, new_path = Path(tmp) / "old.yaml", Path(tmp) / "new.yaml"
            old_path.write_text(source)
            new_path.write_text(text)
            result = diff_fn(load_contract(old_path), load_contract(new_path))
        want = expected_level(not all(keep), added > 0, 1.0e-4, tolerance)
        assert result.required == want, (keep, added, tolerance, result.changes)
        actual = {"none": NONE, "patch": 1, "minor": MINOR, "major": MAJOR}[bumped]
        assert result.enough == (actual >= want), (bumped, want)

    run()


def check_scaffold_never_passes(
    root: Path, ids: list[str], rule: str, scaffold_fn: Callable[..., Any] = scaffold
) -> int:
    """``root``: an empty folder. Writes a contract with these falsifier ids, scaffolds it
    and runs pytest on the result."""
    make_project(root, MINI_CONTRACT, test=None, with_git=False)
    contract_path = root / "contracts" / "mini-v1.yaml"
    extra = "".join(
        f"  - id: {fid}\n    rule: {json.dumps(rule)}\n    prediction: p\n" for fid in ids
    )
    contract_path.write_text(
        contract_path.read_text().replace("\nchangelog:", "\n" + extra + "\nchangelog:")
    )
    result = scaffold_fn(load_contract(contract_path), root / "falsifiers")
    edited = result.path.read_text() + "\n# the author's own helper, kept by every re-run\n"
    result.path.write_text(edited)
    scaffold_fn(load_contract(contract_path), root / "falsifiers")
    assert result.path.read_text() == edited, "a re-run rewrote the module"
    run = run_pytest(root, "--no-status-write", "-rf")
    n = len(ids) + 1
    last = run.stdout.strip().splitlines()[-1]
    assert f"{n} failed" in last and "passed" not in last, run.stdout[-3000:]
    assert run.stdout.count(NOT_YET_WRITTEN) >= n, run.stdout[-3000:]
    return n


@pytest.mark.falsifies("FALSIFY-AUDIT-001")
def test_stale_evidence_is_reported_and_cleared_by_a_rerun(tmp_path, monkeypatch, evidence):
    root = make_project(tmp_path / "project")
    monkeypatch.chdir(root)
    evidence.record(stale_cases_seen=check_stale_evidence(root))


@pytest.mark.falsifies("FALSIFY-AUDIT-002")
def test_only_collected_markers_bind(tmp_path, monkeypatch, evidence):
    root = make_project(tmp_path, BROKEN_CHAIN, BROKEN_TESTS, name="broken-v1", with_git=False)
    monkeypatch.chdir(root)
    evidence.record(findings=check_only_the_plugin_binds(root))


@pytest.mark.falsifies("FALSIFY-AUDIT-003")
def test_semver_rule_over_random_edits(evidence):
    check_semver_rule()
    evidence.record(examples=40)


@pytest.mark.falsifies("FALSIFY-AUDIT-004")
def test_a_scaffold_never_passes(tmp_path, evidence):
    ids = ["FALSIFY-MINI-002", "FALSIFY-MINI-X-003", "FALSIFY-MINI-010"]
    rule = 'quotes " and \'\'\' and """ and a backslash \\ and a brace {x}'
    evidence.record(tests=check_scaffold_never_passes(tmp_path, ids, rule))
