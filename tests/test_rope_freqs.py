"""rope_freqs.weight: llama.cpp's llama3 divisors, computed, checked, recovered, hostile.

Oracles: llama.cpp's converter's own ``generate_extra_tensors`` (the divisors),
transformers' llama3 formula as our reference forward implements it (the frequencies), and
the ``gguf`` package (files written with a tensor replaced).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from gguf import GGMLQuantizationType, GGUFReader, GGUFWriter
from hypothesis import given, settings
from hypothesis import strategies as st

import aprlib.formats.gguf as gguf_format
from aprlib import GgufFormatError, convert, open_model
from aprlib.cli.main import main as apr
from aprlib.config.modelconfig import llama3_2_1b
from aprlib.config.rope_freqs import (
    ROPE_FREQS,
    RopeFreqsError,
    allowed_ulps,
    base_freqs,
    llama3_rope_factors,
    recover_llama3,
    ulp_distance,
)
from falsifiers import test_llama3_rope_freqs as rope_falsifiers
from falsifiers.llama3_rope import LLAMA3_ROPE, build_llama3_tiny, hf_rope_scaling


def _scaling(factor: float, low: float, high: float, context: int) -> dict:
    return {
        "rope_type": "llama3",
        "factor": factor,
        "low_freq_factor": low,
        "high_freq_factor": high,
        "original_max_position_embeddings": context,
    }


def test_divisors_match_llama_cpps_converter_code():
    """The converter's own code over thetas, head sizes and scalings (ramps of 0 to many
    points, tiny and Llama-3 contexts): within the allowance, and well inside it."""
    from falsifiers.llamacpp_converter import llama3_rope_factors_by_converter

    cases = [
        (theta, dim, _scaling(*s))
        for theta in (10000.0, 5e5, 1e6)
        for dim in (8, 16, 32, 64, 80, 96, 128, 256)
        for s in (
            (32.0, 1.0, 4.0, 8192),
            (8.0, 1.0, 4.0, 8192),
            (16.0, 0.5, 3.0, 16),
            (4.0, 1.0, 2.0, 64),
        )
    ]
    theirs = llama3_rope_factors_by_converter(cases)
    worst = 0.0
    for (theta, dim, scaling), t in zip(cases, theirs, strict=True):
        got = np.array(t, dtype=np.float32)
        ours = llama3_rope_factors(theta, dim, scaling)
        assert ours.dtype == np.float32 and ours.shape == got.shape == (dim // 2,)
        used = ulp_distance(got, ours) / allowed_ulps(theta, dim, scaling)
        worst = max(worst, float(used.max()))
    assert worst <= 0.5, f"the converter's divisors use {worst:.2f} of the allowance"


@pytest.mark.parametrize("context", [8, 32, 8192])
def test_reference_forward_rotates_by_base_frequency_over_the_divisors(context):
    """Our reference forward's llama3 frequencies (transformers' formula, float64) are
    llama.cpp's ``freq / divisor`` to float32 precision: both stacks rotate alike."""
    from aprlib.config.modelconfig import ModelConfig
    from aprlib.forward.model import rope_inv_freq

    base = llama3_2_1b()
    scaling = {**dict(base.rope_scaling or {}), "original_max_position_embeddings": context}
    cfg = ModelConfig(**{**base.to_dict(), "rope_scaling": scaling})
    ours = rope_inv_freq(cfg).numpy()
    head_dim = cfg.attention_head_dim
    theirs = base_freqs(cfg.rope_theta, head_dim) / llama3_rope_factors(
        cfg.rope_theta, head_dim, scaling
    )
    np.testing.assert_allclose(theirs, ours, rtol=2e-6)
    assert (llama3_rope_factors(cfg.rope_theta, head_dim, scaling) > 1).sum() >= 8


def test_llama_3_2_1b_scaling_is_recovered_exactly():
    cfg = llama3_2_1b()
    values = llama3_rope_factors(cfg.rope_theta, cfg.attention_head_dim, cfg.rope_scaling or {})
    assert recover_llama3(values, cfg.rope_theta, cfg.attention_head_dim) == cfg.rope_scaling


@settings(max_examples=60, deadline=None)
@given(
    theta=st.sampled_from([10000.0, 5e5, 1e6]),
    head_dim=st.sampled_from([16, 32, 64, 96, 128, 256]),
    factor=st.sampled_from([2.0, 8.0, 32.0, 64.0]),
    low=st.sampled_from([0.5, 1.0, 2.0]),
    span=st.sampled_from([0.5, 1.0, 3.0, 7.0]),
)
def test_recovery_regenerates_the_divisors_or_says_why(theta, head_dim, factor, low, span):
    scaling = _scaling(factor, low, low + span, 8192)
    values = llama3_rope_factors(theta, head_dim, scaling)
    ramp = int(((values != 1) & (values != np.float32(factor))).sum())
    try:
        got = recover_llama3(values, theta, head_dim)
    except RopeFreqsError as exc:
        assert ramp < 2 and "cannot be recovered" in str(exc), (ramp, str(exc))
        return
    again = llama3_rope_factors(theta, head_dim, got)
    assert (ulp_distance(again, values) <= allowed_ulps(theta, head_dim, got)).all()
    if ramp >= 2:  # the ramp decides both factors once the context is the default
        assert got == scaling, (got, scaling)


def test_divisors_no_llama3_scaling_makes_are_not_recovered():
    values = np.linspace(1, 32, 32, dtype=np.float32)[::-1].copy()
    with pytest.raises(RopeFreqsError, match="cannot be recovered"):
        recover_llama3(values, 5e5, 64)


# --- files: our GGUF of a llama3-scaled Llama, rewritten with the gguf package ------------


@pytest.fixture(scope="module")
def llama3_gguf(tmp_path_factory) -> Path:
    work = tmp_path_factory.mktemp("llama3")
    tiny = build_llama3_tiny(work / "tiny")
    convert(tiny.safetensors, work / "ours.gguf")
    return work / "ours.gguf"


def rewrite(src: Path, dst: Path, rope_freqs: np.ndarray | None, drop: set[str] = frozenset()):
    """``src`` with ``rope_freqs.weight`` replaced (None: left out) and keys dropped."""
    r = GGUFReader(src)
    w = GGUFWriter(str(dst), str(r.fields["general.architecture"].contents()))
    for key, f in r.fields.items():
        if key.startswith("GGUF.") or key == "general.architecture" or key in drop:
            continue
        w.add_key_value(
            key, f.contents(), f.types[0], sub_type=f.types[-1] if len(f.types) > 1 else None
        )
    for t in r.tensors:
        if t.name != ROPE_FREQS:
            w.add_tensor(t.name, t.data, raw_shape=t.data.shape, raw_dtype=t.tensor_type)
        elif rope_freqs is not None:
            kind = {np.float32: GGMLQuantizationType.F32, np.float16: GGMLQuantizationType.F16}
            w.add_tensor(t.name, rope_freqs, raw_dtype=kind[rope_freqs.dtype.type])
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return dst


def _divisors(path: Path) -> np.ndarray:
    return next(t.data for t in GGUFReader(path).tensors if t.name == ROPE_FREQS).copy()


def test_our_gguf_carries_the_divisors_first_and_reads_back_checked(llama3_gguf):
    names = [t.name for t in GGUFReader(llama3_gguf).tensors]
    assert names[0] == ROPE_FREQS, names[:3]
    want = llama3_rope_factors(5e5, 64, LLAMA3_ROPE)
    np.testing.assert_array_equal(_divisors(llama3_gguf), want)
    with open_model(llama3_gguf) as m:
        assert m.config.rope_scaling == hf_rope_scaling()
        assert ROPE_FREQS not in m.tensors
        assert m.metadata["aprlib.rope_freqs"].startswith("checked")


def test_divisors_alone_give_the_scaling_back(llama3_gguf, tmp_path):
    lean = rewrite(
        llama3_gguf, tmp_path / "lean.gguf", _divisors(llama3_gguf), {"aprlib.rope_scaling"}
    )
    with open_model(lean) as m:
        assert m.config.rope_scaling == hf_rope_scaling()
        assert m.metadata["aprlib.rope_freqs"].startswith("llama3 rope_scaling recovered")


def _wrong_length(v):
    return v[:16].copy()


def _half(v):
    return v.astype(np.float16)


def _nan(v):
    out = v.copy()
    out[3] = np.nan
    return out


def _zero(v):
    out = v.copy()
    out[30] = 0
    return out


def _other_factor(v):
    return llama3_rope_factors(5e5, 64, {**LLAMA3_ROPE, "factor": 8.0})


@pytest.mark.parametrize(
    ("damage", "field", "said"),
    [
        (_wrong_length, "ne", "head_dim 64 needs [32]"),
        (_half, "type", "F16"),
        (_nan, "data", "divisor [3] is nan"),
        (_zero, "data", "divisor [30] is 0.0"),
        (_other_factor, "aprlib.rope_scaling", "disagrees with rope_scaling"),
    ],
    ids=["length", "dtype", "nan", "zero", "wrong-factor"],
)
def test_hostile_divisors_are_one_typed_line(llama3_gguf, tmp_path, capsys, damage, field, said):
    bad = rewrite(llama3_gguf, tmp_path / "bad.gguf", damage(_divisors(llama3_gguf)))
    with pytest.raises(GgufFormatError) as info:
        open_model(bad)
    assert info.value.tensor == ROPE_FREQS and info.value.field == field, str(info.value)
    assert said in str(info.value), str(info.value)
    capsys.readouterr()
    assert apr(["inspect", str(bad)]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and ROPE_FREQS in err and "Traceback" not in err, err


def test_a_llama3_gguf_without_divisors_says_llama_cpp_will_not_scale(llama3_gguf, tmp_path):
    old = rewrite(llama3_gguf, tmp_path / "old.gguf", None)  # as our writer wrote before
    with open_model(old) as m:
        assert m.config.rope_scaling == hf_rope_scaling()
        assert m.metadata["aprlib.rope_freqs"].startswith("missing: llama.cpp runs this file")


@pytest.mark.parametrize("tensor", [True, False], ids=["with-divisors", "without"])
def test_a_stated_scaling_that_is_not_numbers_is_one_typed_line(llama3_gguf, tmp_path, tensor):
    import json

    src = llama3_gguf if tensor else rewrite(llama3_gguf, tmp_path / "old.gguf", None)
    r = GGUFReader(src)
    w = GGUFWriter(str(tmp_path / "bad.gguf"), "llama")
    for key, f in r.fields.items():
        if key.startswith("GGUF.") or key == "general.architecture":
            continue
        value = f.contents()
        if key == "aprlib.rope_scaling":
            value = json.dumps({**json.loads(value), "factor": "x"})
        w.add_key_value(key, value, f.types[0], sub_type=f.types[-1] if len(f.types) > 1 else None)
    for t in r.tensors:
        w.add_tensor(t.name, t.data, raw_shape=t.data.shape, raw_dtype=t.tensor_type)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    with pytest.raises(GgufFormatError, match=r"rope_scaling\.factor is 'x': must be") as info:
        open_model(tmp_path / "bad.gguf")
    assert info.value.field == "aprlib.rope_scaling"


def test_divisors_no_scaling_makes_fail_recovery_naming_what(llama3_gguf, tmp_path):
    noise = np.random.default_rng(0).uniform(1, 32, 32).astype(np.float32)
    bad = rewrite(llama3_gguf, tmp_path / "bad.gguf", noise, {"aprlib.rope_scaling"})
    with pytest.raises(
        GgufFormatError, match="low_freq_factor/high_freq_factor cannot be recovered"
    ):
        open_model(bad)


def test_a_qwen2_with_llama3_scaling_gets_no_divisors_and_a_note(tmp_path):
    """llama.cpp's qwen2 graph loads no rope_freqs (and refuses a file with a tensor it
    does not load): none is written, and the conversion says llama.cpp will not scale."""
    from conftest import build_tiny

    rope = {**LLAMA3_ROPE}
    tiny = build_tiny(tmp_path / "q", "qwen2", rope_theta=5e5, rope_parameters=rope)
    report = convert(tiny.safetensors, tmp_path / "q.gguf")
    assert ROPE_FREQS not in [t.name for t in GGUFReader(tmp_path / "q.gguf").tensors]
    assert any("no llama3 rope scaling" in n for n in report.notes), report.notes
    with open_model(tmp_path / "q.gguf") as m:
        assert m.config.rope_scaling == hf_rope_scaling()


# --- the falsifiers turn red on the defects they are there for ----------------------------


@pytest.mark.parametrize("context", [8192, 16])
@pytest.mark.parametrize("defect", ["omitted", "wrong-factor"])
def test_llamacpp_004_catches_a_writer_without_the_right_divisors(
    tmp_path, monkeypatch, defect, context
):
    rope_falsifiers.check_llama3_rope_parity(tmp_path / "good", context)
    if defect == "omitted":
        monkeypatch.setattr(gguf_format, "rope_freqs_tensor", lambda cfg: None)
    else:
        monkeypatch.setattr(
            gguf_format,
            "llama3_rope_factors",
            lambda theta, dim, s: llama3_rope_factors(theta, dim, {**s, "factor": 8.0}),
        )
    with pytest.raises(AssertionError, match="llama3 rope: failed"):
        rope_falsifiers.check_llama3_rope_parity(tmp_path / "bad", context)


def test_ggufreal_005_catches_a_reader_that_ignores_the_divisors(tmp_path, monkeypatch):
    rope_falsifiers.check_llama3_rope_freqs(tmp_path / "good")
    monkeypatch.setattr(gguf_format, "recover_llama3", lambda values, theta, dim: None)
    with pytest.raises(AssertionError):
        rope_falsifiers.check_llama3_rope_freqs(tmp_path / "bad")


def test_ulp_allowance_is_finite_and_at_least_the_budget():
    allowed = allowed_ulps(5e5, 64, LLAMA3_ROPE)
    assert np.isfinite(allowed).all() and (allowed >= 8).all()
    assert allowed.max() < 8 * (1 + 32 * 4 / 3) + math.ulp(1.0)
