"""GGUFs with the keys llama.cpp's converter writes (and omits), written by hand with the
gguf package: what was seen in issue 10, case 1."""

from __future__ import annotations

from pathlib import Path

import pytest
from gguf import GGUFReader, GGUFWriter

from aprlib import convert, diff_models, open_model
from aprlib.cli import main as apr


def rewrite_gguf(src: Path, dst: Path, drop: set[str]) -> Path:
    """``src`` with the keys in ``drop`` left out; every other key, type and byte kept."""
    r = GGUFReader(src)
    w = GGUFWriter(str(dst), str(r.fields["general.architecture"].contents()))
    for name, f in r.fields.items():
        if name.startswith("GGUF.") or name in drop or name == "general.architecture":
            continue
        sub = f.types[-1] if len(f.types) > 1 else None
        w.add_key_value(name, f.contents(), f.types[0], sub_type=sub)
    for t in r.tensors:
        w.add_tensor(t.name, t.data, raw_shape=t.data.shape, raw_dtype=t.tensor_type)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return dst


@pytest.mark.parametrize("arch", ["qwen2", "llama"])
def test_a_gguf_without_vocab_size_opens_with_the_token_count(tiny_factory, tmp_path, arch):
    tiny = tiny_factory(arch)
    convert(tiny.safetensors, tmp_path / "ours.gguf")
    lean = rewrite_gguf(tmp_path / "ours.gguf", tmp_path / "lean.gguf", {f"{arch}.vocab_size"})
    assert f"{arch}.vocab_size" not in GGUFReader(lean).fields
    with open_model(lean) as m:
        assert m.config.vocab_size == 96
        assert m.metadata["aprlib.defaulted_keys"] == [f"{arch}.vocab_size"]
    assert apr(["inspect", str(lean)]) == 0
    with open_model(tiny.safetensors) as a, open_model(lean) as b:
        report = diff_models(a, b)
        assert report.clean, report.diagnosis["line"]


def test_without_tokens_the_vocab_size_is_the_embedding_rows(tiny_qwen2, tmp_path):
    convert(tiny_qwen2.safetensors, tmp_path / "ours.gguf")
    drop = {"qwen2.vocab_size", "tokenizer.ggml.tokens", "tokenizer.ggml.token_type"}
    lean = rewrite_gguf(tmp_path / "ours.gguf", tmp_path / "lean.gguf", drop)
    with open_model(lean) as m:
        assert m.config.vocab_size == 96


def test_a_gguf_without_rope_freq_base_gets_llama_cpps_default(tiny_qwen2, tmp_path):
    convert(tiny_qwen2.safetensors, tmp_path / "ours.gguf")
    lean = rewrite_gguf(tmp_path / "ours.gguf", tmp_path / "lean.gguf", {"qwen2.rope.freq_base"})
    with open_model(lean) as m:
        assert m.config.rope_theta == 10000.0
        assert "qwen2.rope.freq_base" in m.metadata["aprlib.defaulted_keys"]
