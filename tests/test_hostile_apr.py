"""Hostile APR files (issue 8: cases 4 and 7) and APR 2.1's metadata and index CRCs."""

from __future__ import annotations

import os
import struct
import zlib

import numpy as np
import pytest

from aprlib import AprFormatError, model_from_arrays, open_model, write_model
from aprlib.config.modelconfig import ModelConfig
from aprlib.formats.dtypes import DType
from aprlib.formats.modelfile import MAX_TENSORS
from falsifiers.hostile_files import (
    AprEntry,
    apr_bytes,
    apr_inline,
    assert_one_line_error,
    read_apr_by_v20_rules,
    run_apr,
)

CONFIG = ModelConfig("qwen2", 6, 8, 24, 2, 2, 1, 1e-6, 1e4, 64, False)


def small_model_apr(path):
    """A random 2-layer model (norms and biases random too) written as APR 2.1."""
    rng = np.random.default_rng(1)
    shapes = {
        "model.embed_tokens.weight": (6, 8),
        "lm_head.weight": (6, 8),
        "model.norm.weight": (64,),
        "model.layers.0.mlp.up_proj.weight": (24, 8),
        "model.layers.1.mlp.up_proj.weight": (24, 8),
        "model.layers.0.self_attn.q_proj.bias": (8,),
    }
    arrays = {
        name: (DType.F32, shape, rng.standard_normal(shape).astype(np.float32))
        for name, shape in shapes.items()
    }
    write_model(model_from_arrays(arrays, CONFIG), path)
    return path


def mutate(path, old: bytes, new: bytes):
    data = path.read_bytes()
    assert data.count(old) == 1, (old, data.count(old))
    path.write_bytes(data.replace(old, new))


def _entry_of(data: bytes, name: bytes) -> int:
    """Offset of the u32 dtype right after ``name`` in the index."""
    return data.index(name) + len(name)


def rename(path):
    mutate(path, b"layers.1.mlp.up_proj", b"layers.1.mlp.dn_proj")


def transpose(path):
    data = bytearray(path.read_bytes())
    at = _entry_of(data, b"model.layers.0.mlp.up_proj.weight") + 5
    rows, cols = struct.unpack_from("<2Q", data, at)
    struct.pack_into("<2Q", data, at, cols, rows)
    path.write_bytes(bytes(data))


def relabel(path):
    """F32[64] → F16[128]: the same byte count, other values."""
    data = bytearray(path.read_bytes())
    at = _entry_of(data, b"model.norm.weight")
    assert struct.unpack_from("<IBQ", data, at) == (0, 1, 64)
    struct.pack_into("<IBQ", data, at, 1, 1, 128)
    path.write_bytes(bytes(data))


def more_layers(path):
    mutate(path, b'"num_hidden_layers": 2', b'"num_hidden_layers": 7')


@pytest.mark.parametrize(
    ("damage", "field"),
    [
        (rename, "index_crc32"),
        (transpose, "index_crc32"),
        (relabel, "index_crc32"),
        (more_layers, "metadata_crc32"),
    ],
)
def test_apr_21_checksums_catch_damage_to_names_shapes_dtypes_and_metadata(
    tmp_path, capsys, damage, field
):
    """Seen: renamed tensors loaded while inspect said 'checksums: verified'; a transposed
    shape, F32[64] relabelled F16[128] and num_hidden_layers 2→7 all exited 0."""
    path = small_model_apr(tmp_path / "m.apr")
    damage(path)
    for args in (["inspect", str(path)], ["convert", str(path), str(tmp_path / "o.gguf")]):
        rc, err = apr_inline(capsys, *args)
        assert rc == 1 and f"field {field}" in err, err


def test_an_apr_21_file_reads_under_the_20_rules(tmp_path):
    """2.1 adds a trailer after the index entries; a 2.0 reader never looks there."""
    path = small_model_apr(tmp_path / "m.apr")
    data = path.read_bytes()
    assert struct.unpack_from("<HH", data, 4) == (2, 1)
    old = read_apr_by_v20_rules(data)
    with open_model(path) as model:
        assert set(old) == set(model.tensors)
        for name, (dtype, shape, raw) in old.items():
            t = model.tensors[name]
            assert (dtype, shape) == (int(t.dtype), t.shape)
            assert raw == t.raw().tobytes()


def test_an_apr_20_file_without_trailer_still_reads(tmp_path):
    data = os.urandom(64)
    entry = AprEntry("model.embed_tokens.weight", 0, (4, 4), 0, 64, zlib.crc32(data))
    path = tmp_path / "old.apr"
    path.write_bytes(apr_bytes({}, [entry], data, minor=0))
    with open_model(path) as model:
        assert model.tensors["model.embed_tokens.weight"].raw().tobytes() == data


def test_an_apr_21_file_without_its_trailer_is_refused(tmp_path):
    data = os.urandom(64)
    entry = AprEntry("model.embed_tokens.weight", 0, (4, 4), 0, 64, zlib.crc32(data))
    good = apr_bytes({}, [entry], data, minor=1)
    path = tmp_path / "cut.apr"
    path.write_bytes(good)
    open_model(path).close()
    bad = bytearray(good)
    at = good.index(b"ACRC")
    bad[at : at + 4] = b"XXXX"
    path.write_bytes(bytes(bad))
    with pytest.raises(AprFormatError, match="trailer"):
        open_model(path)


def test_tensor_count_0_is_refused(tmp_path, capsys):
    """Seen: an APR with tensor_count 0 loaded and converted."""
    path = tmp_path / "empty.apr"
    path.write_bytes(apr_bytes({}, [], b""))
    rc, err = apr_inline(capsys, "convert", str(path), str(tmp_path / "o.safetensors"))
    assert rc == 1 and "field tensor_count" in err, err


def test_tensor_offsets_off_the_64_byte_grid_are_refused(tmp_path, capsys):
    """Seen: APR tensor offsets not on 64-byte boundaries were accepted against the spec."""
    data = os.urandom(128)
    entries = [
        AprEntry("model.norm.weight", 0, (4,), 0, 16, zlib.crc32(data[:16])),
        AprEntry("model.embed_tokens.weight", 0, (4, 4), 16, 64, zlib.crc32(data[16:80])),
    ]
    path = tmp_path / "grid.apr"
    path.write_bytes(apr_bytes({}, entries, data))
    rc, err = apr_inline(capsys, "inspect", str(path))
    assert rc == 1 and "model.embed_tokens.weight" in err and "multiple of 64" in err, err


def test_400k_zero_size_tensors_are_refused_at_once(tmp_path):
    """Seen: 400,000 zero-size tensors in a 25 MB file took > 120 s in the inspect table."""
    entries = [AprEntry(f"t{i}", 0, (0,), 0, 0, 0) for i in range(400_000)]
    path = tmp_path / "many.apr"
    path.write_bytes(apr_bytes({}, entries, b""))
    run = run_apr("inspect", str(path), timeout=60)
    assert_one_line_error(run, "tensor count 400,000")
    assert run.seconds < 5, run.seconds


def test_the_most_tensors_a_model_may_hold_inspect_in_bounded_time_and_memory(tmp_path):
    n = MAX_TENSORS
    entries = [AprEntry(f"t{i}", 0, (0,), 0, 0, 0) for i in range(n)]
    path = tmp_path / "many.apr"
    path.write_bytes(apr_bytes({}, entries, b""))
    run = run_apr("inspect", str(path), timeout=60)
    assert run.returncode == 0, run.stderr[-500:]
    assert f"{n - 200:,} more tensors" in run.stdout, run.stdout[-500:]
    assert run.seconds < 20 and run.peak_rss_mb < 300, (run.seconds, run.peak_rss_mb)


def test_a_64_gib_tensor_in_a_sparse_file_is_checksummed_without_reading_it(tmp_path):
    """Seen: the checksum pass read for > 20 s, up to 4.3 GB RSS."""
    size = 64 << 30
    crc = zlib.crc32(b"")  # computed for the zeros below without allocating them
    from aprlib.formats.apr import crc32_zeros

    crc = crc32_zeros(crc, size)
    entry = AprEntry("model.embed_tokens.weight", 0, (1 << 16, 1 << 18), 0, size, crc)
    path = tmp_path / "sparse.apr"
    path.write_bytes(apr_bytes({}, [entry], b"", data_length=size))
    with open(path, "r+b") as fh:
        fh.truncate(path.stat().st_size + size)
    run = run_apr("inspect", str(path), timeout=60)
    assert run.returncode == 0, run.stderr[-500:]
    assert "checksums: verified" in run.stdout
    assert run.seconds < 10 and run.peak_rss_mb < 300, (run.seconds, run.peak_rss_mb)


def test_crc32_of_zeros_matches_zlib():
    from aprlib.formats.apr import crc32_zeros

    for start in (0, 1, 0xDEADBEEF):
        for n in (0, 1, 3, 64, 4095, 1 << 20):
            assert crc32_zeros(start, n) == zlib.crc32(bytes(n), start)
