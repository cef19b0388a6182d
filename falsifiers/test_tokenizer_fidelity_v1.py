"""Falsifiers of tokenizer-fidelity-v1: a tokenizer carried from an HF folder into GGUF (and
through APR) tokenizes like its source, in llama.cpp itself."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from aprlib import convert, diff_models, open_model
from aprlib.formats.tokenizer import PRE_TOKENIZERS
from aprlib.forward import llamacpp
from falsifiers.llamacpp_oracle import require_llama_cpp

SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
VOCAB = 400  # the embedding's rows; the trained vocabulary is smaller: [PAD] fills the gap
CORPUS = [
    "def fib(n):\n    return n if n < 2 else fib(n - 1) + fib(n - 2)\n",
    "for (int i = 0; i < 10; ++i) { total += a[i] * 3.14159; }",
    "Grüße aus Zürich, naïve café — 東京の天気は晴れ 🌤️ and Привет мир",
    "tabs\t\tand   runs    of     spaces\n\n\n  trailing   ",
    "digits 1234567890 and 42, 007, 3.5e-10, 1,000,000",
    "<|im_start|>user\nWhat's 2+2?<|im_end|>\n<|im_start|>assistant\n4<|im_end|><|endoftext|>",
    "It's they're we've I'm you'll he'd SHOUTING'S",
    "emoji 👩‍👩‍👧 ZWJ and combining e\u0301 and \u00a0nbsp",
]
TRAIN = [*CORPUS, *(line[::-1] for line in CORPUS)] * 3
PATTERN = {name: regex for regex, name in PRE_TOKENIZERS.items()}


def train_tokenizer(pre: str):
    """A byte-level BPE trained here with the tokenizers library, split as ``pre`` says."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(PATTERN[pre]), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB - 24,
        special_tokens=SPECIALS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(TRAIN, trainer)
    return tok


def hf_folder_with_tokenizer(tiny, pre: str, work: Path):
    folder = work / "hf"
    shutil.copytree(tiny.folder, folder)
    tok = train_tokenizer(pre)
    tok.save(str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_text(
        json.dumps({"bos_token": None, "eos_token": "<|endoftext|>", "pad_token": "<|endoftext|>"})
    )
    return folder, tok


def check_llama_cpp_tokenizes_like_hf(tiny, pre: str, work: Path) -> int:
    folder, tok = hf_folder_with_tokenizer(tiny, pre, work)
    report = convert(folder, work / "m.gguf")
    assert not any("no tokenizer" in n for n in report.notes), report.notes
    require_llama_cpp()
    theirs = llamacpp.tokenize(work / "m.gguf", list(CORPUS), add_bos=False, special=True)
    checked = 0
    for text, got in zip(CORPUS, theirs, strict=True):
        want = tok.encode(text, add_special_tokens=False).ids
        assert got == want, f"{pre}: {text!r}: llama.cpp {got} vs HF {want}"
        checked += len(want)
    return checked


@pytest.mark.falsifies("FALSIFY-TOK-001")
@pytest.mark.parametrize(("arch", "pre"), [("qwen2", "qwen2"), ("llama", "llama-bpe")])
def test_llama_cpp_tokenizes_our_gguf_like_hf_tokenizers(
    tiny_factory, tmp_path, arch, pre, evidence
):
    tiny = tiny_factory(arch, vocab_size=VOCAB)
    evidence.record(tokens_compared=check_llama_cpp_tokenizes_like_hf(tiny, pre, tmp_path))


def check_round_trip(tiny, work: Path) -> int:
    folder, _ = hf_folder_with_tokenizer(tiny, "qwen2", work)
    convert(folder, work / "m.gguf")
    convert(work / "m.gguf", work / "m.apr")
    convert(work / "m.apr", work / "back.gguf")
    with open_model(folder) as hf, open_model(work / "back.gguf") as back:
        assert hf.tokenizer == back.tokenizer
        n = len(hf.tokenizer["tokenizer.ggml.tokens"])
    for a, b in ((work / "m.gguf", work / "m.apr"), (work / "m.gguf", work / "back.gguf")):
        with open_model(a) as ma, open_model(b) as mb:
            report = diff_models(ma, mb)
            assert report.clean and not report.tokenizer, report.diagnosis["line"]
    return n


@pytest.mark.falsifies("FALSIFY-TOK-002")
def test_tokenizer_survives_gguf_apr_gguf(tiny_factory, tmp_path, evidence):
    evidence.record(tokens=check_round_trip(tiny_factory("qwen2", vocab_size=VOCAB), tmp_path))


def check_unknown_pre_tokenizer_is_named(tiny, work: Path, capsys) -> str:
    from aprlib.cli.main import main as apr

    folder, _ = hf_folder_with_tokenizer(tiny, "qwen2", work)
    data = json.loads((folder / "tokenizer.json").read_text())
    data["pre_tokenizer"]["pretokenizers"][0]["pattern"]["Regex"] = r"\p{L}+|\s+"
    (folder / "tokenizer.json").write_text(json.dumps(data))
    capsys.readouterr()
    assert apr(["convert", str(folder), str(work / "m.gguf")]) == 1
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0, err
    assert "unknown pre-tokenizer split regex '\\\\p{L}+|\\\\s+'" in err, err
    assert "tokenizer.json" in err and "field pre_tokenizer" in err, err
    assert not (work / "m.gguf").exists()
    return err


@pytest.mark.falsifies("FALSIFY-TOK-003")
def test_unknown_pre_tokenizer_is_an_error_naming_it(tiny_factory, tmp_path, capsys, evidence):
    tiny = tiny_factory("qwen2", vocab_size=VOCAB)
    error = check_unknown_pre_tokenizer_is_named(tiny, tmp_path, capsys)
    # the temp folder changes every run: keep the evidence to what the message says
    evidence.record(error=error.replace(str(tmp_path), "<tmp>")[:300])
