"""Every falsifier of evidence-merge-v1 turns red on a merge with the defect it targets."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import Phase, settings

from falsifiers import test_evidence_merge_v1 as falsifier
from provable.reports import merge as real

#: a defect needs one counterexample, not the smallest one
FIRST_FAILURE = settings(parent=falsifier.EXAMPLES, phases=[Phase.generate])


def first_run_only(roots: list[Path], out: Path) -> real.MergeReport:
    """Takes whichever artifact came first: order-dependent, and no passes combine."""
    return real.merge_runs(roots[:1], out)


def restamping(roots: list[Path], out: Path) -> real.MergeReport:
    """Stamps each merged record with the merge's own time."""
    report = real.merge_runs(roots, out)
    for path in sorted(Path(out).glob("evidence/*/*.json")):
        record = json.loads(path.read_text())
        record["merged_at"] = "2026-11-29T12:00:00+00:00" if "merged_at" not in record else "x"
        path.write_text(json.dumps(record, indent=2) + "\n")
    return report


def passes_win(monkeypatch: pytest.MonkeyPatch):
    """Reads a failed section as a pass: a refutation merged away."""
    verdict = real.section_verdict
    monkeypatch.setattr(
        real, "section_verdict", lambda s: "passed" if verdict(s) == "failed" else verdict(s)
    )
    return real.merge_runs


def test_merge_001_catches_an_order_dependent_merge():
    with pytest.raises(AssertionError, match="order"):
        falsifier.check_order_independent(first_run_only, FIRST_FAILURE)


def test_merge_002_catches_a_merge_that_restamps():
    with pytest.raises(AssertionError, match="itself"):
        falsifier.check_idempotent(restamping, FIRST_FAILURE)


def test_merge_003_catches_a_merge_where_passes_win(monkeypatch):
    with pytest.raises(AssertionError):
        falsifier.check_rules(passes_win(monkeypatch), FIRST_FAILURE)


def test_merge_004_catches_a_merge_that_does_not_combine_hosts(pytester, monkeypatch):
    with pytest.raises(AssertionError, match="merged: PARTIAL"):
        falsifier.check_cpu_and_gpu_runs_discharge(pytester, monkeypatch, first_run_only)
