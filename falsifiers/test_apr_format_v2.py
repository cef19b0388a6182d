"""Falsifiers of apr-format-v2: lossless round trips and typed errors on bad files."""

from __future__ import annotations

import contextlib
import struct
import tracemalloc
import zlib
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from aprlib import convert
from aprlib.errors import AprFormatError
from aprlib.formats.apr import (
    HEADER,
    MAGIC,
    AprFile,
    AprWriter,
    PlannedTensor,
    TensorEntry,
    encode_index,
)
from aprlib.formats.dtypes import DType
from aprlib.formats.io import LM_HEAD, open_model
from falsifiers.reproducible import reproducible

CHAIN = [
    ("qwen2", False, "float32"),
    ("qwen2", False, "float16"),
    ("qwen2", False, "bfloat16"),
    ("qwen2", True, "float32"),
    ("llama", False, "bfloat16"),
]
SETTINGS = reproducible(200)


def convert_chain(src: Path, work: Path) -> Path:
    """safetensors -> APR -> GGUF -> APR -> safetensors; returns the last file."""
    convert(src, work / "a.apr")
    convert(work / "a.apr", work / "b.gguf")
    convert(work / "b.gguf", work / "c.apr")
    (work / "out").mkdir()
    convert(work / "c.apr", work / "out" / "model.safetensors")
    return work / "out" / "model.safetensors"


def check_roundtrip(src: Path, work: Path) -> int:
    last = convert_chain(src, work)
    with open_model(src) as a, open_model(last) as b:
        expected = set(a.tensors) - ({LM_HEAD} if a.tied else set())
        assert set(b.tensors) == expected, set(b.tensors) ^ expected
        for name in expected:
            t, u = a.tensors[name], b.tensors[name]
            assert (u.dtype, u.shape) == (t.dtype, t.shape), name
            assert np.array_equal(t.raw(), u.raw()), f"{name}: bytes changed"
        assert b.config == a.config
        return len(expected)


@pytest.mark.falsifies("FALSIFY-APR-001")
@pytest.mark.parametrize(("arch", "tied", "dtype"), CHAIN)
def test_every_tensor_survives_the_format_chain(
    tiny_factory, tmp_path, arch, tied, dtype, evidence
):
    tiny = tiny_factory(arch, tied=tied, dtype=dtype)
    evidence.record(tensors=check_roundtrip(tiny.safetensors, tmp_path))


def small_apr(path: Path) -> Path:
    rng = np.random.default_rng(7)
    plan = [
        PlannedTensor("model.embed_tokens.weight", DType.F32, (4, 8)),
        PlannedTensor("model.norm.weight", DType.BF16, (8,)),
        PlannedTensor("model.layers.0.mlp.up_proj.weight", DType.Q8_0, (2, 64)),
    ]
    with AprWriter(path, {"format": "apr", "config": None}, plan) as w:
        w.write(plan[0].name, rng.standard_normal((4, 8)).astype(np.float32))
        w.write(plan[1].name, rng.integers(0, 2**16, 8, dtype=np.uint16))
        w.write(plan[2].name, rng.integers(0, 256, 2 * 68, dtype=np.uint8))
    return path


def crafted(
    path: Path,
    entries: list[TensorEntry],
    data_len: int,
    meta: bytes = b"{}",
    fields: dict | None = None,
) -> Path:
    """An APR file with a valid header checksum around whatever index we hand it."""
    index = encode_index(entries)
    meta_off, index_off = HEADER.size, HEADER.size + len(meta)
    data_off = (index_off + len(index) + 63) // 64 * 64
    values = dict(
        magic=MAGIC,
        major=2,
        minor=0,
        meta_off=meta_off,
        meta_len=len(meta),
        index_off=index_off,
        index_len=len(index),
        data_off=data_off,
        data_len=data_len,
        count=len(entries),
    )
    values.update(fields or {})
    head = HEADER.pack(*values.values(), 0)
    head = head[:-4] + struct.pack("<I", zlib.crc32(head[:-4]))
    body = head + meta + index
    path.write_bytes(body + b"\0" * (data_off - len(body)) + b"\0" * min(data_len, 1 << 20))
    return path


def e(name: str, dtype: DType = DType.F32, shape=(4,), offset=0, nbytes=16) -> TensorEntry:
    return TensorEntry(name, dtype, shape, offset, nbytes, 0)


HOSTILE = {
    "metadata length 2^60": (
        lambda p: crafted(p, [e("a")], 16, fields={"meta_len": 1 << 60}),
        "metadata_offset",
    ),
    "tensor count 2^31": (
        lambda p: crafted(p, [e("a")], 16, fields={"count": 1 << 31}),
        "tensor_count",
    ),
    "unknown dtype": (lambda p: crafted(p, [TensorEntry("a", 99, (4,), 0, 16, 0)], 16), "dtype"),
    "duplicate names": (lambda p: crafted(p, [e("a"), e("a", offset=64)], 128), "name"),
    "overlapping tensors": (lambda p: crafted(p, [e("a"), e("b", offset=8)], 64), "offset"),
    "offset past EOF": (lambda p: crafted(p, [e("a", offset=1 << 40)], 64), "offset"),
    "shape x dtype != size": (lambda p: crafted(p, [e("a", nbytes=12)], 16), "nbytes"),
    "APR v1 magic": (lambda p: crafted(p, [e("a")], 16, fields={"magic": b"APRN"}), "magic"),
    "absurd dimension": (
        lambda p: crafted(p, [e("a", shape=(1 << 50,), nbytes=1 << 52)], 16),
        "shape",
    ),
}


def check_hostile(path: Path, field: str | None) -> None:
    tracemalloc.start()
    try:
        AprFile(path).close()
    except AprFormatError as exc:
        assert str(path) in str(exc)
        if field is not None:
            assert exc.field == field, str(exc)
    else:
        assert field is None, "a hostile file was accepted"
    finally:
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    assert peak < path.stat().st_size + (1 << 20), f"allocated {peak} bytes"


def _end_of_index(path: Path) -> int:
    f = AprFile(path)
    try:
        return f._data_offset
    finally:
        f.close()


def check_truncations(path: Path) -> int:
    """Every cut inside header, metadata and index (and one into the data) is refused."""
    data, cut_path = path.read_bytes(), path.with_suffix(".cut")
    end = _end_of_index(path)
    for cut in range(end + 2):
        cut_path.write_bytes(data[:cut])
        with pytest.raises(AprFormatError):
            AprFile(cut_path).close()
    return end + 2


def check_flips(path: Path, flips) -> None:
    """A flipped byte in header, metadata or index: a typed error or an intact read."""
    data, cut_path = path.read_bytes(), path.with_suffix(".flip")
    end_of_index = _end_of_index(path)
    for position, value in flips:
        flipped = bytearray(data)
        flipped[position % end_of_index] ^= value
        cut_path.write_bytes(bytes(flipped))
        with contextlib.suppress(AprFormatError):
            AprFile(cut_path).close()


@pytest.mark.falsifies("FALSIFY-APR-002")
@pytest.mark.parametrize("case", list(HOSTILE))
def test_hostile_headers_raise_typed_errors(tmp_path, case):
    make, field = HOSTILE[case]
    check_hostile(make(tmp_path / "hostile.apr"), field)


@pytest.mark.falsifies("FALSIFY-APR-002")
def test_every_truncation_and_flip_raises_typed_errors(tmp_path, evidence):
    path = small_apr(tmp_path / "small.apr")
    evidence.record(truncations=check_truncations(path))

    @SETTINGS
    @given(st.lists(st.tuples(st.integers(0, 10_000), st.integers(1, 255)), max_size=20))
    def prop(flips):
        check_flips(path, flips)

    prop()


def check_crc(path: Path, positions) -> None:
    data = path.read_bytes()
    f = AprFile(path)
    entries, base = list(f.entries.values()), f._data_offset
    f.close()
    damaged = path.with_suffix(".bad")
    for position in positions:
        entry = entries[position % len(entries)]
        at = base + entry.offset + position % entry.nbytes
        flipped = bytearray(data)
        flipped[at] ^= 0x5A
        damaged.write_bytes(bytes(flipped))
        g = AprFile(damaged)
        try:
            with pytest.raises(AprFormatError) as info:
                g.raw(entry.name)
            assert info.value.field == "crc32" and info.value.tensor == entry.name
        finally:
            g.close()


@pytest.mark.falsifies("FALSIFY-APR-003")
def test_crc_catches_any_damaged_byte(tmp_path):
    path = small_apr(tmp_path / "small.apr")

    @SETTINGS
    @given(st.lists(st.integers(0, 1 << 20), min_size=1, max_size=20))
    def prop(positions):
        check_crc(path, positions)

    prop()
