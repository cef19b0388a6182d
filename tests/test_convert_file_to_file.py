"""Same-dtype conversion goes file to file (issue 27): what that path must keep."""

from __future__ import annotations

import numpy as np
import pytest

from aprlib import AprFormatError, convert, model_from_arrays, open_model, write_model
from aprlib.config.modelconfig import ModelConfig
from aprlib.formats.dtypes import DType, float32_to_bf16

CONFIG = ModelConfig("qwen2", 6, 8, 24, 2, 2, 1, 1e-6, 1e4, 64, False)


def _apr(tmp_path):
    rng = np.random.default_rng(3)
    arrays = {
        f"model.layers.{i}.mlp.up_proj.weight": (
            DType.BF16,
            (24, 8),
            float32_to_bf16(rng.standard_normal((24, 8)).astype(np.float32)),
        )
        for i in range(3)
    }
    arrays["lm_head.weight"] = (DType.F32, (6, 8), rng.standard_normal((6, 8)).astype(np.float32))
    path = tmp_path / "a.apr"
    write_model(model_from_arrays(arrays, CONFIG), path)
    return path


def _damage(path, name: str) -> None:
    with open_model(path) as m:
        _, offset = m.tensors[name].span
    data = bytearray(path.read_bytes())
    data[offset + 5] ^= 0x01
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("suffix", [".apr", ".gguf", ".safetensors"])
def test_every_writer_checks_the_crc_of_an_apr_source_it_copies(tmp_path, suffix):
    a = _apr(tmp_path)
    _damage(a, "model.layers.1.mlp.up_proj.weight")
    out = tmp_path / "out" / f"m{suffix}"
    out.parent.mkdir()
    with pytest.raises(AprFormatError, match="CRC32") as err:
        convert(a, out)
    assert err.value.tensor == "model.layers.1.mlp.up_proj.weight"
    assert not out.exists() and not list(out.parent.glob(".m*"))


@pytest.mark.parametrize("suffix", [".gguf", ".safetensors", ".apr"])
def test_copied_tensors_hold_the_source_bytes(tmp_path, suffix):
    a = _apr(tmp_path)
    out = tmp_path / "out" / f"m{suffix}"
    out.parent.mkdir()
    convert(a, out)
    with open_model(a) as ma, open_model(out) as mb:
        assert set(ma.tensors) == set(mb.tensors)
        for name, t in ma.tensors.items():
            assert mb.tensors[name].dtype == t.dtype
            assert np.array_equal(mb.tensors[name].raw(), t.raw()), name


def test_fast_kv_packing_writes_gguf_py_bytes(tmp_path):
    """The writer packs arrays in one step each; the bytes are gguf-py's, item by item."""
    from gguf import GGUFWriter

    from aprlib.formats.gguf import add_kv, writer_class

    kv = {
        "general.name": "x",
        "tokenizer.ggml.tokens": ["a", "", "é✓", "<t3>", "\u0120the", "x" * 300],
        "tokenizer.ggml.token_type": [1, 2, 3, 1, 1, 6],
        "tokenizer.ggml.scores": [0.5, -1.25, 3.0],
        "some.bools": [True, False, True],
        "some.mixed_ints": [1, True, 3],
        "some.negative": [-5, 7, -(2**31)],
        "some.count": 7,
        "some.flag": True,
    }
    files = []
    for i, cls in enumerate((GGUFWriter, writer_class())):
        path = tmp_path / f"{i}.gguf"
        writer = cls(path, "qwen2")
        add_kv(writer, kv.items())
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_ti_data_to_file()
        writer.close()
        files.append(path.read_bytes())
    assert files[0] == files[1]


def test_without_copy_file_range_the_gguf_is_the_same_file(tiny_qwen2, tmp_path, monkeypatch):
    import os

    kernel = tmp_path / "kernel.gguf"
    convert(tiny_qwen2.safetensors, kernel)

    def refuse(*args):
        raise OSError(38, "copy_file_range not supported here")

    monkeypatch.setattr(os, "copy_file_range", refuse)
    buffered = tmp_path / "buffered.gguf"
    convert(tiny_qwen2.safetensors, buffered)
    assert kernel.read_bytes() == buffered.read_bytes()


@pytest.mark.parametrize("source_suffix", [".apr", ".safetensors", ".gguf"])
@pytest.mark.parametrize("suffix", [".apr", ".gguf", ".safetensors"])
def test_a_source_replaced_after_opening_is_an_error_not_its_bytes(tmp_path, source_suffix, suffix):
    """Copying by path reads whatever file is there now: another file put in its place
    (``os.replace``, as every atomic writer does) must be ``FileChangedError``, never the
    other file's bytes at the first one's offsets (sealed with a fresh CRC in an APR)."""
    import os

    from aprlib import FileChangedError

    a = _apr(tmp_path)
    src = tmp_path / f"src{source_suffix}"
    convert(a, src)
    other = tmp_path / f"other{source_suffix}"
    convert(a, other)
    out = tmp_path / "out" / f"m{suffix}"
    out.parent.mkdir()
    with open_model(src) as m:
        os.replace(other, src)
        with pytest.raises(FileChangedError, match="another file is at this path"):
            write_model(m, out)
    assert not out.exists() and not list(out.parent.glob(".m*"))


def test_a_diff_of_a_replaced_source_is_an_error(tmp_path):
    import os

    from aprlib import FileChangedError, diff_models

    a = _apr(tmp_path)
    b = tmp_path / "b.apr"
    convert(a, b)
    with open_model(a) as ma, open_model(b) as mb:
        os.replace(b, a)  # A's path now names B's file: same bytes, another file
        with pytest.raises(FileChangedError):
            diff_models(ma, mb)
