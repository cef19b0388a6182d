"""aprlib's direct Q8_0 decode against gguf.quants.dequantize (the oracle), bit for bit."""

from __future__ import annotations

import numpy as np
from gguf.quants import GGMLQuantizationType, dequantize, quantize
from hypothesis import given, settings
from hypothesis import strategies as st

from aprlib.formats.dtypes import DType, to_float32


@settings(max_examples=30, deadline=None)
@given(rows=st.integers(1, 9), blocks=st.integers(1, 5), seed=st.integers(0, 2**32 - 1))
def test_q8_0_decode_equals_gguf_quants(rows, blocks, seed):
    rng = np.random.default_rng(seed)
    raw = rng.integers(0, 256, (rows, blocks * 34), dtype=np.uint8)  # any scale, NaN/Inf too
    want = dequantize(raw, GGMLQuantizationType.Q8_0).astype(np.float32)
    got = to_float32(raw.reshape(-1), DType.Q8_0, (rows, blocks * 32))
    np.testing.assert_array_equal(got, want)


def test_q8_0_decode_of_real_quantised_values():
    values = np.random.default_rng(0).standard_normal((16, 256)).astype(np.float32)
    raw = quantize(values, GGMLQuantizationType.Q8_0)
    np.testing.assert_array_equal(
        to_float32(raw.reshape(-1), DType.Q8_0, (16, 256)),
        dequantize(raw, GGMLQuantizationType.Q8_0).astype(np.float32),
    )
