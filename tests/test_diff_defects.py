"""Every model-diff falsifier turns red when the diff loses the detector it relies on."""

from __future__ import annotations

import dataclasses

import pytest

from aprlib.compare import (
    classify,
    configs,
    consistency,
    diagnosis,
    mislabel,
    pairscan,
    quantnoise,
    report,
)
from aprlib.compare import diff as diff_module
from falsifiers import test_model_diff_v1 as falsifier

#: the defect: (module whose name is replaced, the name as that module calls it, the blind version)
DEFECTS = {
    "TRANSPOSED": (classify, "_transposed", lambda *a, **k: False),
    "DTYPE_MISLABEL": (classify, "find_mislabel", lambda *a, **k: None),
    "SCALED": (classify, "_affine", lambda *a, **k: None),
    "SHIFTED": (classify, "_affine", lambda *a, **k: None),
    "PERMUTED": (classify, "_permutation", lambda *a, **k: ""),
    # the rounding bound: never met (blind to noise) or always met (anything is noise)
    "QUANT_NOISE/bf16": (quantnoise, "worst_share", lambda *a, **k: float("inf")),
    "QUANT_NOISE/q8_0": (quantnoise, "worst_share", lambda *a, **k: float("inf")),
    # anything is noise: every pair has a lower side, and every bound is met
    "VALUE_DRIFT": (classify, "lower_side", lambda ta, tb: tb),
    "MISSING": (diff_module, "pair_names", lambda a, b: sorted(set(a.tensors) & set(b.tensors))),
    "EXTRA": (diff_module, "pair_names", lambda a, b: sorted(set(a.tensors) & set(b.tensors))),
    "SHAPE_MISMATCH": (
        diff_module,
        "classify",
        lambda ta, tb, *args: report.Pair(
            ta.name, "VALUE_DRIFT" if ta.shape != tb.shape else "IDENTICAL", None, None
        ),
    ),
    "CONFIG_MISMATCH": (diff_module, "compare_configs", lambda a, b: []),
}


@pytest.mark.parametrize("defect", list(DEFECTS))
def test_each_diff_falsifier_catches_a_blind_detector(tiny_qwen2, tmp_path, monkeypatch, defect):
    owner, name, broken = DEFECTS[defect]
    fmt = falsifier.DEFECTS[defect].formats[-1]
    falsifier.check_defect(
        tiny_qwen2.safetensors, falsifier.DEFECTS[defect], fmt, tmp_path / "real"
    )
    monkeypatch.setattr(owner, name, broken)
    if name == "lower_side":
        monkeypatch.setattr(quantnoise, "has_bound", lambda low: True)
        monkeypatch.setattr(quantnoise, "worst_share", lambda *a, **k: 0.0)
    with pytest.raises(AssertionError):
        falsifier.check_defect(
            tiny_qwen2.safetensors, falsifier.DEFECTS[defect], fmt, tmp_path / "broken"
        )


def test_no_false_alarm_falsifier_catches_a_diff_that_never_sees_equality(
    tiny_qwen2, tmp_path, monkeypatch
):
    real = pairscan.scan
    monkeypatch.setattr(pairscan, "bytes_equal", lambda a, b: False)
    monkeypatch.setattr(pairscan, "scan", lambda a, b, low: {**real(a, b, low), "_equal": False})
    with pytest.raises(AssertionError):
        falsifier.check_no_false_alarm(falsifier.lossless_paths(tiny_qwen2, tmp_path))


def test_mixed_falsifier_catches_a_diagnosis_that_keeps_only_the_first_class(
    tiny_qwen2, tmp_path, monkeypatch
):
    real = diff_module.diagnose

    def first_only(*args):
        found = real(*args)
        return {**found, "line": found["line"].split("; also")[0], "also": []}

    falsifier.check_mixed(tiny_qwen2.safetensors, "apr", tmp_path / "real")
    monkeypatch.setattr(diff_module, "diagnose", first_only)
    with pytest.raises(AssertionError):
        falsifier.check_mixed(tiny_qwen2.safetensors, "apr", tmp_path / "broken")


def _no_nonfinite(real):
    def stats(a, b, low):
        return {**real(a, b, low), "_first_bad": None}

    return stats


ISSUE10_DEFECTS = {
    "swap blind": (
        lambda mp: mp.setattr(diff_module.swaps, "find_moves", lambda a, b: {}),
        lambda src, work, capsys: falsifier.check_swap(src, "layers", "apr", work),
    ),
    "swap misdescribed": (
        lambda mp: mp.setattr(
            diff_module.swaps,
            "describe",
            lambda moves, sizes: [" <-> ".join(sorted(moves.items())[0])],
        ),
        lambda src, work, capsys: falsifier.check_swap(src, "q_k", "apr", work),
    ),
    "nan blind": (
        lambda mp: mp.setattr(pairscan, "scan", _no_nonfinite(pairscan.scan)),
        lambda src, work, capsys: falsifier.check_nonfinite(src, float("nan"), "apr", work),
    ),
    "inf blind": (
        lambda mp: mp.setattr(pairscan, "scan", _no_nonfinite(pairscan.scan)),
        lambda src, work, capsys: falsifier.check_nonfinite(src, float("inf"), "gguf", work),
    ),
    "nan ranked by count": (
        lambda mp: mp.setattr(diagnosis, "TIER", {}),
        lambda src, work, capsys: falsifier.check_nonfinite(src, float("nan"), "apr", work),
    ),
    "mislabel ranked by count": (
        lambda mp: mp.setattr(diagnosis, "TIER", {}),
        lambda src, work, capsys: falsifier.check_mislabel_outranks_noise(src, "gguf", work),
    ),
    "contradiction blind": (
        lambda mp: mp.setattr(consistency, "contradictions", lambda m: iter(())),
        lambda src, work, capsys: falsifier.check_contradiction(src, "apr", work),
    ),
    "tokenizer blind": (
        lambda mp: mp.setattr(diff_module, "compare_tokenizers", lambda a, b: []),
        lambda src, work, capsys: falsifier.check_tokenizer_mismatch(src, "gguf", work),
    ),
    "expect passes anything": (
        lambda mp: mp.setattr(
            report.DiffReport, "passes", lambda self, expect_quantized=False: True
        ),
        lambda src, work, capsys: falsifier.check_expect_quantized(src, work, capsys),
    ),
    "expect never passes": (
        lambda mp: mp.setattr(
            report.DiffReport,
            "passes",
            lambda self, expect_quantized=False: all(p.tag in report.CLEAN for p in self.pairs),
        ),
        lambda src, work, capsys: falsifier.check_expect_quantized(src, work, capsys),
    ),
}


@pytest.mark.parametrize("defect", list(ISSUE10_DEFECTS))
def test_issue10_diff_falsifiers_catch_their_defect(
    tiny_qwen2, tmp_path, monkeypatch, capsys, defect
):
    inject, check = ISSUE10_DEFECTS[defect]
    check(tiny_qwen2.safetensors, tmp_path / "real", capsys)
    inject(monkeypatch)
    with pytest.raises(AssertionError):
        check(tiny_qwen2.safetensors, tmp_path / "broken", capsys)


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_guilty_side_falsifier_catches_a_diff_that_always_blames_a(
    tiny_factory, tmp_path, monkeypatch, dtype
):
    tiny = tiny_factory("qwen2", dtype=dtype)
    falsifier.check_guilty_side(tiny, "B", "apr", tmp_path / "real")
    monkeypatch.setattr(mislabel, "guilty", lambda t, found, counts: (found[0], True))
    with pytest.raises(AssertionError):
        falsifier.check_guilty_side(tiny, "B", "apr", tmp_path / "broken")


def test_guilty_side_falsifier_catches_a_diff_that_guesses_per_tensor(
    tiny_factory, tmp_path, monkeypatch
):
    """Without the file-level settling, a wholly retagged F16 file (tagged BF16) gets its
    norms, plausible under either tag, blamed on whichever side comes first. (BF16 bytes
    read as F16 are implausible even for norms, so only this direction needs the file.)"""
    tiny = tiny_factory("qwen2", dtype="float16")
    falsifier.check_guilty_side(tiny, "B", "apr", tmp_path / "real", whole_file=True)
    monkeypatch.setattr(diff_module, "settle_sides", lambda pairs: None)
    # the configs' torch_dtype decides a norm on its own now: silence it, so the norms
    # rest on the file's 2-D weights again
    monkeypatch.setattr(consistency, "config_dtype", lambda model: None)
    with pytest.raises(AssertionError):
        falsifier.check_guilty_side(tiny, "B", "apr", tmp_path / "broken", whole_file=True)


@pytest.mark.parametrize("change", list(falsifier.CONFIG_MEANINGS))
def test_config_meaning_falsifier_catches_a_diff_blind_to_the_field(
    tiny_qwen2, tmp_path, monkeypatch, change
):
    falsifier.check_config_meaning(tiny_qwen2.safetensors, change, "gguf", tmp_path / "real")
    fields = tuple(f for f in configs.CONFIG_FIELDS if f != change)
    monkeypatch.setattr(configs, "CONFIG_FIELDS", fields)
    with pytest.raises(AssertionError):
        falsifier.check_config_meaning(tiny_qwen2.safetensors, change, "gguf", tmp_path / "broken")


def test_config_meaning_fills_in_defaults_before_comparing():
    from aprlib.config.modelconfig import qwen2_0_5b

    base = qwen2_0_5b()
    same = [
        dataclasses.replace(base, attention_bias=True),  # qwen2's default, said out loud
        dataclasses.replace(base, rope_scaling={"rope_type": "default"}),
        dataclasses.replace(base, hidden_act="swish"),  # transformers' alias of silu
    ]
    for other in same:
        assert all(
            configs.same_meaning(configs.config_meaning(base, f), configs.config_meaning(other, f))
            for f in configs.CONFIG_FIELDS
        ), other
    llama_defaults = dataclasses.replace(base, architecture="llama")
    assert not configs.same_meaning(
        configs.config_meaning(base, "attention_bias"),
        configs.config_meaning(llama_defaults, "attention_bias"),
    )
