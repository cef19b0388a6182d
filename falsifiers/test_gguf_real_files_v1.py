"""Falsifiers of gguf-real-files-v1: GGUFs as llama.cpp's own converter writes them open,
diff clean against their HF source and convert back losslessly; the keys it omits are
filled as llama.cpp fills them (also checked on files written by hand with those keys)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from gguf import GGUFReader, GGUFWriter

from aprlib import convert, diff_models, open_model
from aprlib.cli.main import main as apr
from falsifiers.llamacpp_converter import convert_hf_to_gguf
from falsifiers.test_tokenizer_fidelity_v1 import VOCAB, hf_folder_with_tokenizer


def rewrite_gguf(
    src: Path,
    dst: Path,
    drop: set[str] | frozenset[str] = frozenset(),
    add: dict[str, tuple[Any, Any, Any]] | None = None,
    tensor: Callable[[str, Any, Any], tuple[Any, Any]] | None = None,
) -> Path:
    """``src`` with the keys in ``drop`` left out, the keys in ``add`` (name → value, type,
    sub-type) put in, and each tensor as ``tensor(name, data, type)`` returns it (data,
    type); every other key, type and byte kept."""
    r = GGUFReader(src)
    w = GGUFWriter(str(dst), str(r.fields["general.architecture"].contents()))
    for name, f in r.fields.items():
        if name.startswith("GGUF.") or name in drop or name in (add or {}):
            continue
        if name == "general.architecture":
            continue
        sub = f.types[-1] if len(f.types) > 1 else None
        w.add_key_value(name, f.contents(), f.types[0], sub_type=sub)
    for name, (value, kind, sub) in (add or {}).items():
        w.add_key_value(name, value, kind, sub_type=sub)
    for t in r.tensors:
        data, kind = (
            (t.data, t.tensor_type) if tensor is None else tensor(t.name, t.data, t.tensor_type)
        )
        w.add_tensor(t.name, data, raw_shape=data.shape, raw_dtype=kind)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return dst


def check_without_vocab_size(tiny, arch: str, tmp_path: Path) -> int:
    tmp_path.mkdir(parents=True, exist_ok=True)
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
    return 96


@pytest.mark.falsifies("FALSIFY-GGUFREAL-002")
@pytest.mark.parametrize("arch", ["qwen2", "llama"])
def test_a_gguf_without_vocab_size_opens_with_the_token_count(
    tiny_factory, tmp_path, arch, evidence
):
    evidence.record(vocab_size=check_without_vocab_size(tiny_factory(arch), arch, tmp_path))


@pytest.mark.falsifies("FALSIFY-GGUFREAL-002")
def test_without_tokens_the_vocab_size_is_the_embedding_rows(tiny_qwen2, tmp_path):
    convert(tiny_qwen2.safetensors, tmp_path / "ours.gguf")
    drop = {"qwen2.vocab_size", "tokenizer.ggml.tokens", "tokenizer.ggml.token_type"}
    lean = rewrite_gguf(tmp_path / "ours.gguf", tmp_path / "lean.gguf", drop)
    with open_model(lean) as m:
        assert m.config.vocab_size == 96


@pytest.mark.falsifies("FALSIFY-GGUFREAL-002")
def test_a_gguf_without_rope_freq_base_gets_llama_cpps_default(tiny_qwen2, tmp_path):
    convert(tiny_qwen2.safetensors, tmp_path / "ours.gguf")
    lean = rewrite_gguf(tmp_path / "ours.gguf", tmp_path / "lean.gguf", {"qwen2.rope.freq_base"})
    with open_model(lean) as m:
        assert m.config.rope_theta == 10000.0
        assert "qwen2.rope.freq_base" in m.metadata["aprlib.defaulted_keys"]


#: the tokenizer split each family's tests train (Qwen3 keeps qwen2's; Mistral is Llama's)
PRE = {
    "qwen2": "qwen2",
    "llama": "llama-bpe",
    "mistral": "llama-bpe",
    "qwen3": "qwen2",
    "olmo2": "llama-bpe",
    "gemma3_text": "llama-bpe",  # its converter takes a BPE tokenizer.json without tokenizer.model
    "phi3": "llama-bpe",  # as GPT2Tokenizer (Phi-4's way), not its tokenizer.model
    "qwen3_moe": "qwen2",
    "gemma2": "default",  # SentencePiece: its converter reads tokenizer.model
}


def converter_vocab(pre: str) -> int:
    """A vocabulary of exactly the trained tokenizer's entries. llama.cpp's Gemma 3
    converter cuts the embedding to the tokenizer.json's vocabulary plus its added tokens
    (``Gemma3Model.modify_tensors``, counting the added tokens twice where the vocabulary
    holds them too); a model with no rows beyond its tokens keeps them all."""
    from falsifiers.test_tokenizer_fidelity_v1 import train_tokenizer

    return len(json.loads(train_tokenizer(pre).to_str())["model"]["vocab"])


def check_llama_cpp_gguf(tiny, arch: str, outtype: str, work: Path) -> str:
    """llama.cpp's GGUF of an HF folder: opens, diffs clean (quantisation noise within its
    bound where it quantised), and goes back to APR and safetensors losslessly."""
    if arch == "gemma2":  # Gemma's SentencePiece tokenizer, as the family ships it
        from falsifiers.test_tokenizer_fidelity_v1 import FLAVOURS, hf_folder_with_spm

        folder, _ = hf_folder_with_spm(tiny, FLAVOURS["gemma"], work)
    else:
        folder, _ = hf_folder_with_tokenizer(tiny, PRE[arch], work)
    if arch == "gemma3_text":  # the fixture's BPE, read as itself: transformers' Gemma
        config = folder / "tokenizer_config.json"  # tokenizer class would add <unk>, <mask>
        config.write_text(
            json.dumps(
                {**json.loads(config.read_text()), "tokenizer_class": "PreTrainedTokenizerFast"}
            )
        )
    if arch == "phi3":  # its converter reads tokenizer.model unless the class is GPT-2's
        config = folder / "tokenizer_config.json"
        config.write_text(
            json.dumps({**json.loads(config.read_text()), "tokenizer_class": "GPT2Tokenizer"})
        )
    gguf = convert_hf_to_gguf(folder, work / f"llama-cpp-{outtype}.gguf", PRE[arch], outtype)
    with open_model(folder) as hf, open_model(gguf) as theirs:
        report = diff_models(hf, theirs)
        line = report.diagnosis["line"]
        assert report.passes(expect_quantized=outtype != "f32"), line
        assert not report.tokenizer and not report.config, line
        if outtype == "f32":
            assert report.clean, line
        else:
            assert report.diagnosis["class"] == "QUANT_NOISE", line
    (work / "back").mkdir()
    convert(gguf, work / "back.apr")
    convert(work / "back.apr", work / "back" / "model.safetensors")
    for a, b in ((gguf, work / "back.apr"), (gguf, work / "back" / "model.safetensors")):
        with open_model(a) as ma, open_model(b) as mb:
            back = diff_models(ma, mb)
            assert back.clean and not back.tokenizer, back.diagnosis["line"]
    return line


@pytest.mark.falsifies("FALSIFY-GGUFREAL-001")
@pytest.mark.parametrize(
    ("arch", "outtype"),
    [
        ("qwen2", "f32"),
        ("llama", "f32"),
        ("qwen3", "f32"),
        ("mistral", "f32"),
        ("olmo2", "f32"),
        ("gemma3_text", "f32"),
        ("phi3", "f32"),
        ("qwen3_moe", "f32"),
        ("gemma2", "f32"),
        ("qwen2", "q8_0"),
        ("llama", "bf16"),
        ("qwen3", "q8_0"),
    ],
)
def test_llama_cpp_converter_output_opens_diffs_clean_and_converts_back(
    tiny_factory, tmp_path, arch, outtype, evidence
):
    # a Mistral without a window: llama.cpp's converter drops one (tests/test_sliding_window)
    window = {"sliding_window": None} if arch in ("mistral", "phi3") else {}
    vocab, dtype = VOCAB, "float32"
    if arch == "gemma3_text":
        # Gemma ships in bf16: its converter's norm + 1 is then exact in float32 and our
        # reader's - 1 gives transformers' w back bit for bit; and the converter cuts the
        # embedding to the tokenizer's entries, so the model has exactly that many rows
        dtype, vocab = "bfloat16", converter_vocab(PRE[arch])
    if arch == "gemma2":  # bf16 as above; the SentencePiece fixture's vocabulary; tied,
        # as llama.cpp's gemma2 graph has no output tensor
        from falsifiers.test_tokenizer_fidelity_v1 import SPM_VOCAB

        dtype, vocab, window["tied"] = "bfloat16", SPM_VOCAB, True
    if arch in ("gemma3_text", "gemma2"):  # published scale: llama.cpp derives 1/sqrt(head_dim)
        window["query_pre_attn_scalar"] = 16
    tiny = tiny_factory(arch, vocab_size=vocab, dtype=dtype, **window)
    evidence.record(diagnosis=check_llama_cpp_gguf(tiny, arch, outtype, tmp_path)[:300])


def _ggml_types() -> list[str]:
    from aprlib.formats.dtypes import ENCODABLE, DType

    return [d.name for d in DType if d not in ENCODABLE]


def write_with_type(src: Path, dst: Path, name: str, qtype: str, seed: int = 0) -> bytes:
    """``src`` with tensor ``name`` replaced by random blocks of ``qtype``; returns them."""
    import numpy as np
    from gguf.constants import GGML_QUANT_SIZES, GGMLQuantizationType

    r = GGUFReader(src)
    w = GGUFWriter(str(dst), str(r.fields["general.architecture"].contents()))
    for key, f in r.fields.items():
        if key.startswith("GGUF.") or key == "general.architecture":
            continue
        w.add_key_value(
            key, f.contents(), f.types[0], sub_type=f.types[-1] if len(f.types) > 1 else None
        )
    t_type = GGMLQuantizationType[qtype]
    block, size = GGML_QUANT_SIZES[t_type]
    blocks = b""
    for t in r.tensors:
        if t.name != name:
            w.add_tensor(t.name, t.data, raw_shape=t.data.shape, raw_dtype=t.tensor_type)
            continue
        rows, cols = int(t.shape[1]), int(t.shape[0])
        raw = np.random.default_rng(seed).integers(
            0, 256, (rows, cols // block * size), dtype=np.uint8
        )
        w.add_tensor(t.name, raw, raw_shape=raw.shape, raw_dtype=t_type)
        blocks = raw.tobytes()
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return blocks


def check_ggml_type(tiny, qtype: str, work: Path) -> int:
    """A tensor of ``qtype`` opens with its logical shape and raw blocks, decodes to the
    floats ``gguf.quants.dequantize`` gives, and passes through APR and back unchanged."""
    import numpy as np
    from gguf.constants import GGMLQuantizationType
    from gguf.quants import dequantize

    work.mkdir(parents=True, exist_ok=True)
    convert(tiny.safetensors, work / "ours.gguf")
    blocks = write_with_type(work / "ours.gguf", work / "typed.gguf", "blk.0.ffn_up.weight", qtype)
    canonical = "model.layers.0.mlp.up_proj.weight"
    with open_model(work / "typed.gguf") as m:
        t = m.tensors[canonical]
        assert t.dtype.name == qtype and t.shape == (512, 256)
        assert t.raw().tobytes() == blocks
        want = dequantize(
            np.frombuffer(blocks, np.uint8).reshape(512, -1), GGMLQuantizationType[qtype]
        )
        np.testing.assert_array_equal(t.to_float32(), want.astype(np.float32))
    assert apr(["inspect", str(work / "typed.gguf")]) == 0
    convert(work / "typed.gguf", work / "typed.apr")
    convert(work / "typed.apr", work / "back.gguf")
    with open_model(work / "back.gguf") as back:
        assert back.tensors[canonical].raw().tobytes() == blocks
    return len(blocks)


@pytest.mark.falsifies("FALSIFY-GGUFREAL-003")
@pytest.mark.parametrize("qtype", _ggml_types())
def test_every_ggml_type_reads_decodes_and_passes_through(tiny_factory, tmp_path, qtype, evidence):
    tiny = tiny_factory("qwen2", hidden_size=256, intermediate_size=512)
    evidence.record(bytes=check_ggml_type(tiny, qtype, tmp_path))


def check_k_quant_mix(tiny, work: Path, capsys) -> str:
    """llama.cpp's own quantiser (llama_model_quantize, Q4_K_M): its type mix opens, shows
    in inspect, diffs as quantisation noise only, and passes through APR unchanged."""
    from aprlib.forward import llamacpp
    from falsifiers.llamacpp_oracle import require_llama_cpp

    require_llama_cpp()
    work.mkdir(parents=True, exist_ok=True)
    convert(tiny.safetensors, work / "f32.gguf")
    rc = llamacpp.model_quantize(work / "f32.gguf", work / "q4_k_m.gguf", "Q4_K_M", nthread=1)
    assert rc == 0, f"llama_model_quantize returned {rc}"
    with open_model(work / "q4_k_m.gguf") as m:
        kinds = {t.dtype.name for t in m.tensors.values()}
    assert {"Q4_K", "Q6_K", "F32"} <= kinds, kinds
    capsys.readouterr()
    assert apr(["inspect", str(work / "q4_k_m.gguf")]) == 0
    out = capsys.readouterr().out
    assert "Q4_K ×" in out and "Q6_K ×" in out, out
    with open_model(tiny.safetensors) as a, open_model(work / "q4_k_m.gguf") as b:
        report = diff_models(a, b)
        line = report.diagnosis["line"]
        assert report.passes(expect_quantized=True), line
        assert report.diagnosis["class"] == "QUANT_NOISE", line
    convert(work / "q4_k_m.gguf", work / "q4_k_m.apr")
    convert(work / "q4_k_m.apr", work / "back.gguf")
    with open_model(work / "q4_k_m.gguf") as a, open_model(work / "back.gguf") as b:
        back = diff_models(a, b)
        assert back.clean, back.diagnosis["line"]
    return line


@pytest.mark.falsifies("FALSIFY-GGUFREAL-004")
def test_llama_cpp_k_quant_mix_opens_diffs_as_noise_and_passes_through(
    tiny_factory, tmp_path, capsys, evidence
):
    tiny = tiny_factory("qwen2", hidden_size=256, intermediate_size=512)
    evidence.record(diagnosis=check_k_quant_mix(tiny, tmp_path, capsys)[:300])
