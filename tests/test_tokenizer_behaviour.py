"""Tokenizers compared by what they do (issue 22, item 1): ``add_bos``/``add_eos`` that the
metadata leaves unset are resolved from the HF post-processor (and tokenizer_config) the way
llama.cpp's converter resolves them, so an HF folder and llama.cpp's own GGUF of it agree;
a real difference names an example string and the two id lists."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from aprlib.cli.main import main as apr
from aprlib.formats.tokenizer import compare_tokenizers, effective_add, from_hf
from falsifiers.test_tokenizer_fidelity_v1 import VOCAB, hf_folder_with_tokenizer


def _with_post_processor(tiny, work: Path, pre: str, kind: str) -> Path:
    from tokenizers import processors

    folder, tok = hf_folder_with_tokenizer(tiny, pre, work)
    if kind == "bytelevel":
        tok.post_processor = processors.ByteLevel(trim_offsets=False)
    elif kind == "bos":
        bos = "<|endoftext|>"
        tok.post_processor = processors.TemplateProcessing(
            single=f"{bos} $A",
            pair=f"{bos} $A {bos} $B",
            special_tokens=[(bos, tok.token_to_id(bos))],
        )
        config = json.loads((folder / "tokenizer_config.json").read_text())
        config["bos_token"] = bos
        (folder / "tokenizer_config.json").write_text(json.dumps(config))
    tok.save(str(folder / "tokenizer.json"))
    return folder


@pytest.mark.parametrize(
    ("arch", "pre", "kind", "outtype"),
    [
        ("qwen2", "qwen2", "bytelevel", "f32"),
        ("qwen2", "qwen2", "bytelevel", "f16"),
        ("qwen2", "qwen2", "none", "bf16"),
        ("llama", "llama-bpe", "bos", "q8_0"),
    ],
)
def test_llama_cpp_conversion_is_no_tokenizer_mismatch(
    tiny_factory, tmp_path, capsys, arch, pre, kind, outtype
):
    from falsifiers.llamacpp_converter import convert_hf_to_gguf

    folder = _with_post_processor(tiny_factory(arch, vocab_size=VOCAB), tmp_path, pre, kind)
    theirs = convert_hf_to_gguf(folder, tmp_path / "theirs.gguf", pre, outtype)
    capsys.readouterr()
    apr(["diff", str(folder), str(theirs), "--json"])
    report = json.loads(capsys.readouterr().out)
    assert report["tokenizer"] == [], report["tokenizer"]
    assert "TOKENIZER" not in report["diagnosis"]["line"], report["diagnosis"]["line"]


def test_a_real_add_bos_difference_names_an_example_and_both_id_lists(
    tiny_factory, tmp_path, capsys
):
    """A: a post-processor that adds BOS; B: llama.cpp's GGUF of the same folder without it."""
    from falsifiers.llamacpp_converter import convert_hf_to_gguf

    tiny = tiny_factory("qwen2", vocab_size=VOCAB)
    plain = _with_post_processor(tiny, tmp_path / "plain", "qwen2", "bytelevel")
    theirs = convert_hf_to_gguf(plain, tmp_path / "theirs.gguf", "qwen2", "f32")
    with_bos = _with_post_processor(tiny, tmp_path / "bos", "qwen2", "bos")
    capsys.readouterr()
    assert apr(["diff", str(with_bos), str(theirs)]) == 1
    out = capsys.readouterr().out
    assert "TOKENIZER_MISMATCH add_bos_token: True vs False" in out, out
    line = next(x for x in out.splitlines() if "example" in x)
    assert "'Hello world'" in line and "ids [0, " in line, line
    with_bos_ids, plain_ids = line.split("ids ", 1)[1].split(" vs ")
    assert json.loads(with_bos_ids)[1:] == json.loads(plain_ids), line


def test_unset_and_false_mean_the_same_when_nothing_is_added():
    data = {
        "model": {"type": "BPE", "vocab": {"a": 0, "b": 1}, "merges": []},
        "pre_tokenizer": {"type": "ByteLevel", "use_regex": True},
        "post_processor": {"type": "ByteLevel", "trim_offsets": False},
    }
    resolved = from_hf(data, {}, None)
    assert resolved["tokenizer.ggml.add_bos_token"] is False
    assert resolved["tokenizer.ggml.add_eos_token"] is False
    silent = {k: v for k, v in resolved.items() if "add_" not in k}
    assert effective_add(silent, "bos") is False  # gpt-2 split: llama.cpp adds nothing
    assert compare_tokenizers(silent, resolved) == []
    # llama.cpp adds BOS by default for a llama-bpe vocabulary that does not say
    llama = {**silent, "tokenizer.ggml.pre": "llama-bpe"}
    assert effective_add(llama, "bos") is True
    lines = compare_tokenizers({**llama, "tokenizer.ggml.add_bos_token": False}, llama)
    assert lines and lines[0].startswith("add_bos_token: False vs True"), lines


def test_tokenizer_config_decides_where_the_post_processor_is_silent(tmp_path):
    data = {
        "model": {"type": "BPE", "vocab": {"a": 0, "<s>": 1}, "merges": []},
        "pre_tokenizer": {"type": "ByteLevel", "use_regex": True},
    }
    tok = from_hf(data, {"bos_token": "<s>", "add_bos_token": True}, None)
    assert tok["tokenizer.ggml.add_bos_token"] is True
    assert "tokenizer.ggml.add_eos_token" not in tok  # nothing says: llama.cpp's default
    shutil.rmtree(tmp_path, ignore_errors=True)


@pytest.mark.parametrize(
    "post",
    [
        {"type": "TemplateProcessing", "single": ["$A", "$B"]},
        {"type": "TemplateProcessing", "single": [{"SpecialToken": "x"}, 5]},
        {"type": "TemplateProcessing", "single": "$A"},
        {"type": "Sequence", "processors": {"type": "ByteLevel"}},
        {"type": "Sequence", "processors": [None, 3, {"type": "ByteLevel"}]},
    ],
)
def test_a_malformed_post_processor_adds_nothing_and_raises_nothing(post):
    """A hostile tokenizer.json reached `apr inspect` as an AttributeError traceback."""
    from aprlib.formats.tokenizer import post_processor_adds

    assert isinstance(post_processor_adds({"post_processor": post}, {}), dict)


@pytest.mark.parametrize(
    "config",
    [
        {"bos_token": "<|endoftext|>", "eos_token": "<|endoftext|>"},
        {"eos_token": "<|endoftext|>"},  # the template's BOS is not the config's (none)
        {},
    ],
    ids=["bos-named", "bos-unnamed", "no-config"],
)
def test_a_template_bos_is_kept_where_the_config_is_silent(tiny_factory, tmp_path, config):
    """Issue 25, seen 3: a ``TemplateProcessing`` that adds BOS, whatever
    ``tokenizer_config.json`` says: llama.cpp on our GGUF adds the same token HF adds."""
    from tokenizers import processors

    from aprlib import convert
    from aprlib.forward import llamacpp
    from falsifiers.llamacpp_oracle import require_llama_cpp

    folder, tok = hf_folder_with_tokenizer(
        tiny_factory("llama", vocab_size=VOCAB), "llama-bpe", tmp_path
    )
    bos = "<|endoftext|>"
    tok.post_processor = processors.TemplateProcessing(
        single=f"{bos} $A", pair=f"{bos} $A {bos} $B", special_tokens=[(bos, tok.token_to_id(bos))]
    )
    tok.save(str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    convert(folder, tmp_path / "m.gguf")
    require_llama_cpp()
    texts = ["hello world", "def f(x):\n    return x"]
    theirs = llamacpp.tokenize(tmp_path / "m.gguf", texts, add_bos=True, special=False)
    assert theirs == [tok.encode(t).ids for t in texts]
    assert theirs[0][0] == tok.token_to_id(bos)
