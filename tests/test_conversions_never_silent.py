"""Conversions that changed the model without a word (issue 25, "What was seen" 1, 5, 6).

Each failed before: a llama.cpp GGUF of a biased Llama converted back to an HF config
without its biases (transformers then dropped them); a sharded folder missing a shard, with
no index, loaded as a smaller model and converted; a GGUF of an unsupported family was
refused by the name of a tensor instead of its ``general.architecture``.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from aprlib import GgufFormatError, SafetensorsFormatError, open_model
from aprlib.cli.main import main as apr


def test_a_llamacpp_gguf_of_a_biased_llama_converts_back_with_its_biases(
    tiny_factory, tmp_path, capsys
):
    from transformers import AutoModelForCausalLM

    from falsifiers.llamacpp_converter import convert_hf_to_gguf
    from falsifiers.test_tokenizer_fidelity_v1 import VOCAB, hf_folder_with_tokenizer

    tiny = tiny_factory("llama", vocab_size=VOCAB, attention_bias=True, mlp_bias=True)
    folder, _ = hf_folder_with_tokenizer(tiny, "llama-bpe", tmp_path)
    theirs = convert_hf_to_gguf(folder, tmp_path / "theirs.gguf", "llama-bpe", "f32")
    back = tmp_path / "back"
    capsys.readouterr()
    assert apr(["convert", str(theirs), f"{back}/", "--json"]) == 0
    notes = json.loads(capsys.readouterr().out)["notes"]
    assert any("attention_bias: true and mlp_bias: true" in n for n in notes), notes
    config = json.loads((back / "config.json").read_text())
    assert config["attention_bias"] is True and config["mlp_bias"] is True
    model = AutoModelForCausalLM.from_pretrained(back).eval()  # every bias loaded, none dropped
    tokens = torch.tensor([[3, 1, 4, 1, 5, 9, 2, 6]])
    with torch.no_grad():
        got, want = model(tokens).logits, tiny.model(tokens).logits
    assert torch.allclose(got, want, atol=1e-4), float((got - want).abs().max())


@pytest.fixture
def sharded(tiny_factory, tmp_path) -> Path:
    tiny = tiny_factory("qwen2")
    folder = tmp_path / "sharded"
    tiny.model.save_pretrained(folder, max_shard_size="40KB")
    shards = sorted(folder.glob("model-*-of-*.safetensors"))
    assert len(shards) >= 3, shards
    return folder


def test_a_shard_missing_without_an_index_is_refused_by_name(sharded, tmp_path, capsys):
    (sharded / "model.safetensors.index.json").unlink()
    shards = sorted(sharded.glob("model-*-of-*.safetensors"))
    with open_model(sharded) as whole:  # all there: opens
        assert whole.tensors
    missing = shards[1]
    missing.unlink()
    with pytest.raises(SafetensorsFormatError, match=missing.name):
        open_model(sharded)
    out = tmp_path / "out.gguf"
    capsys.readouterr()
    assert apr(["convert", str(sharded), str(out)]) == 1
    err = capsys.readouterr().err
    assert missing.name in err and err.count("\n") == 1
    assert not out.exists()


def test_an_unsupported_gguf_architecture_is_named_not_a_tensor(tmp_path, capsys):
    from gguf import GGUFWriter

    path = tmp_path / "gemma3.gguf"
    writer = GGUFWriter(str(path), "gemma3")
    writer.add_block_count(1)
    writer.add_tensor("blk.0.attn_k_norm.weight", np.ones(8, dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    with pytest.raises(GgufFormatError) as caught:
        open_model(path)
    assert caught.value.field == "general.architecture"
    assert "'gemma3' is not supported; supported: qwen2, llama" in str(caught.value)
    capsys.readouterr()
    assert apr(["inspect", str(path)]) == 1
    err = capsys.readouterr().err
    assert "general.architecture 'gemma3'" in err and "attn_k_norm" not in err


@pytest.mark.parametrize(
    ("architecture", "overrides", "said"),
    [
        ("llama", {"hidden_act": "gelu_pytorch_tanh"}, "hidden_act gelu_pytorch_tanh"),
        ("qwen2", {"use_sliding_window": True, "sliding_window": 4}, "sliding_window 4"),
    ],
)
def test_a_gguf_llamacpp_will_run_differently_says_so(
    tiny_factory, tmp_path, capsys, architecture, overrides, said
):
    tiny = tiny_factory(architecture, **overrides)
    capsys.readouterr()
    assert apr(["convert", str(tiny.folder), str(tmp_path / "m.gguf"), "--json"]) == 0
    notes = json.loads(capsys.readouterr().out)["notes"]
    assert any(n.startswith(said) and "llama.cpp" in n for n in notes), notes
    plain = tiny_factory(architecture)
    assert apr(["convert", str(plain.folder), str(tmp_path / "plain.gguf"), "--json"]) == 0
    notes = json.loads(capsys.readouterr().out)["notes"]
    assert not any("hidden_act" in n or "sliding_window" in n for n in notes), notes
