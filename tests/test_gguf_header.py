"""aprlib's GGUF header parser against the gguf package's reader (the independent oracle),
on files the gguf package writes, and on hostile bytes."""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pytest
from gguf import GGUFReader, GGUFValueType, GGUFWriter
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from aprlib.errors import GgufFormatError, ModelFileError
from aprlib.gguf_header import read_header, tensor_nbytes
from aprlib.io import open_model

TEXT = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=12)
VALUES = st.one_of(
    st.tuples(st.just(GGUFValueType.UINT32), st.integers(0, 2**32 - 1)),
    st.tuples(st.just(GGUFValueType.INT32), st.integers(-(2**31), 2**31 - 1)),
    st.tuples(st.just(GGUFValueType.UINT64), st.integers(0, 2**64 - 1)),
    st.tuples(st.just(GGUFValueType.INT8), st.integers(-128, 127)),
    st.tuples(st.just(GGUFValueType.FLOAT32), st.floats(width=32, allow_nan=False)),
    st.tuples(st.just(GGUFValueType.FLOAT64), st.floats(allow_nan=False)),
    st.tuples(st.just(GGUFValueType.BOOL), st.booleans()),
    st.tuples(st.just(GGUFValueType.STRING), TEXT),
    st.tuples(st.just(GGUFValueType.ARRAY), st.lists(TEXT, min_size=1, max_size=6)),
    st.tuples(
        st.just(GGUFValueType.ARRAY),
        st.lists(st.integers(-(2**31), 2**31 - 1), min_size=1, max_size=6),
    ),
)


def write_gguf(path: Path, kv: dict, tensors: dict[str, np.ndarray]) -> None:
    w = GGUFWriter(str(path), "llama")
    for key, (vtype, value) in kv.items():
        w.add_key_value(key, value, vtype)
    for name, array in tensors.items():
        w.add_tensor(name, array)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def oracle(path: Path) -> tuple[dict, list]:
    r = GGUFReader(path)
    kv = {k: f.contents() for k, f in r.fields.items() if not k.startswith("GGUF.")}
    tensors = [(t.name, int(t.tensor_type), int(t.data_offset), int(t.n_bytes)) for t in r.tensors]
    return kv, tensors


def ours(path: Path) -> tuple[dict, list]:
    h = read_header(path.read_bytes(), path)
    tensors = [(t.name, t.ggml_type, h.data_start + t.offset, tensor_nbytes(t)) for t in h.tensors]
    return h.kv, tensors


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(kv=st.dictionaries(st.text("abcdef.", min_size=1, max_size=8), VALUES, max_size=6))
def test_header_equals_the_gguf_readers(tmp_path, kv):
    path = tmp_path / "m.gguf"
    rng = np.random.default_rng(len(kv))
    tensors = {
        "a": rng.standard_normal((3, 5)).astype(np.float32),
        "b": np.arange(7, dtype=np.float16),
    }
    write_gguf(path, {f"x.{k}": v for k, v in kv.items()}, tensors)
    assert ours(path) == oracle(path)


@pytest.mark.parametrize("qtype", ["Q8_0", "Q4_K", "Q6_K", "Q5_0", "Q4_1", "IQ4_NL", "BF16"])
def test_tensor_sizes_of_other_ggml_types_equal_the_readers(tmp_path, qtype):
    from gguf.constants import GGML_QUANT_SIZES, GGMLQuantizationType

    t = GGMLQuantizationType[qtype]
    block, size = GGML_QUANT_SIZES[t]
    raw = np.random.default_rng(1).integers(0, 255, (4, 512 // block * size), dtype=np.uint8)
    w = GGUFWriter(str(tmp_path / "q.gguf"), "llama")
    w.add_tensor("w", raw, raw_dtype=t)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    assert ours(tmp_path / "q.gguf") == oracle(tmp_path / "q.gguf")


def _header(n_tensors: int, n_kv: int) -> bytes:
    return b"GGUF" + struct.pack("<IQQ", 3, n_tensors, n_kv)


@pytest.mark.parametrize(
    ("blob", "phrase"),
    [
        (_header(0, 2**60), "key/value count"),
        (_header(2**62, 0), "tensor count"),
        (_header(0, 1) + struct.pack("<Q", 2**40) + bytes(8), "string length"),
        (_header(0, 1) + struct.pack("<Q", 1) + b"k" + struct.pack("<IIQ", 9, 8, 2**50), "array"),
        (_header(0, 1) + struct.pack("<Q", 1) + b"k" + struct.pack("<I", 99), "unknown value type"),
        (_header(0, 1) + struct.pack("<Q", 1) + b"k" + struct.pack("<I", 4) + b"\x01", "truncated"),
        (b"GGUF" + struct.pack("<IQQ", 7, 0, 0), "version 7"),
    ],
)
def test_hostile_headers_are_typed_errors_without_allocation(tmp_path, blob, phrase):
    with pytest.raises(GgufFormatError, match=phrase):
        read_header(blob, tmp_path / "x.gguf")


def test_open_model_names_a_tensor_that_overruns_the_file(tiny_qwen2, tmp_path):
    from aprlib.convert import convert

    convert(tiny_qwen2.safetensors, tmp_path / "m.gguf")
    data = (tmp_path / "m.gguf").read_bytes()
    (tmp_path / "cut.gguf").write_bytes(data[: len(data) - 4096])
    with pytest.raises(ModelFileError, match=r"tensor '.*': field size"):
        open_model(tmp_path / "cut.gguf")
