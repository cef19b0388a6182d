"""Every falsifier of traceability-v1 turns red on an injected defect of its class."""

from __future__ import annotations

import dataclasses

import pytest

from falsifiers import test_traceability_v1 as trace
from falsifiers.mini_project import BROKEN_CHAIN, BROKEN_TESTS, make_project
from provable.reports import audit as audit_module
from provable.reports import contract_diff, skeleton
from provable.reports.bound import BoundTests, collect_bound_tests
from provable.reports.contract_diff import MINOR, Change, diff_contracts


def test_stale_check_fails_when_audit_never_reports_staleness(tmp_path, monkeypatch):
    root = make_project(tmp_path / "p")
    monkeypatch.chdir(root)
    monkeypatch.setattr(audit_module, "stale_reasons", lambda root, record: [])
    with pytest.raises(AssertionError):
        trace.check_stale_evidence(root)


def test_stale_check_fails_when_only_ancestry_is_checked(tmp_path, monkeypatch):
    """The sticky-commit defect's cousin: a check that never looks at the test files."""
    root = make_project(tmp_path / "p")
    monkeypatch.chdir(root)
    real = audit_module.stale_reasons

    def ancestry_only(root, record):
        return [r for r in real(root, record) if "ancestor" in r or "repository" in r]

    monkeypatch.setattr(audit_module, "stale_reasons", ancestry_only)
    with pytest.raises(AssertionError):
        trace.check_stale_evidence(root)


def test_binding_check_fails_when_free_text_binds(tmp_path, monkeypatch):
    """The original tool's gate: a falsifier with a `test:` field counted as tested."""
    root = make_project(tmp_path, BROKEN_CHAIN, BROKEN_TESTS, name="broken-v1", with_git=False)
    monkeypatch.chdir(root)

    def free_text(root_, test_paths=()):
        found = collect_bound_tests(root_, test_paths)
        contracts, _ = audit_module.load_contracts(["contracts"])
        for c in contracts:
            for f in c.falsifiers:
                if f.test:
                    found.bound.setdefault(f"{c.id}:{f.id}", [f"(test: {f.test})"])
        return found

    monkeypatch.setattr(audit_module, "collect_bound_tests", free_text)
    with pytest.raises(AssertionError):
        trace.check_only_the_plugin_binds(root)


def test_binding_check_fails_when_collection_errors_are_dropped(tmp_path, monkeypatch):
    root = make_project(tmp_path, BROKEN_CHAIN, BROKEN_TESTS, name="broken-v1", with_git=False)
    monkeypatch.chdir(root)

    def no_errors(root_, test_paths=()):
        return BoundTests(bound=collect_bound_tests(root_, test_paths).bound, errors={})

    monkeypatch.setattr(audit_module, "collect_bound_tests", no_errors)
    with pytest.raises(AssertionError):
        trace.check_only_the_plugin_binds(root)


def _removal_is_minor(old, new):
    result = diff_contracts(old, new)
    result.changes = [
        dataclasses.replace(c, level=MINOR) if c.kind == "falsifier-removed" else c
        for c in result.changes
    ]
    return result


def _tolerance_blind(old, new):
    result = diff_contracts(old, new)
    result.changes = [c for c in result.changes if not c.kind.startswith("tolerance")]
    return result


@pytest.mark.parametrize("defect", [_removal_is_minor, _tolerance_blind])
def test_semver_check_fails_on_a_lenient_diff(defect):
    with pytest.raises(AssertionError):
        trace.check_semver_rule(defect, examples=40)


def test_semver_check_passes_on_the_real_diff():
    trace.check_semver_rule(contract_diff.diff_contracts, examples=10)
    assert Change  # the public type the defects rewrite


def _passing_scaffold(contract, out):
    result = skeleton.scaffold(contract, out)
    text = result.path.read_text().replace("not_yet_written('", "(lambda *a, **k: None)('")
    result.path.write_text(text)
    return result


def _overwriting_scaffold(contract, out):
    path = skeleton.module_path(contract, out)
    if path.exists():
        path.unlink()
    return skeleton.scaffold(contract, out)


@pytest.mark.parametrize("defect", [_passing_scaffold, _overwriting_scaffold])
def test_scaffold_check_fails_on_a_defective_scaffold(tmp_path, defect):
    with pytest.raises(AssertionError):
        trace.check_scaffold_never_passes(tmp_path, ["FALSIFY-MINI-002"], "r", defect)
