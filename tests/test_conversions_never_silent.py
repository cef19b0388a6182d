"""Conversions that changed the model without a word (issue 25, "What was seen" 1, 4, 5, 6).

Each failed before: a llama.cpp GGUF of a biased Llama converted back to an HF config
without its biases (transformers then dropped them); a GPT-2 tokenizer whose space before
every text llama.cpp does not add, written without a note (and lost on the way back to
HF); a sharded folder missing a shard, with no index, loaded as a smaller model and
converted; a GGUF of an unsupported family was refused by the name of a tensor instead of
its ``general.architecture``, and ``apr inspect`` refused to list such files at all.
Seen 3 (a template's BOS) is in ``test_tokenizer_behaviour.py``.
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

    path = tmp_path / "phi2.gguf"
    writer = GGUFWriter(str(path), "phi2")
    writer.add_block_count(1)
    writer.add_tensor("blk.0.attn_qkv.weight", np.ones((24, 8), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    with pytest.raises(GgufFormatError) as caught:
        open_model(path)
    assert caught.value.field == "general.architecture"
    assert "'phi2' is not supported; supported: qwen2, llama" in str(caught.value)
    capsys.readouterr()
    assert apr(["convert", str(path), str(tmp_path / "out.apr")]) == 1
    err = capsys.readouterr().err
    assert "general.architecture 'phi2'" in err and "attn_qkv" not in err
    # inspect lists any file it can parse (seen 6), and says why nothing else runs it
    assert apr(["inspect", str(path)]) == 0
    out = capsys.readouterr().out
    assert "blk.0.attn_qkv.weight" in out
    assert "unsupported:" in out and "general.architecture 'phi2'" in out


def test_inspect_lists_an_unsupported_hf_folder(tmp_path, capsys):
    """Seen 6: a folder of a family we cannot run (Phi-2 here; Qwen3, OLMo 2, then Phi-3
    when this test was written) was refused by `apr inspect` instead of listed."""
    from transformers import PhiConfig, PhiForCausalLM

    config = PhiConfig(
        pad_token_id=0,
        vocab_size=64,
        hidden_size=32,
        intermediate_size=48,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
    )
    model = PhiForCausalLM(config)
    model.save_pretrained(tmp_path / "phi")
    capsys.readouterr()
    assert apr(["inspect", str(tmp_path / "phi"), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    names = {t["name"] for t in info["tensors"]}
    assert names == set(model.state_dict())
    assert "model_type='phi'" in info["unsupported"] and info["config"] is None
    assert apr(["convert", str(tmp_path / "phi"), str(tmp_path / "phi.gguf")]) == 1
    assert "unsupported architecture (model_type='phi'" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("architecture", "overrides", "said"),
    [
        ("llama", {"hidden_act": "gelu_pytorch_tanh"}, "hidden_act gelu_pytorch_tanh"),
        (
            "qwen2",
            {"use_sliding_window": True, "sliding_window": 4, "max_window_layers": 1},
            "sliding_window 4",
        ),
        ("mistral", {"sliding_window": 5}, "sliding_window 5"),
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
    plain = tiny_factory(architecture, sliding_window=None)  # Mistral's default is 4096
    assert apr(["convert", str(plain.folder), str(tmp_path / "plain.gguf"), "--json"]) == 0
    notes = json.loads(capsys.readouterr().out)["notes"]
    assert not any("hidden_act" in n or "sliding_window" in n for n in notes), notes


def _bare_gpt2_folder(tiny, work: Path, prefix_space: bool):
    """A byte-level BPE with GPT-2's own pre-tokenizer: ByteLevel with its built-in regex,
    no Split (seen 4), with or without the space it puts before the text."""
    import shutil

    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    from falsifiers.test_tokenizer_fidelity_v1 import SPECIALS, TRAIN, VOCAB

    folder = work / "hf"
    shutil.copytree(tiny.folder, folder)
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=prefix_space, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    code = ["x = 1\n        return y\n\n    def g(self):\n        pass\n"] * 5
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB - 24,
        special_tokens=SPECIALS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(TRAIN + code, trainer)
    tok.save(str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_text(json.dumps({"eos_token": "<|endoftext|>"}))
    return folder, tok


@pytest.mark.parametrize("prefix_space", [False, True], ids=["gpt2-regex", "prefix-space"])
def test_a_bare_gpt2_tokenizer_runs_in_llamacpp_as_in_hf_or_convert_says_not(
    tiny_factory, tmp_path, prefix_space
):
    """Seen 4: llama.cpp splits our 'gpt-2' GGUF as HF splits the text, or the notes say
    where it will not (a space HF puts before every text, which llama.cpp's BPE never
    adds); HF -> GGUF -> HF keeps the tokenizer as it was."""
    from tokenizers import Tokenizer

    from aprlib import convert
    from aprlib.forward import llamacpp
    from falsifiers.llamacpp_oracle import require_llama_cpp
    from falsifiers.test_tokenizer_fidelity_v1 import CORPUS, VOCAB

    folder, tok = _bare_gpt2_folder(tiny_factory("qwen2", vocab_size=VOCAB), tmp_path, prefix_space)
    report = convert(folder, tmp_path / "m.gguf")
    noted = [n for n in report.notes if "add_prefix_space" in n]
    assert bool(noted) is prefix_space, report.notes
    texts = [*CORPUS, "def forward(self, x):\n    return x"]
    back = tmp_path / "back"
    back.mkdir()
    convert(tmp_path / "m.gguf", back)
    again = Tokenizer.from_file(str(back / "tokenizer.json"))
    assert [again.encode(t).ids for t in texts] == [tok.encode(t).ids for t in texts]
    require_llama_cpp()
    theirs = llamacpp.tokenize(tmp_path / "m.gguf", texts, add_bos=False, special=True)
    same = [
        got == tok.encode(t, add_special_tokens=False).ids
        for t, got in zip(texts, theirs, strict=True)
    ]
    assert all(same) is not prefix_space, same  # where they differ, the notes said so
