"""Each gguf-real-files falsifier turns red on an injected defect of its class."""

from __future__ import annotations

import pytest

import aprlib.formats.gguf as gguf_format
from aprlib.formats import layout
from aprlib.formats import tokenizer as tokenizer_module
from falsifiers import test_gguf_real_files_v1 as falsifier
from falsifiers.test_tokenizer_fidelity_v1 import VOCAB


def _no_unpermute(monkeypatch):
    monkeypatch.setattr(layout, "unpermute_qk", lambda rows, heads: rows)


def _pads_typed_user_defined(monkeypatch):
    monkeypatch.setattr(tokenizer_module, "UNUSED", tokenizer_module.USER_DEFINED)


@pytest.mark.parametrize(
    ("defect", "arch"), [(_no_unpermute, "llama"), (_pads_typed_user_defined, "qwen2")]
)
def test_ggufreal_001_catches_a_reader_or_tokenizer_unlike_llama_cpp(
    tiny_factory, tmp_path, monkeypatch, defect, arch
):
    tiny = tiny_factory(arch, vocab_size=VOCAB)
    falsifier.check_llama_cpp_gguf(tiny, arch, "f32", tmp_path / "real")
    defect(monkeypatch)
    with pytest.raises(AssertionError):
        falsifier.check_llama_cpp_gguf(tiny, arch, "f32", tmp_path / "broken")


def test_ggufreal_002_catches_a_reader_without_llama_cpps_defaults(
    tiny_qwen2, tmp_path, monkeypatch
):
    falsifier.check_without_vocab_size(tiny_qwen2, "qwen2", tmp_path / "real")
    monkeypatch.setattr(gguf_format, "with_llama_cpp_defaults", lambda kv, tok, rows: (kv, []))
    with pytest.raises(Exception, match="vocab_size"):
        falsifier.check_without_vocab_size(tiny_qwen2, "qwen2", tmp_path / "broken")


def test_ggufreal_003_catches_a_reader_limited_to_its_own_types(
    tiny_factory, tmp_path, monkeypatch
):
    from aprlib.formats.dtypes import ENCODABLE, DType

    tiny = tiny_factory("qwen2", hidden_size=256, intermediate_size=512)
    falsifier.check_ggml_type(tiny, "Q6_K", tmp_path / "real")
    real = DType.from_code.__func__

    def own_types_only(cls, code):
        d = real(cls, code)
        return d if d in ENCODABLE else None

    monkeypatch.setattr(DType, "from_code", classmethod(own_types_only))
    with pytest.raises(Exception, match=r"Q6_K|type"):
        falsifier.check_ggml_type(tiny, "Q6_K", tmp_path / "broken")


def test_ggufreal_004_catches_a_reader_without_q6_k(tiny_factory, tmp_path, monkeypatch, capsys):
    from aprlib.formats.dtypes import DType

    tiny = tiny_factory("qwen2", hidden_size=256, intermediate_size=512)
    falsifier.check_k_quant_mix(tiny, tmp_path / "real", capsys)
    real = DType.from_code.__func__
    monkeypatch.setattr(
        DType, "from_code", classmethod(lambda cls, code: None if code == 14 else real(cls, code))
    )
    with pytest.raises(Exception, match=r"type"):
        falsifier.check_k_quant_mix(tiny, tmp_path / "broken", capsys)
