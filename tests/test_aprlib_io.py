"""aprlib loaders, converters and the apr CLI: formats, configs and bad input."""

from __future__ import annotations

import json
import shutil
import struct
import tracemalloc

import numpy as np
import pytest

from aprlib.cli.main import main as apr
from aprlib.config.modelconfig import from_gguf_kv, from_hf, to_gguf_kv, to_hf
from aprlib.errors import (
    ConversionError,
    FileChangedError,
    GgufFormatError,
    ModelFileError,
    SafetensorsFormatError,
)
from aprlib.formats.conversion import convert
from aprlib.formats.dtypes import DType
from aprlib.formats.io import open_model, sniff


def safetensors_bytes(header: dict, data: bytes = b"", length: int | None = None) -> bytes:
    head = json.dumps(header).encode()
    return struct.pack("<Q", len(head) if length is None else length) + head + data


@pytest.mark.parametrize(
    ("header", "data", "length", "field", "tensor"),
    [
        ({}, b"", 1 << 60, "header_length", None),
        (
            {"w": {"dtype": "I64", "shape": [2], "data_offsets": [0, 16]}},
            b"\0" * 16,
            None,
            "dtype",
            "w",
        ),
        (
            {"w": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}},
            b"\0" * 8,
            None,
            "data_offsets",
            "w",
        ),
        (
            {"w": {"dtype": "F32", "shape": [3], "data_offsets": [0, 16]}},
            b"\0" * 16,
            None,
            "data_offsets",
            "w",
        ),
        (
            {
                "a": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]},
                "b": {"dtype": "F32", "shape": [4], "data_offsets": [8, 24]},
            },
            b"\0" * 24,
            None,
            "data_offsets",
            "b",
        ),
        (
            {"w": {"dtype": "F32", "shape": [-1], "data_offsets": [0, 4]}},
            b"\0" * 4,
            None,
            "shape",
            "w",
        ),
    ],
    ids=[
        "length 2^60",
        "unsupported dtype",
        "past EOF",
        "size mismatch",
        "overlap",
        "negative dim",
    ],
)
def test_hostile_safetensors_raise_typed_errors(tmp_path, header, data, length, field, tensor):
    path = tmp_path / "bad.bin"
    path.write_bytes(safetensors_bytes(header, data, length))
    tracemalloc.start()
    with pytest.raises(SafetensorsFormatError) as info:
        open_model(path)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert info.value.field == field and info.value.tensor == tensor
    assert str(path) in str(info.value)
    assert peak < 1 << 20


def test_format_comes_from_magic_bytes_not_the_name(tiny_qwen2, tmp_path):
    disguised = tmp_path / "weights.gguf"
    shutil.copy(tiny_qwen2.safetensors, disguised)
    assert sniff(disguised) == "safetensors"
    convert(tiny_qwen2.safetensors, tmp_path / "m.apr")
    shutil.copy(tmp_path / "m.apr", tmp_path / "m.safetensors")
    assert open_model(tmp_path / "m.safetensors").format == "apr"
    (tmp_path / "junk.apr").write_bytes(b"not a model at all")
    with pytest.raises(ModelFileError, match="unrecognised format"):
        open_model(tmp_path / "junk.apr")


def test_gguf_with_a_hostile_string_length(tiny_qwen2, tmp_path):
    path = tmp_path / "m.gguf"
    convert(tiny_qwen2.safetensors, path)
    data = bytearray(path.read_bytes())
    key = b"general.architecture"
    at = data.index(key) - 8  # the key's own u64 length precedes it
    data[at : at + 8] = struct.pack("<Q", 1 << 60)
    path.write_bytes(bytes(data))
    tracemalloc.start()
    with pytest.raises(GgufFormatError) as info:
        open_model(path)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert str(path) in str(info.value)
    assert peak < path.stat().st_size + (8 << 20)


def test_sharded_safetensors_folder(tiny_qwen2, tmp_path):
    from safetensors.torch import load_file, save_file

    tensors = load_file(tiny_qwen2.safetensors)
    names = sorted(tensors)
    half = len(names) // 2
    folder = tmp_path / "sharded"
    folder.mkdir()
    shutil.copy(tiny_qwen2.folder / "config.json", folder)
    weight_map = {}
    for i, part in enumerate((names[:half], names[half:])):
        shard = f"model-0000{i + 1}-of-00002.safetensors"
        save_file({n: tensors[n] for n in part}, folder / shard)
        weight_map.update({n: shard for n in part})
    (folder / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    with open_model(folder) as model:
        assert set(model.tensors) == set(names)
        assert model.config.num_key_value_heads == 2
        for n in names:
            assert np.array_equal(model.get(n).to_float32(), tensors[n].numpy())


PUBLISHED = {  # the style of a hub config.json
    "architectures": ["Qwen2ForCausalLM"],
    "model_type": "qwen2",
    "vocab_size": 151936,
    "hidden_size": 896,
    "intermediate_size": 4864,
    "num_hidden_layers": 24,
    "num_attention_heads": 14,
    "num_key_value_heads": 2,
    "rms_norm_eps": 1e-06,
    "rope_theta": 1000000.0,
    "max_position_embeddings": 32768,
    "tie_word_embeddings": True,
    "torch_dtype": "bfloat16",
    "bos_token_id": 151643,
    "eos_token_id": 151643,
}


def test_both_hf_config_styles_read_the_same():
    saved_by_v5 = {k: v for k, v in PUBLISHED.items() if k not in ("rope_theta", "torch_dtype")}
    saved_by_v5.update(
        dtype="bfloat16", rope_parameters={"rope_theta": 1000000.0, "rope_type": "default"}
    )
    assert from_hf(saved_by_v5) == from_hf(PUBLISHED)


def test_config_survives_hf_gguf_and_back():
    cfg = from_hf(PUBLISHED)
    assert from_hf(to_hf(cfg)) == cfg
    kv = to_gguf_kv(cfg)
    assert kv["qwen2.block_count"] == 24 and kv["qwen2.rope.freq_base"] == 1e6
    assert (
        from_gguf_kv(
            {k: (float(np.float32(v)) if isinstance(v, float) else v) for k, v in kv.items()},
            has_output_tensor=False,
        )
        == cfg
    )


def test_unsupported_architecture_is_named():
    with pytest.raises(ValueError, match=r"unsupported architecture.*'gpt2'"):
        from_hf({**PUBLISHED, "model_type": "gpt2", "architectures": ["GPT2LMHeadModel"]})


def test_quantised_conversion(tiny_factory, tmp_path):
    tiny = tiny_factory("qwen2", hidden_size=256, intermediate_size=512, num_attention_heads=4)
    for kind in ("q8_0", "q4_k"):
        dst = tmp_path / f"m-{kind}.apr"
        assert apr(["convert", str(tiny.safetensors), str(dst), "--dtype", kind]) == 0
        with open_model(dst) as model:
            up = model.get("model.layers.0.mlp.up_proj.weight")
            assert up.dtype is DType.parse(kind)
            assert model.get("model.norm.weight").dtype is DType.F32  # norms stay
            err = np.abs(up.to_float32() - tiny.state()["model.layers.0.mlp.up_proj.weight"])
            assert err.max() < 0.05
        back = tmp_path / f"m-{kind}.gguf"
        convert(dst, back)  # quantised blocks pass through to GGUF byte-identical
        with open_model(dst) as a, open_model(back) as b:
            for name, t in a.tensors.items():
                assert np.array_equal(t.raw(), b.get(name).raw()), name


def test_cli_inspect_and_convert(tiny_qwen2, tmp_path, capsys):
    dst = tmp_path / "m.apr"
    assert apr(["convert", str(tiny_qwen2.safetensors), str(dst)]) == 0
    assert "27 tensors" in capsys.readouterr().out
    assert apr(["inspect", str(dst)]) == 0
    out = capsys.readouterr().out
    assert "format: apr" in out and "checksums: verified" in out and "model.norm.weight" in out
    assert apr(["inspect", "--json", str(dst)]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["format"] == "apr" and info["dtype_totals"] == {"F32": 395520}
    assert info["config"]["num_key_value_heads"] == 2


def test_cli_errors_are_one_line(tmp_path, capsys, tiny_qwen2):
    (tmp_path / "bad.apr").write_bytes(b"APR2" + b"\0" * 10)
    assert apr(["inspect", str(tmp_path / "bad.apr")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "bad.apr" in err[0] and "field header" in err[0]
    assert apr(["inspect", str(tmp_path / "missing.apr")]) == 1
    assert (
        apr(["convert", str(tiny_qwen2.safetensors), str(tmp_path / "x.apr"), "--dtype", "q3_k"])
        == 2
    )
    assert "unknown dtype" in capsys.readouterr().err


def test_failed_conversion_leaves_no_output(tiny_qwen2, tmp_path):
    lonely = tmp_path / "lonely"
    lonely.mkdir()
    shutil.copy(tiny_qwen2.safetensors, lonely)  # no config.json: GGUF cannot be written
    with pytest.raises(ConversionError, match="config"):
        convert(lonely / "model.safetensors", tmp_path / "out.gguf")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["lonely"]


def test_cli_diff_exit_codes_and_json(tiny_qwen2, tiny_factory, tmp_path, capsys):
    src = str(tiny_qwen2.safetensors)
    convert(tiny_qwen2.safetensors, tmp_path / "m.gguf")
    assert apr(["diff", src, str(tmp_path / "m.gguf")]) == 0
    assert "DIAGNOSIS: Files identical tensor for tensor" in capsys.readouterr().out
    other = tiny_factory("qwen2", seed=1)  # same shapes, other values: drift everywhere
    assert apr(["diff", src, str(other.safetensors), "--json"]) == 1
    doc = json.loads(capsys.readouterr().out)
    assert doc["diagnosis"]["class"] == "VALUE_DRIFT" and not doc["clean"]
    assert {t["tag"] for t in doc["tensors"]} == {"VALUE_DRIFT"}
    assert {"max_abs", "rms", "relative", "cosine"} <= set(doc["tensors"][0]["stats"])
    assert apr(["diff", src, str(other.safetensors), "--values", "--limit", "3"]) == 1
    out = capsys.readouterr().out
    assert "3 shown" in out and "first values" in out
    assert apr(["diff", src, str(tmp_path / "missing.apr")]) == 2


@pytest.mark.parametrize("kernel_copy", [True, False], ids=["copy_file_range", "read-write"])
def test_file_to_file_copy_path_is_exact(tiny_qwen2, tmp_path, monkeypatch, kernel_copy):
    import os

    if not kernel_copy:

        def refuse(*args):
            raise OSError(38, "copy_file_range not supported here")

        monkeypatch.setattr(os, "copy_file_range", refuse)
    convert(tiny_qwen2.safetensors, tmp_path / "m.apr")
    with open_model(tiny_qwen2.safetensors) as a, open_model(tmp_path / "m.apr") as b:
        assert all(t.span is not None for t in a)  # the copy path was taken
        for name, t in a.tensors.items():
            assert np.array_equal(t.raw(), b.get(name).raw()), name  # raw() checks the CRC


def test_a_source_that_shrinks_mid_copy_leaves_no_output(tiny_qwen2, tmp_path, monkeypatch):
    src = tmp_path / "model.safetensors"
    shutil.copy(tiny_qwen2.safetensors, src)
    shutil.copy(tiny_qwen2.folder / "config.json", tmp_path)
    from aprlib.formats import conversion as convert_module

    real = convert_module.open_model

    def shrink_after_open(path):
        model = real(path)
        with open(src, "r+b") as fh:
            fh.truncate(src.stat().st_size // 2)
        return model

    monkeypatch.setattr(convert_module, "open_model", shrink_after_open)
    with pytest.raises(FileChangedError, match="ends early"):
        convert(src, tmp_path / "out.apr")
    assert not (tmp_path / "out.apr").exists()
    assert not list(tmp_path.glob(".out.apr*"))
