"""Every falsifier of provable's own contracts turns red on an injected defect of its class.

A falsifier that cannot fail proves nothing; each test here hands the falsifier's check a
defective implementation and requires the check to fail.
"""

from __future__ import annotations

import io
import os

import pytest
import yaml

from falsifiers import test_contract_lifecycle_v1 as lifecycle
from falsifiers import test_contract_validation_v1 as validation
from falsifiers import test_status_rewrite_v1 as rewrite
from provable.contracts import lifecycle as real
from provable.contracts.findings import ERROR, Finding
from provable.contracts.lifecycle import ContractStatus, FalsifierStatus, Outcome, Promotion
from provable.contracts.validate import Report, validate_paths

# --- contract-lifecycle-v1 ---------------------------------------------------------------


def promote_skip_promotes(status, outcome, passed_on=(), required=("cpu",), before=()):
    if outcome is Outcome.SKIPPED and status is FalsifierStatus.PARTIAL:
        return Promotion(FalsifierStatus.DISCHARGED, frozenset(before))
    return real.promote(status, outcome, passed_on, required, before)


def promote_sticky_discharge(status, outcome, passed_on=(), required=("cpu",), before=()):
    if outcome is Outcome.FAILED and status is FalsifierStatus.DISCHARGED:
        return Promotion(status, frozenset(before))  # "it was proven once"
    return real.promote(status, outcome, passed_on, required, before)


def derive_majority(statuses, current=None):
    statuses = list(statuses)
    if statuses and statuses.count(FalsifierStatus.DISCHARGED) > len(statuses) / 2:
        return ContractStatus.DISCHARGED
    return real.derive_contract_status(statuses, current)


def promote_any_host(status, outcome, passed_on=(), required=("cpu",), before=()):
    return real.promote(status, outcome, passed_on, passed_on or required, before)


def changelog_without_bump(version, transitions, *args, **kwargs):
    entry = real.changelog_entry(version, transitions, *args, **kwargs)
    if entry is None:
        return None
    return version, {**entry[1], "version": version}


@pytest.mark.parametrize(
    ("check", "defect"),
    [
        (lifecycle.check_skip_never_changes, promote_skip_promotes),
        (lifecycle.check_failure_refutes, promote_sticky_discharge),
        (lifecycle.check_derivation, derive_majority),
        (lifecycle.check_host_gating, promote_any_host),
        (lifecycle.check_changelog, changelog_without_bump),
    ],
    ids=["LIFECYCLE-001", "LIFECYCLE-002", "LIFECYCLE-003", "LIFECYCLE-004", "LIFECYCLE-005"],
)
def test_lifecycle_falsifiers_catch_their_defect(check, defect):
    check()  # the real implementation passes ...
    with pytest.raises(AssertionError):
        check(defect)  # ... and the defective one is refuted


def classify_every_failure_refutes(when, raised, environment=frozenset()):
    """The incident of 2026-12-05: any failed phase, an ImportError included, refutes."""
    from provable import TestVerdict

    return TestVerdict.REFUTED


def rerun_ignored(first, second, second_raised):
    """No confirming re-run: a failure that passes when re-run still refutes."""
    from provable import TestVerdict

    return TestVerdict.REFUTED


def promote_not_checked_refutes(status, outcome, passed_on=(), required=("cpu",), before=()):
    """An error counted as a counterexample."""
    if outcome in (Outcome.NOT_CHECKED, Outcome.FLAKY):
        return Promotion(FalsifierStatus.FALSIFIED, frozenset())
    return real.promote(status, outcome, passed_on, required, before)


@pytest.mark.parametrize(
    "defect",
    [
        {"classify": classify_every_failure_refutes},
        {"rerun": rerun_ignored},
        {"promote_fn": promote_not_checked_refutes},
    ],
    ids=["every-failure-refutes", "no-rerun", "not-checked-refutes"],
)
def test_lifecycle_008_catches_an_error_counted_as_a_refutation(defect):
    lifecycle.check_only_counterexamples_refute()
    with pytest.raises(AssertionError):
        lifecycle.check_only_counterexamples_refute(**defect)


# --- contract-validation-v1 --------------------------------------------------------------


def test_validate_001_catches_a_validator_that_rejects_the_dialect():
    if not validation.SHARED.is_dir():
        pytest.skip("../shared/compat/provable-contracts is absent (a user's clone)")
    validation.check_public_dialect()
    with pytest.raises(AssertionError):
        validation.check_public_dialect(lambda paths: validate_paths(paths, strict=True))


def test_validate_002_catches_a_validator_blind_to_status_drift():
    def blind(paths):
        report = validate_paths(paths)
        report.findings = [f for f in report.findings if f.rule != "status-derived"]
        return report

    with pytest.raises(AssertionError):
        validation.check_status_drift(blind)


def test_validate_003_catches_a_validator_that_lets_parse_errors_escape():
    def naive(paths):
        report = Report(files=len(paths))
        for path in paths:
            data = yaml.safe_load(io.BytesIO(path.read_bytes()))
            if not isinstance(data, dict):
                report.findings.append(Finding(str(path), 1, ERROR, "top-level", "not a map"))
        return report

    with pytest.raises(Exception):  # noqa: B017 - any escaping exception is the defect
        validation.check_hostile_bytes(naive)


# --- status-rewrite-v1 -------------------------------------------------------------------


def test_rewrite_001_catches_a_plain_round_trip_dump():
    from ruamel.yaml import YAML

    def plain_dump(text, mutate):
        y = YAML()
        doc = y.load(text)
        mutate(doc)
        out = io.StringIO()
        y.dump(doc, out)
        return out.getvalue()

    files = rewrite.corpus()
    rewrite.check_rewrite_preserves(files=files)
    with pytest.raises(AssertionError):
        rewrite.check_rewrite_preserves(plain_dump, files=files)


def test_rewrite_002_catches_a_write_in_place(tmp_path):
    def in_place(path, text):
        with open(path, "w") as fh:
            fh.write(text[: len(text) // 2])
            fh.flush()
            os.fsync(fh.fileno())
            fh.write(text[len(text) // 2 :])

    with pytest.raises(AssertionError):
        rewrite.check_atomic(in_place, tmp_path)


def test_rewrite_003_catches_evidence_that_restamps_every_run(pytester, monkeypatch):
    monkeypatch.setattr("provable.contracts.evidence.merge_record", rewrite.forgetful_merge)
    with pytest.raises(AssertionError, match="a repeat run rewrote"):
        rewrite.check_idempotent(pytester)


# --- issue 9 falsifiers --------------------------------------------------------------------


def test_lifecycle_006_catches_an_aggregate_that_trusts_a_partial_run():
    from provable.plugin.plan import aggregate

    def forgetful(run, known=None, scope=None):  # the old rule: only what was collected
        return aggregate(run)

    with pytest.raises(AssertionError):
        lifecycle.check_partial_run_never_promotes(forgetful)


def test_lifecycle_007_catches_a_planner_blind_to_concurrent_refutations(tmp_path):
    from provable.plugin.plan import plan_contract

    def last_writer_wins(contract, text, runs, previous, started, *args):
        now = {f.id: f.status for f in contract.falsifiers}  # "started" = what is on disk
        return plan_contract(contract, text, runs, previous, now, *args)

    with pytest.raises(AssertionError):
        lifecycle.check_concurrent_refutation_kept(last_writer_wins, tmp=tmp_path)


def test_rewrite_004_catches_a_write_phase_without_a_journal(tmp_path, capsys):
    from pathlib import Path

    from provable.contracts.atomic import write_atomic

    def one_file_at_a_time(folder, evidence, contracts):  # the old order: each file alone
        for path, text in [*contracts, *evidence]:
            write_atomic(Path(path), text)

    with pytest.raises(AssertionError, match="killed at"):
        rewrite.check_kill_leaves_valid_contracts(tmp_path, one_file_at_a_time)
    capsys.readouterr()
