"""Unit tests of the lifecycle helpers (the properties are falsifiers of contract-lifecycle-v1)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from provable.contracts.lifecycle import (
    ContractStatus,
    FalsifierStatus,
    Outcome,
    Transition,
    bump_minor,
    changelog_entry,
    is_semver,
    promote,
    semver_key,
)


@pytest.mark.parametrize(
    ("lower", "higher"),
    [
        ("1.0.0", "1.0.1"),
        ("1.9.0", "1.10.0"),
        ("1.0.0-rc.1", "1.0.0"),
        ("1.0.0-alpha", "1.0.0-alpha.1"),
        ("1.0.0-2", "1.0.0-10"),
        ("1.0.0-9", "1.0.0-a"),
    ],
)
def test_semver_precedence(lower, higher):
    assert semver_key(lower) < semver_key(higher)


@pytest.mark.parametrize("bad", ["1.0", "01.0.0", "1.0.0.0", "v1.0.0", "", "1.0.0-"])
def test_not_semver(bad):
    assert not is_semver(bad)
    with pytest.raises(ValueError):
        bump_minor(bad)


@given(st.integers(0, 99), st.integers(0, 99), st.integers(0, 99))
def test_bump_minor_resets_patch(major, minor, patch):
    assert bump_minor(f"{major}.{minor}.{patch}") == f"{major}.{minor + 1}.0"


def test_changelog_entry_names_commit_dirty_and_contract_change():
    version, entry = changelog_entry(
        "1.2.3",
        [
            Transition("FALSIFY-B-002", FalsifierStatus.PARTIAL, FalsifierStatus.DISCHARGED),
            Transition("FALSIFY-A-001", FalsifierStatus.PROPOSED, FalsifierStatus.PROPOSED),
        ],
        "2026-11-22",
        "0123456789abcdef0123",
        True,
        ContractStatus.PARTIAL_ALGORITHM_LEVEL,
        ContractStatus.DISCHARGED,
    )
    assert version == "1.3.0"
    assert entry == {
        "version": "1.3.0",
        "date": "2026-11-22",
        "change": "FALSIFY-B-002 PARTIAL -> DISCHARGED; contract PARTIAL_ALGORITHM_LEVEL -> "
        "DISCHARGED (commit 0123456789ab, dirty tree)",
    }


def test_a_contract_status_change_alone_is_logged():
    entry = changelog_entry("1.0.0", [], "d", None, False, None, ContractStatus.PROPOSED)
    assert entry is not None and "(no commit)" in entry[1]["change"]


def test_passes_accumulate_then_a_failure_resets():
    both = {"cpu", "cuda"}
    step = promote(FalsifierStatus.PROPOSED, Outcome.PASSED, {"cpu"}, both)
    assert step.status is FalsifierStatus.PARTIAL and step.passed_on == {"cpu"}
    step = promote(step.status, Outcome.PASSED, {"cuda"}, both, step.passed_on)
    assert step.status is FalsifierStatus.DISCHARGED
    step = promote(step.status, Outcome.FAILED, {"cpu"}, both, step.passed_on)
    assert step == promote(FalsifierStatus.DISCHARGED, Outcome.FAILED)
    step = promote(step.status, Outcome.PASSED, {"cuda"}, both, {"cpu"})
    assert step.status is FalsifierStatus.PARTIAL  # passes from before the failure are void
