"""Q4_K bytes equal ggml's on awkward sub-blocks: the edge cases where a reordered float
operation, a signed zero or ggml's ``nearest_int`` on an overflowed scale would show.

Each 32-value sub-block of a random matrix gets its own kind, so one block mixes kinds and
the max-scale/max-min packing sees them side by side.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from aprlib.formats.q4k import quantize_q4_k
from falsifiers import llamacpp_oracle as oracle

KINDS = (
    "normal",
    "zeros",
    "negative_zeros",
    "constant",
    "negative_constant",
    "negative_only",
    "positive_only",
    "subnormal",
    "tiny",
    "huge",
    "huge_span",
    "one_spike",
    "two_levels",
    "with_inf",
    "with_nan",
    "nan_first",
    "inf_first",
)


def sub_block(kind: str, rng: np.random.Generator) -> np.ndarray:
    """32 float32 values of one awkward kind (NaN/Inf too: ggml's bytes are defined there
    and ours follow them)."""
    normal = rng.standard_normal(32)
    values = {
        "normal": normal,
        "zeros": np.zeros(32),
        "negative_zeros": np.where(rng.random(32) < 0.5, -0.0, 0.0),
        "constant": np.full(32, rng.standard_normal()),
        "negative_constant": np.full(32, -abs(rng.standard_normal()) - 1e-3),
        "negative_only": -np.abs(normal) - 1e-3,
        "positive_only": np.abs(normal) + 1e-3,
        "subnormal": normal * 1e-40,
        "tiny": normal * 1e-37,
        "huge": normal * 1e37,
        "huge_span": np.where(rng.random(32) < 0.5, -3e38, 3e38),
        "one_spike": np.where(np.arange(32) == rng.integers(32), 1e4, normal * 1e-3),
        "two_levels": np.where(rng.random(32) < 0.5, -1.0, 2.0) * 10.0 ** rng.integers(-8, 8),
        "with_inf": np.where(np.arange(32) == rng.integers(32), np.inf, normal),
        "with_nan": np.where(np.arange(32) == rng.integers(32), np.nan, normal),
        "nan_first": np.where(np.arange(32) == 0, np.nan, normal),
        "inf_first": np.where(np.arange(32) == 0, -np.inf, normal),
    }[kind]
    return np.asarray(values, dtype=np.float64).astype(np.float32)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.integers(1, 3),
    st.integers(1, 2),
    st.lists(st.sampled_from(KINDS), min_size=1, max_size=8),
    st.integers(0, 2**32 - 1),
)
def test_awkward_sub_blocks_match_ggml(rows: int, blocks: int, kinds: list[str], seed: int):
    oracle.require_llama_cpp()
    rng = np.random.default_rng(seed)
    count = rows * blocks * 8
    x = np.stack([sub_block(kinds[i % len(kinds)], rng) for i in range(count)])
    x = x.reshape(rows, blocks * 256)
    assert np.array_equal(quantize_q4_k(x), oracle.ggml_quantize(x, "Q4_K"))


@pytest.mark.parametrize("kind", KINDS)
def test_each_kind_alone_matches_ggml(kind: str):
    oracle.require_llama_cpp()
    rng = np.random.default_rng(7)
    x = np.stack([sub_block(kind, rng) for _ in range(16)]).reshape(2, 256)
    assert np.array_equal(quantize_q4_k(x), oracle.ggml_quantize(x, "Q4_K"))


def test_many_chunks_match_ggml():
    """More blocks than one vectorised chunk, with a ragged last chunk."""
    oracle.require_llama_cpp()
    from aprlib.formats import q4k

    blocks = 2 * q4k.CHUNK_BLOCKS + 3
    x = np.random.default_rng(11).standard_normal((blocks, 256)).astype(np.float32) * 0.02
    assert np.array_equal(quantize_q4_k(x), oracle.ggml_quantize(x, "Q4_K"))


def test_axis0_reduce_adds_rows_in_order():
    """The quantiser's sums rely on ``np.add.reduce(a, axis=0, initial=0)`` adding row
    after row like ggml's loop; a numpy that sums pairwise here would change the bytes."""
    rng = np.random.default_rng(5)
    a = (rng.standard_normal((32, 999)) * 10.0 ** rng.integers(-8, 8, (32, 999))).astype(np.float32)
    a[:, :50] = -0.0
    loop = np.zeros(999, dtype=np.float32)
    for row in a:
        loop = loop + row
    reduced = np.add.reduce(a, axis=0, initial=np.float32(0))
    assert np.array_equal(loop.view(np.int32), reduced.view(np.int32))


def test_float_shortcut_without_its_guard_differs_from_ggml(monkeypatch):
    """The injected defect: take np.rint for nearest_int even where iscale overflowed
    (subnormal sub-blocks); the bytes then leave ggml's, so the guard is load-bearing."""
    oracle.require_llama_cpp()
    from aprlib.formats import q4k

    x = np.stack([sub_block("subnormal", np.random.default_rng(i)) for i in range(8)])
    x = x.reshape(1, 256)
    assert np.array_equal(quantize_q4_k(x), oracle.ggml_quantize(x, "Q4_K"))
    monkeypatch.setattr(q4k, "_regular", lambda *args: True)
    with np.errstate(all="ignore"):
        assert not np.array_equal(quantize_q4_k(x), oracle.ggml_quantize(x, "Q4_K"))


def test_integer_path_alone_matches_ggml(monkeypatch):
    """Both ways of rounding give ggml's bytes: the bit-trick path, forced everywhere."""
    oracle.require_llama_cpp()
    from aprlib.formats import q4k

    monkeypatch.setattr(q4k, "_regular", lambda *args: False)
    rng = np.random.default_rng(9)
    x = np.stack([sub_block(KINDS[i % len(KINDS)], rng) for i in range(64)]).reshape(4, 512)
    assert np.array_equal(quantize_q4_k(x), oracle.ggml_quantize(x, "Q4_K"))


def test_six_bit_codes_cut_to_a_byte_before_the_clamp():
    """ggml stores nearest_int in a uint8_t, then takes MIN(63, .): -1 -> 255 -> 63."""
    from aprlib.formats import q4k

    values = np.array([-1.0, -256.0, 0.4, 62.6, 63.0, 70.0, 255.0, 256.0, 300.0], np.float32)
    expected = [63, 0, 0, 63, 63, 63, 63, 0, 44]
    assert q4k._six_bit_codes(values).tolist() == expected
