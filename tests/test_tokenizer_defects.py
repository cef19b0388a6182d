"""Each tokenizer-fidelity falsifier turns red on an injected defect of its class."""

from __future__ import annotations

import pytest

import aprlib.formats.gguf as gguf_format
from aprlib.formats import tokenizer as tokenizer_module
from falsifiers import test_tokenizer_fidelity_v1 as falsifier


def _wrong_pre(monkeypatch):
    swapped = {
        regex: ("llama-bpe" if name == "qwen2" else "qwen2")
        for regex, name in tokenizer_module.PRE_TOKENIZERS.items()
    }
    monkeypatch.setattr(tokenizer_module, "PRE_TOKENIZERS", swapped)


def _merges_dropped(monkeypatch):
    real = tokenizer_module.from_hf

    def lossy(*args, **kwargs):
        out = real(*args, **kwargs)
        out["tokenizer.ggml.merges"] = out["tokenizer.ggml.merges"][
            : len(out["tokenizer.ggml.merges"]) // 2
        ]
        return out

    monkeypatch.setattr(tokenizer_module, "from_hf", lossy)


def _specials_as_normal(monkeypatch):
    monkeypatch.setattr(tokenizer_module, "CONTROL", tokenizer_module.NORMAL)


# a qwen2 tokenizer never merges digits, so naming its split llama-bpe (digits in threes)
# changes nothing; a llama-bpe tokenizer learnt digit merges, and the qwen2 split loses them
@pytest.mark.parametrize(
    ("defect", "arch", "pre"),
    [
        (_wrong_pre, "llama", "llama-bpe"),
        (_merges_dropped, "qwen2", "qwen2"),
        (_specials_as_normal, "qwen2", "qwen2"),
    ],
)
def test_tok_001_catches_a_tokenizer_carried_wrong(
    tiny_factory, tmp_path, monkeypatch, defect, arch, pre
):
    falsifier.require_llama_cpp()
    tiny = tiny_factory(arch, vocab_size=falsifier.VOCAB)
    falsifier.check_llama_cpp_tokenizes_like_hf(tiny, pre, tmp_path / "real")
    defect(monkeypatch)
    with pytest.raises(AssertionError):
        falsifier.check_llama_cpp_tokenizes_like_hf(tiny, pre, tmp_path / "broken")


def test_tok_002_catches_a_writer_that_drops_a_special_id(tiny_factory, tmp_path, monkeypatch):
    tiny = tiny_factory("qwen2", vocab_size=falsifier.VOCAB)
    falsifier.check_round_trip(tiny, tmp_path / "real")
    real = gguf_format.tokenizer_kv

    def lossy(model, cfg, report):
        out = real(model, cfg, report)
        out.pop("tokenizer.ggml.padding_token_id", None)
        return out

    monkeypatch.setattr(gguf_format, "tokenizer_kv", lossy)
    with pytest.raises(AssertionError):
        falsifier.check_round_trip(tiny, tmp_path / "broken")


def test_tok_003_catches_a_silent_default(tiny_factory, tmp_path, monkeypatch, capsys):
    tiny = tiny_factory("qwen2", vocab_size=falsifier.VOCAB)
    falsifier.check_unknown_pre_tokenizer_is_named(tiny, tmp_path / "real", capsys)
    monkeypatch.setattr(tokenizer_module, "_pre_name", lambda data, path: "qwen2")
    with pytest.raises(AssertionError):
        falsifier.check_unknown_pre_tokenizer_is_named(tiny, tmp_path / "broken", capsys)
