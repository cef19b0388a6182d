"""Every model-diff falsifier turns red when the diff loses the detector it relies on."""

from __future__ import annotations

import pytest

from aprlib import diff as diff_module
from falsifiers import test_model_diff_v1 as falsifier

DEFECTS = {
    "TRANSPOSED": ("_transposed", lambda *a, **k: False),
    "DTYPE_MISLABEL": ("_mislabel", lambda *a, **k: ""),
    "SCALED": ("_affine", lambda *a, **k: None),
    "SHIFTED": ("_affine", lambda *a, **k: None),
    "PERMUTED": ("_permutation", lambda *a, **k: ""),
    "QUANT_NOISE/bf16": ("_quant_noise", lambda *a, **k: ""),
    "QUANT_NOISE/q8_0": ("_quant_noise", lambda *a, **k: ""),
    "VALUE_DRIFT": ("_quant_noise", lambda *a, **k: "anything is noise"),
    "MISSING": ("_pair_names", lambda a, b: sorted(set(a.tensors) & set(b.tensors))),
    "EXTRA": ("_pair_names", lambda a, b: sorted(set(a.tensors) & set(b.tensors))),
    "SHAPE_MISMATCH": (
        "classify",
        lambda ta, tb, tol, heads=(): diff_module.Pair(
            ta.name, "VALUE_DRIFT" if ta.shape != tb.shape else "IDENTICAL", None, None
        ),
    ),
    "CONFIG_MISMATCH": ("compare_configs", lambda a, b: []),
}


@pytest.mark.parametrize("defect", list(DEFECTS))
def test_each_diff_falsifier_catches_a_blind_detector(tiny_qwen2, tmp_path, monkeypatch, defect):
    name, broken = DEFECTS[defect]
    fmt = falsifier.DEFECTS[defect].formats[-1]
    falsifier.check_defect(
        tiny_qwen2.safetensors, falsifier.DEFECTS[defect], fmt, tmp_path / "real"
    )
    monkeypatch.setattr(diff_module, name, broken)
    with pytest.raises(AssertionError):
        falsifier.check_defect(
            tiny_qwen2.safetensors, falsifier.DEFECTS[defect], fmt, tmp_path / "broken"
        )


def test_no_false_alarm_falsifier_catches_a_diff_that_never_sees_equality(
    tiny_qwen2, tmp_path, monkeypatch
):
    real = diff_module._stats
    monkeypatch.setattr(diff_module, "_bytes_equal", lambda a, b: False)
    monkeypatch.setattr(diff_module, "_stats", lambda a, b: {**real(a, b), "_equal": False})
    with pytest.raises(AssertionError):
        falsifier.check_no_false_alarm(falsifier.lossless_paths(tiny_qwen2, tmp_path))


def test_mixed_falsifier_catches_a_diagnosis_that_keeps_only_the_first_class(
    tiny_qwen2, tmp_path, monkeypatch
):
    real = diff_module.diagnose

    def first_only(pairs, config):
        found = real(pairs, config)
        return {**found, "line": found["line"].split("; also")[0], "also": []}

    falsifier.check_mixed(tiny_qwen2.safetensors, "apr", tmp_path / "real")
    monkeypatch.setattr(diff_module, "diagnose", first_only)
    with pytest.raises(AssertionError):
        falsifier.check_mixed(tiny_qwen2.safetensors, "apr", tmp_path / "broken")
