"""JSON-safe evidence values and the merge rules of evidence files."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from provable.contracts.evidence import json_safe, merge_record, write_evidence


def test_json_safe_scalars_nan_and_arrays():
    values = {
        "np_float": np.float32(0.25),
        "np_int": np.int64(3),
        "torch": torch.tensor(1.5),
        "nan": float("nan"),
        "inf": -np.inf,
        "small": np.arange(3),
        "big": np.zeros((100, 100)),
        "tuple": (1, 2),
        "set": {2, 1},
        "nested": {"x": [np.float16(1)]},
    }
    safe = json_safe(values)
    assert json.loads(json.dumps(safe, allow_nan=False)) == {
        "np_float": 0.25,
        "np_int": 3,
        "torch": 1.5,
        "nan": "nan",
        "inf": "-inf",
        "small": [0, 1, 2],
        "big": {"shape": [100, 100], "dtype": "float64"},
        "tuple": [1, 2],
        "set": [1, 2],
        "nested": {"x": [1.0]},
    }


def section(value, commit, **more):
    return {
        "tests": [{"nodeid": "t", "outcome": "passed"}],
        "recorded": {"t::test_within_earned_bound": {"v": value, **more}},
        "host": {"python": "3"},
        "commit": commit,
        "dirty": False,
        "observed_at": commit,
    }


def record(runs, outcome="passed"):
    return {"schema": "s", "outcome": outcome, "status": "PARTIAL", "runs": runs}


def test_unchanged_section_keeps_its_first_commit(tmp_path):
    first = merge_record(None, record({"cpu": section(1, "c1")}), ["cpu"], False)
    again = merge_record(first, record({"cpu": section(1, "c2")}), ["cpu"], True)
    assert again == first
    path = tmp_path / "e.json"
    assert write_evidence(path, first) is True
    assert write_evidence(path, again) is False  # identical bytes: not rewritten
    changed = merge_record(first, record({"cpu": section(1, "c3", tolerance=1e-3)}), ["cpu"], True)
    assert changed["runs"]["cpu"]["commit"] == "c3"  # the requirement changed: a new claim


@pytest.mark.parametrize(
    ("before", "after"),
    [
        (1, 2),
        (1.25, 1.5),
        ("seed 7 was worst", "seed 42 was worst"),
        ([0, 3, 5], [0, 7, 99, 4]),
        ({"AprFormatError": 30, "ModelFileError": 10}, {"AprFormatError": 40}),
        ([{"format": "apr", "cases": 40}], [{"format": "apr", "cases": 39, "slowest_s": 0.1}]),
    ],
    ids=["int", "float", "str", "list", "counts", "per-format"],
)
def test_a_pass_whose_measurements_move_keeps_its_evidence(before, after):
    """Seeds drawn on another machine, fuzz outcome counts, a worst case: the same pass."""
    kept = {"tolerance": 1e-5, "worst_share_of_bound": 0.3}
    first = merge_record(None, record({"cpu": section(before, "c1", **kept)}), ["cpu"], False)
    moved = {"tolerance": 1e-5, "worst_share_of_bound": 0.9}
    again = merge_record(first, record({"cpu": section(after, "c2", **moved)}), ["cpu"], True)
    assert again["runs"]["cpu"]["commit"] == "c1"
    assert again == first


def test_other_host_sections_are_kept_only_while_their_passes_count():
    cpu = merge_record(None, record({"cpu": section(1, "c1")}), ["cpu"], False)
    both = merge_record(cpu, record({"cuda": section(1, "c2")}), ["cpu", "cuda"], True)
    assert set(both["runs"]) == {"cpu", "cuda"} and both["passed_on"] == ["cpu", "cuda"]
    failed = merge_record(both, record({"cpu": section(1, "c3")}, "failed"), [], False)
    assert set(failed["runs"]) == {"cpu"} and failed["passed_on"] == []


def test_a_requirement_deep_inside_a_recording_still_counts():
    """A case limit loosened inside a per-format list is a change of the claim."""
    limit = [{"format": "apr", "case_limit_s": 2.0}]
    first = merge_record(None, record({"cpu": section(limit, "c1")}), ["cpu"], False)
    looser = [{"format": "apr", "case_limit_s": 20.0}]
    again = merge_record(first, record({"cpu": section(looser, "c2")}), ["cpu"], True)
    assert again["runs"]["cpu"]["commit"] == "c2"
