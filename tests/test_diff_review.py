"""Review of the one-pass ``apr diff`` (pairscan): cases where the fast path's verdict or
figures differed from an independent float64 numpy computation, or where it crashed (a
reviewer's findings, each failing before its fix). The float64 figures are computed here,
not taken from aprlib."""

from __future__ import annotations

import numpy as np
import pytest

from aprlib.compare import quantnoise
from aprlib.compare.classify import Tolerance, classify
from aprlib.formats.dtypes import DType, from_float32
from aprlib.formats.modelfile import Tensor


def _tensor(dtype: DType, values: np.ndarray) -> Tensor:
    raw = from_float32(values.astype(np.float32), dtype).view(np.uint8).reshape(-1).copy()
    return Tensor("w", dtype, values.shape, "w", lambda: raw)


def _float64_stats(a: np.ndarray, b: np.ndarray) -> dict[str, float]:
    a64, b64 = a.astype(np.float64).ravel(), b.astype(np.float64).ravel()
    d = a64 - b64
    return {
        "rms": float(np.sqrt((d * d).mean())),
        "cosine": float(a64 @ b64 / np.sqrt((a64 @ a64) * (b64 @ b64))),
    }


@pytest.mark.parametrize("scale", [1e20, 1e30])
def test_huge_values_keep_finite_statistics_and_scaled_tag(scale):
    rng = np.random.default_rng(1)
    a = (rng.standard_normal((8, 64)) * scale).astype(np.float32)
    b = a * np.float32(1.5)
    with np.errstate(all="ignore"):
        pair = classify(_tensor(DType.F32, a), _tensor(DType.F32, b), Tolerance())
    want = _float64_stats(a, b)
    assert pair.tag == "SCALED", pair.detail
    assert pair.stats["rms"] == pytest.approx(want["rms"], rel=1e-5)


def test_tiny_values_keep_statistics_and_scaled_tag():
    rng = np.random.default_rng(1)
    a = (rng.standard_normal((8, 64)) * 1e-25).astype(np.float32)
    b = a * np.float32(1.5)
    b[0, 0] = a[0, 0] * np.float32(1.5)
    pair = classify(_tensor(DType.F32, a), _tensor(DType.F32, b), Tolerance())
    want = _float64_stats(a, b)
    assert pair.stats["rms"] == pytest.approx(want["rms"], rel=1e-5)
    assert pair.tag == "SCALED", pair.detail


def test_large_shift_is_shifted():
    rng = np.random.default_rng(1)
    a = (rng.standard_normal((8, 64)) * 1e15).astype(np.float32)
    b = a + np.float32(1e15)
    # the independent reading: every element of b - a lies at the float64 mean within tol
    d = b.astype(np.float64) - a.astype(np.float64)
    tol = Tolerance()
    assert (np.abs(d - d.mean()) <= tol.atol + tol.rtol * np.abs(b.astype(np.float64))).all()
    pair = classify(_tensor(DType.F32, a), _tensor(DType.F32, b), tol)
    assert pair.tag == "SHIFTED", pair.detail


@pytest.mark.parametrize(
    ("da", "db", "n"),
    [
        (DType.F32, DType.Q8_0, 64),
        (DType.Q8_0, DType.F32, 64),
        (DType.F16, DType.Q8_0, 96),
        (DType.F32, DType.Q4_K, 256),  # BF16 vs Q4_K of one F32 source is two roundings
    ],
)
def test_quantised_vector_against_float_vector(da, db, n):
    rng = np.random.default_rng(2)
    v = rng.standard_normal(n).astype(np.float32)
    pair = classify(_tensor(da, v), _tensor(db, v), Tolerance())
    assert pair.tag in {"QUANT_NOISE", "EQUIVALENT"}, pair.detail


def test_q4_k_element_far_outside_its_range_is_not_quant_noise():
    from gguf.quants import GGMLQuantizationType, dequantize

    rng = np.random.default_rng(5)
    x = (rng.standard_normal((4, 256)) * 0.02).astype(np.float32)
    raw = from_float32(x, DType.Q4_K).view(np.uint8).reshape(-1).copy()
    decoded = dequantize(raw.reshape(-1, 144), GGMLQuantizationType.Q4_K).reshape(-1)
    step, minimum, _ = (v.reshape(-1, 1) for v in quantnoise.q4_k_sub_blocks(raw))
    codes = np.rint((decoded.reshape(-1, 32) + minimum) / step)
    sub_block, element = (int(i) for i in np.argwhere(codes == 15)[0])  # a top-code weight
    position = sub_block * 32 + element
    high = decoded.astype(np.float32).copy()
    high[position] += np.float32(100.0)  # ~5000 sigma of these weights: drift, not rounding
    high_raw = high.view(np.uint8).reshape(-1).copy()
    ta = Tensor("w", DType.F32, x.shape, "w", lambda: high_raw)
    tb = Tensor("w", DType.Q4_K, x.shape, "w", lambda: raw)
    pair = classify(ta, tb, Tolerance())
    assert pair.tag != "QUANT_NOISE", pair.detail
