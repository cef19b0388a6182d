"""Falsifiers of dtype-fidelity-v1: dtype tags mean what the bytes hold."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from aprlib import convert
from aprlib.formats.dtypes import DType, from_float32, to_float32
from aprlib.formats.io import open_model
from falsifiers import llamacpp_oracle as oracle
from falsifiers.reproducible import reproducible

SETTINGS = reproducible(60)


def check_against_safetensors(src: Path, work: Path) -> int:
    """Our decoding of the file and its APR/GGUF conversions, against the package's."""
    from safetensors.torch import load_file

    reference = {k: v.float().numpy() for k, v in load_file(src).items()}
    convert(src, work / "m.apr")
    convert(src, work / "m.gguf")
    checked = 0
    for path in (src, work / "m.apr", work / "m.gguf"):
        with open_model(path) as model:
            for name, expected in reference.items():
                got = model.get(name).to_float32()
                assert np.array_equal(got, expected), (
                    f"{path.name} {name}: max diff {np.abs(got - expected).max()}"
                )
                checked += 1
    return checked


@pytest.mark.falsifies("FALSIFY-DTYPE-001")
def test_bf16_decodes_like_safetensors(tiny_factory, tmp_path, evidence):
    tiny = tiny_factory("qwen2", dtype="bfloat16")
    evidence.record(tensor_checks=check_against_safetensors(tiny.safetensors, tmp_path))
    with open_model(tiny.safetensors) as model:
        assert model.get("model.norm.weight").dtype is DType.BF16
        assert model.get("model.norm.weight").to_float32()[0] == 7.5625


@pytest.mark.falsifies("FALSIFY-DTYPE-002")
def test_f16_decodes_like_safetensors(tiny_factory, tmp_path, evidence):
    tiny = tiny_factory("qwen2", dtype="float16")
    evidence.record(tensor_checks=check_against_safetensors(tiny.safetensors, tmp_path))


rows = st.tuples(
    st.integers(1, 4),
    st.integers(1, 3),
    st.floats(-6, 3),
    st.sampled_from(["normal", "positive", "outliers", "constant"]),
    st.integers(0, 2**32 - 1),
)


def sample(
    shape_rows: int, blocks: int, block: int, log_scale: float, kind: str, seed: int
) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((shape_rows, blocks * block)) * 10.0**log_scale
    if kind == "positive":
        x = np.abs(x) + 3 * np.abs(x).max()
    elif kind == "outliers":
        x = x * np.where(rng.random(x.shape) < 0.02, 100.0, 1.0)
    elif kind == "constant":
        x[:, :block] = x[0, 0]
    return x.astype(np.float32)


def check_q8_0(x: np.ndarray) -> float:
    raw = from_float32(x, DType.Q8_0)
    got = to_float32(raw, DType.Q8_0, x.shape).reshape(-1, 32)
    blocks = x.reshape(-1, 32).astype(np.float64)
    d32 = (np.abs(blocks).max(1) / 127).astype(np.float32).astype(np.float64)
    d16 = d32.astype(np.float16).astype(np.float64)
    bound = d32 / 2 + 127 * np.abs(d16 - d32) + np.abs(blocks).max(1) * 2.0**-22
    err = np.abs(got - blocks).max(1)
    assert (err <= bound).all(), f"error {err.max()} over bound {bound[err.argmax()]}"
    return float((err / np.where(bound > 0, bound, 1)).max())


@pytest.mark.falsifies("FALSIFY-DTYPE-003")
def test_q8_0_within_bound_and_equal_to_llama_cpp(evidence):
    oracle.require_llama_cpp()
    worst = []

    @SETTINGS
    @given(rows)
    def prop(params):
        r, b, scale, kind, seed = params
        x = sample(r, b, 32, scale, kind, seed)
        worst.append(check_q8_0(x))
        ours = from_float32(x, DType.Q8_0).reshape(r, -1)
        assert np.array_equal(ours, oracle.ggml_quantize(x, "Q8_0"))

    prop()
    evidence.record(worst_error_over_bound=max(worst))


def check_q4_k(x: np.ndarray, quantize=None) -> None:
    from aprlib.formats.q4k import quantize_q4_k, scale_min_k4

    raw = (quantize or quantize_q4_k)(x)
    assert np.array_equal(raw, oracle.ggml_quantize(x, "Q4_K")), "bytes differ from llama.cpp"
    got = to_float32(raw.reshape(-1), DType.Q4_K, x.shape)
    assert np.array_equal(got.reshape(-1), oracle.ggml_dequantize(raw, "Q4_K", x.size))
    blocks = raw.reshape(-1, 144)
    d = blocks[:, 0:2].copy().view(np.float16).astype(np.float64)
    dmin = blocks[:, 2:4].copy().view(np.float16).astype(np.float64)
    sc, m = scale_min_k4(blocks[:, 4:16])
    step = d * sc.astype(np.float64)  # [blocks, 8]
    low = -dmin * m.astype(np.float64)
    high = 15 * step + low
    xs = x.reshape(-1, 8, 32).astype(np.float64)
    outside = np.maximum(0, np.maximum(low[..., None] - xs, xs - high[..., None]))
    bound = step[..., None] / 2 + outside + np.abs(xs) * 2.0**-20 + 1e-30
    err = np.abs(got.reshape(-1, 8, 32) - xs)
    assert (err <= bound).all(), f"error {err.max()} beyond the decoded step"


@pytest.mark.falsifies("FALSIFY-DTYPE-004")
def test_q4_k_bit_exact_with_llama_cpp():
    oracle.require_llama_cpp()

    @SETTINGS
    @given(rows)
    def prop(params):
        r, b, scale, kind, seed = params
        check_q4_k(sample(r, b, 256, scale, kind, seed))

    prop()
