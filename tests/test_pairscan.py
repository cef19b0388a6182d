"""The diff's one-pass scan and rounding bounds (issue 10's speed work) against float64
numpy and the ``gguf`` package: the fast path must say what the slow one said."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
from gguf.quants import GGMLQuantizationType, quantize
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from aprlib import AprFormatError, diff_models, model_from_arrays, open_model, write_model
from aprlib.compare import pairscan, quantnoise
from aprlib.config.modelconfig import ModelConfig
from aprlib.formats.dtypes import (
    DType,
    decode_into,
    float32_to_bf16,
    from_float32,
    nbytes,
    to_float32,
)
from aprlib.formats.modelfile import Tensor

CONFIG = ModelConfig("qwen2", 6, 8, 24, 2, 2, 1, 1e-6, 1e4, 64, False)


def _tensor(name: str, dtype: DType, values: np.ndarray) -> Tensor:
    raw = from_float32(values.astype(np.float32), dtype).view(np.uint8).reshape(-1)
    return Tensor(name, dtype, values.shape, name, lambda: raw)


def _reference(a: np.ndarray, b: np.ndarray) -> dict[str, float]:
    a64, b64 = a.astype(np.float64).ravel(), b.astype(np.float64).ravel()
    both = np.isfinite(a64) & np.isfinite(b64)
    a64, b64 = a64[both], b64[both]
    d = a64 - b64
    return {
        "max_abs": float(np.abs(d).max()) if d.size else 0.0,
        "rms": float(np.sqrt((d * d).mean())) if d.size else 0.0,
        "sum_aa": float(a64 @ a64),
        "offset": float((b64 - a64).mean()) if d.size else 0.0,
        "cosine": float(a64 @ b64 / np.sqrt((a64 @ a64) * (b64 @ b64))) if d.size else 1.0,
        "ratio": float(a64 @ b64 / (a64 @ a64)) if d.size else float("nan"),
    }


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(
    rows=st.integers(1, 40),
    cols=st.sampled_from([1, 3, 32, 64, 96]),
    piece=st.sampled_from([7, 64, 1 << 17]),
    chunk=st.sampled_from([40, 1 << 20]),
    dtype_b=st.sampled_from([DType.F32, DType.F16, DType.BF16]),
    nonfinite=st.sampled_from([None, np.nan, np.inf, -np.inf]),
    seed=st.integers(0, 2**16),
)
def test_scan_statistics_equal_float64_numpy(
    monkeypatch, rows, cols, piece, chunk, dtype_b, nonfinite, seed
):
    """Any piece and chunk size (pieces smaller than a row, chunks of one row) gives the
    figures float64 numpy gives, and NaN/Inf are counted and located, not averaged in."""
    monkeypatch.setattr(pairscan, "PIECE", piece)
    monkeypatch.setattr(pairscan, "CHUNK_BYTES", chunk)
    monkeypatch.setattr(pairscan, "_LOCAL", pairscan._Buffers())
    rng = np.random.default_rng(seed)
    a = rng.standard_normal((rows, cols)).astype(np.float32)
    b = a + rng.standard_normal((rows, cols)).astype(np.float32) * 1e-2
    if nonfinite is not None:
        b.flat[rng.integers(b.size)] = nonfinite
    ta, tb = _tensor("a", DType.F32, a), _tensor("b", dtype_b, b)
    got = pairscan.scan(ta, tb, None)
    want = _reference(a, to_float32(tb.raw(), dtype_b, b.shape))
    assert got["max_abs"] == pytest.approx(want["max_abs"], rel=1e-6)
    assert got["rms"] == pytest.approx(want["rms"], rel=1e-5, abs=1e-12)
    assert got["_sum_aa"] == pytest.approx(want["sum_aa"], rel=1e-5)
    assert got["_offset"] == pytest.approx(want["offset"], rel=1e-3, abs=1e-7)
    assert got["cosine"] == pytest.approx(want["cosine"], abs=1e-6)
    assert got["_ratio"] == pytest.approx(want["ratio"], rel=1e-5, abs=1e-6, nan_ok=True)
    if nonfinite is None:
        assert got["_first_bad"] is None
    else:
        bad = int(np.flatnonzero(~np.isfinite(to_float32(tb.raw(), dtype_b, b.shape)))[0])
        assert got["_first_bad"] == bad
        assert sum(got["_counts"].values()) == 1


def test_scan_survives_a_float32_overflow_of_a_minus_b():
    a = np.array([[3e38, 1.0]], dtype=np.float32)
    b = np.array([[-3e38, 1.0]], dtype=np.float32)
    with np.errstate(over="ignore"):
        got = pairscan.scan(_tensor("a", DType.F32, a), _tensor("b", DType.F32, b), None)
    assert got["max_abs"] == pytest.approx(6e38) and got["_first_bad"] is None


QUANTISED = [
    GGMLQuantizationType.Q8_0,
    GGMLQuantizationType.Q4_0,
    GGMLQuantizationType.Q5_1,
]


@pytest.mark.parametrize("qtype", QUANTISED, ids=lambda q: q.name)
def test_bounds_hold_for_the_gguf_packages_own_quantiser(qtype):
    """Values quantised by gguf.quants lie within the bound; one step more breaks it."""
    rng = np.random.default_rng(int(qtype))
    values = (rng.standard_normal((16, 256)) * 0.02).astype(np.float32)
    raw = quantize(values, qtype)
    low = DType(int(qtype))
    decoded = to_float32(raw, low, values.shape).reshape(-1)
    err = np.abs(values.reshape(-1) - decoded)
    assert quantnoise.worst_share(low, values.reshape(-1), err, raw.reshape(-1)) <= 1.0
    err[100] += 0.02 * 4  # far beyond any step of these codes
    assert quantnoise.worst_share(low, values.reshape(-1), err, raw.reshape(-1)) > 1.0


@pytest.mark.parametrize("low", [DType.BF16, DType.F16])
def test_half_bounds_hold_for_rounding_and_break_for_one_ulp_more(low):
    rng = np.random.default_rng(3)
    values = (rng.standard_normal(4096) * np.exp(rng.uniform(-8, 8, 4096))).astype(np.float32)
    rounded = to_float32(from_float32(values, low), low, values.shape)
    err = np.abs(values - rounded)
    raw = from_float32(values, low).view(np.uint8)
    assert quantnoise.worst_share(low, values, err, raw) <= 1.0
    ulp = 2.0**-7 if low is DType.BF16 else 2.0**-10
    err[7] = abs(values[7]) * ulp * 1.5
    assert quantnoise.worst_share(low, values, err, raw) > 1.0


def _apr_pair(tmp_path):
    rng = np.random.default_rng(5)
    arrays = {
        f"model.layers.{i}.mlp.up_proj.weight": (
            DType.BF16,
            (24, 8),
            float32_to_bf16(rng.standard_normal((24, 8)).astype(np.float32)),
        )
        for i in range(3)
    }
    head = rng.standard_normal((6, 8)).astype(np.float32)
    arrays["lm_head.weight"] = (DType.F32, (6, 8), head)
    a = tmp_path / "a.apr"
    write_model(model_from_arrays(arrays, CONFIG), a)
    return a


def _damage(path, name: str) -> None:
    with open_model(path) as m:
        t = m.tensors[name]
        _, offset = t.span
    data = bytearray(path.read_bytes())
    data[offset + 5] ^= 0x01
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("workers", [1, 2])
def test_identical_apr_copies_with_a_damaged_tensor_name_it(tmp_path, workers):
    """Byte-identical pairs are compared by memcmp, but the CRC is still checked: two
    copies of a damaged file are an error naming the tensor, not 'identical'."""
    a = _apr_pair(tmp_path)
    name = "model.layers.1.mlp.up_proj.weight"
    _damage(a, name)
    b = tmp_path / "b.apr"
    shutil.copy(a, b)
    with open_model(a) as ma, open_model(b) as mb, pytest.raises(AprFormatError) as err:
        diff_models(ma, mb, workers=workers)
    assert name in str(err.value) and "CRC32" in str(err.value)


def test_one_damaged_apr_side_is_an_error_not_value_drift(tmp_path):
    a = _apr_pair(tmp_path)
    b = tmp_path / "b.apr"
    shutil.copy(a, b)
    _damage(b, "model.layers.2.mlp.up_proj.weight")
    with open_model(a) as ma, open_model(b) as mb, pytest.raises(AprFormatError) as err:
        diff_models(ma, mb)
    assert "model.layers.2.mlp.up_proj.weight" in str(err.value)


def test_apr_to_apr_convert_checks_the_crc_of_what_it_copies(tmp_path):
    from aprlib import convert

    a = _apr_pair(tmp_path)
    _damage(a, "model.layers.0.mlp.up_proj.weight")
    with pytest.raises(AprFormatError, match="CRC32"):
        convert(a, tmp_path / "out.apr")
    assert not (tmp_path / "out.apr").exists()


def test_workers_do_not_change_the_report(tiny_qwen2, tmp_path):
    from aprlib import convert

    a = tiny_qwen2.safetensors
    b = tmp_path / "b.gguf"
    convert(a, b, dtype=DType.Q8_0)
    with open_model(a) as ma, open_model(b) as mb:
        one = diff_models(ma, mb, workers=1).as_dict()
        four = diff_models(ma, mb, workers=4).as_dict()
    assert one == four and one["diagnosis"]["class"] == "QUANT_NOISE"


def test_cli_threads_must_be_positive(tiny_qwen2, capsys):
    from aprlib.cli.main import main

    with pytest.raises(SystemExit) as exit_:
        main(["diff", str(tiny_qwen2.safetensors), str(tiny_qwen2.safetensors), "--threads", "0"])
    assert exit_.value.code == 2 and "--threads" in capsys.readouterr().err
    assert (
        main(["diff", str(tiny_qwen2.safetensors), str(tiny_qwen2.safetensors), "--threads", "3"])
        == 0
    )


def _random_q4_k_blocks(rng: np.random.Generator, count: int) -> np.ndarray:
    """Arbitrary Q4_K bytes with finite f16 scales: every code, scale and min pattern."""
    raw = rng.integers(0, 256, (count, 144), dtype=np.uint8)
    scales = rng.uniform(-1e-2, 1e-2, (count, 2)).astype(np.float16)
    raw[:, 0:4] = scales.view(np.uint8).reshape(count, 4)
    return raw.reshape(-1)


@pytest.mark.parametrize("dtype", [DType.Q4_K, DType.Q8_0, DType.BF16, DType.F16])
@pytest.mark.parametrize("into", ["buffer", "to_float32"])
def test_decoders_equal_the_gguf_package(dtype, into):
    """Every decode (into a reused buffer, and through to_float32, one code path) equals
    gguf.quants' dequantize on arbitrary bytes: Q4_K blocks of every code, scale and min
    pattern; Q8_0, BF16 and F16 including NaN/Inf/subnormal bit patterns."""
    from gguf.quants import dequantize

    rng = np.random.default_rng(int(dtype))
    if dtype is DType.Q4_K:
        raw, count = _random_q4_k_blocks(rng, 64), 64 * 256
    else:
        count = 8192
        raw = rng.integers(0, 256, nbytes(dtype, (count,)), dtype=np.uint8)
    qtype = GGMLQuantizationType(int(dtype))
    block = dtype.info.block_bytes
    with np.errstate(all="ignore"):
        want = dequantize(raw.reshape(-1, block), qtype).reshape(-1).astype(np.float32)
        if into == "buffer":
            got = decode_into(raw, dtype, np.full(count, 7.0, dtype=np.float32))
        else:
            got = to_float32(raw, dtype, (count,))
    np.testing.assert_array_equal(got, want)


def test_q4_k_bound_holds_for_ggmls_quantiser_and_breaks_for_one_step_more():
    """Values quantised by aprlib's Q4_K quantiser (held byte for byte to ggml's) lie within
    the bound; a value pushed a step outside its sub-block's range breaks it."""
    from aprlib.formats.q4k import quantize_q4_k

    rng = np.random.default_rng(9)
    values = (rng.standard_normal((8, 512)) * 0.02).astype(np.float32)
    values[0, :32] = 0.0  # a constant sub-block
    values[1, 32:64] = -np.abs(values[1, 32:64])  # a negative-only one
    raw = quantize_q4_k(values).view(np.uint8).reshape(-1)
    decoded = to_float32(raw, DType.Q4_K, values.shape).reshape(-1)
    high = values.reshape(-1)
    err = np.abs(high - decoded)
    assert quantnoise.worst_share(DType.Q4_K, high, err.copy(), raw) <= 1.0
    pushed = high.copy()
    pushed[700] += 0.2  # ten sigma: outside any sub-block's range
    err2 = np.abs(pushed - decoded)
    assert quantnoise.worst_share(DType.Q4_K, pushed, err2, raw) > 1.0
