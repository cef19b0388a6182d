"""Falsifiers of tokenizer-fidelity-v1: a tokenizer carried from an HF folder into GGUF (and
through APR) tokenizes like its source, in llama.cpp itself."""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest

from aprlib import convert, diff_models, open_model
from aprlib.errors import OracleCrashed
from aprlib.formats.tokenizer import PRE_TOKENIZERS, compare_tokenizers
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


# --- SentencePiece flavours (Llama 2 / Mistral / Phi-3, Gemma) ------------------------------
SPM_VOCAB = 640  # the embedding's rows for the SentencePiece flavours (256 byte tokens alone)
SPACE = "\u2581"


@dataclass(frozen=True)
class Flavour:
    """A SentencePiece tokenizer shaped as one family ships it: its special pieces, whether it
    puts "▁" before the text, and how its tokenizer.json says so."""

    name: str
    arch: str  # the tiny model beside it
    specials: tuple[str, ...]  # control pieces from id 0, in the family's order
    bos: str
    eos: str
    unk: str
    added: tuple[str, ...]  # more special tokens (Gemma's turns) or user-defined ones
    added_special: bool
    prefix: str  # "legacy" (Prepend normalizer), "first" (Metaspace), "never" (Gemma)
    chat_line: str  # a corpus line in the family's own chat format
    template: str  # its tokenizer_config.json chat template


FLAVOURS = {
    "llama2": Flavour(
        "llama2",
        "llama",
        ("<unk>", "<s>", "</s>"),
        "<s>",
        "</s>",
        "<unk>",
        ("<|im_start|>", "<|im_end|>", "<|endoftext|>"),
        False,
        "legacy",
        "<s>[INST] What's 2+2? [/INST] 4</s><s>[INST]  again [/INST]",
        "{% for m in messages %}[INST] {{ m['content'] }} [/INST]{% endfor %}",
    ),
    "mistral": Flavour(
        "mistral",
        "mistral",
        ("<unk>", "<s>", "</s>"),
        "<s>",
        "</s>",
        "<unk>",
        ("[INST]", "[/INST]"),
        True,
        "first",
        "<s>[INST] What's 2+2? [/INST] 4</s>[INST]hi[/INST]",
        "{{ bos_token }}{% for m in messages %}[INST] {{ m['content'] }}[/INST]{% endfor %}",
    ),
    "gemma": Flavour(
        "gemma",
        "gemma2",
        ("<pad>", "<eos>", "<bos>", "<unk>"),
        "<bos>",
        "<eos>",
        "<unk>",
        ("<start_of_turn>", "<end_of_turn>"),
        True,
        "never",
        "<bos><start_of_turn>user\nWhat's 2+2?<end_of_turn>\n<start_of_turn>model\n4<end_of_turn>",
        "{{ bos_token }}{% for m in messages %}<start_of_turn>{{ m['role'] }}\n"
        "{{ m['content'] }}<end_of_turn>\n{% endfor %}",
    ),
}


def spm_corpus(flavour: Flavour) -> list[str]:
    """CORPUS, one line in the flavour's own chat format (its special tokens in use), and
    one that starts with spaces (where a Metaspace and llama.cpp put "▁" differently)."""
    return [*CORPUS, flavour.chat_line, "  two leading spaces, then\ttext"]


def train_spm(flavour: Flavour) -> bytes:
    """A SentencePiece BPE with byte fallback, trained here (no download) as the family's
    was: identity normalisation, digits split, whitespace kept, rare characters left to
    their bytes (character_coverage < 1)."""
    import io

    import sentencepiece

    ids = {t: i for i, t in enumerate(flavour.specials)}
    kind = "control_symbols" if flavour.added_special else "user_defined_symbols"
    out = io.BytesIO()
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(TRAIN),
        model_writer=out,
        model_type="bpe",
        vocab_size=SPM_VOCAB - 40,
        byte_fallback=True,
        character_coverage=0.98,
        normalization_rule_name="identity",
        remove_extra_whitespaces=False,
        add_dummy_prefix=flavour.prefix != "never",
        split_digits=True,
        allow_whitespace_only_pieces=True,
        hard_vocab_limit=False,
        unk_id=ids[flavour.unk],
        bos_id=ids[flavour.bos],
        eos_id=ids[flavour.eos],
        pad_id=ids.get("<pad>", -1),
        unk_piece=flavour.unk,
        bos_piece=flavour.bos,
        eos_piece=flavour.eos,
        pad_piece="<pad>",
        **{kind: list(flavour.added)},
        minloglevel=2,
        num_threads=1,
    )
    return out.getvalue()


def spm_tokenizer(model: bytes, flavour: Flavour):
    """The tokenizer.json transformers' converter writes for this SentencePiece model
    (built with the tokenizers library: the converter itself needs protobuf): every piece
    by id, merges from every split of a piece into two pieces in the pieces' order, the
    control/unknown pieces special, the added ones as the flavour has them."""
    import sentencepiece
    from tokenizers import (
        AddedToken,
        Tokenizer,
        decoders,
        models,
        normalizers,
        pre_tokenizers,
        processors,
    )

    sp = sentencepiece.SentencePieceProcessor(model_proto=model)
    pieces = [sp.id_to_piece(i) for i in range(sp.get_piece_size())]
    vocab = {p: i for i, p in enumerate(pieces)}
    merges = []
    for i, piece in enumerate(pieces):
        if sp.is_control(i) or sp.is_unknown(i) or sp.is_byte(i) or piece in flavour.added:
            continue
        local = [(piece[:k], piece[k:]) for k in range(1, len(piece))]
        local = [(a, b) for a, b in local if a in vocab and b in vocab]
        merges.extend(sorted(local, key=lambda m: (vocab[m[0]], vocab[m[1]])))
    tok = Tokenizer(
        models.BPE(vocab, merges, unk_token=flavour.unk, fuse_unk=True, byte_fallback=True)
    )
    decode = [decoders.Replace(SPACE, " "), decoders.ByteFallback(), decoders.Fuse()]
    if flavour.prefix == "legacy":
        tok.normalizer = normalizers.Sequence(
            [normalizers.Prepend(SPACE), normalizers.Replace(" ", SPACE)]
        )
        decode.append(decoders.Strip(" ", 1, 0))
    elif flavour.prefix == "first":
        tok.pre_tokenizer = pre_tokenizers.Metaspace(SPACE, prepend_scheme="first", split=False)
        decode.append(decoders.Strip(" ", 1, 0))
    else:
        tok.normalizer = normalizers.Replace(" ", SPACE)
        tok.pre_tokenizer = pre_tokenizers.Split(" ", "merged_with_previous")
    tok.decoder = decoders.Sequence(decode)
    tok.add_special_tokens(
        [AddedToken(t, normalized=False, special=True) for t in flavour.specials]
    )
    tok.add_tokens(
        [AddedToken(t, normalized=False, special=flavour.added_special) for t in flavour.added]
    )
    bos = flavour.bos
    tok.post_processor = processors.TemplateProcessing(
        single=f"{bos} $A", pair=f"{bos} $A {bos} $B", special_tokens=[(bos, vocab[bos])]
    )
    return tok


def hf_folder_with_spm(tiny, flavour: Flavour, work: Path):
    """A tiny model's folder with a trained SentencePiece tokenizer as the family ships it:
    tokenizer.model, tokenizer.json, tokenizer_config.json with its chat template."""
    folder = work / "hf"
    shutil.copytree(tiny.folder, folder)
    model = train_spm(flavour)
    (folder / "tokenizer.model").write_bytes(model)
    tok = spm_tokenizer(model, flavour)
    tok.save(str(folder / "tokenizer.json"))
    config = {
        "bos_token": flavour.bos,
        "eos_token": flavour.eos,
        "unk_token": flavour.unk,
        "pad_token": flavour.specials[0] if flavour.name == "gemma" else None,
        "add_bos_token": True,
        "add_eos_token": False,
        "chat_template": flavour.template,
        "tokenizer_class": "PreTrainedTokenizerFast",
        "added_tokens_decoder": {  # as save_pretrained writes it (llama.cpp's converter reads it)
            str(t["id"]): {k: v for k, v in t.items() if k != "id"}
            for t in json.loads(tok.to_str())["added_tokens"]
        },
    }
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
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


DETOKENIZE = """
import json, sys
import llama_cpp
llm = llama_cpp.Llama(sys.argv[1], vocab_only=True, verbose=False)
out = [llm.detokenize(ids, special=True).decode("utf-8", "replace") for ids in json.load(sys.stdin)]
llm.close()
json.dump(out, sys.stdout)
"""


def llama_cpp_detokenize(gguf: Path, ids: list[list[int]]) -> list[str]:
    """llama.cpp's text of each id list (its ``llama_detokenize``, in a child process)."""
    import subprocess
    import sys

    run = subprocess.run(
        [sys.executable, "-c", DETOKENIZE, str(gguf)],
        input=json.dumps(ids),
        capture_output=True,
        text=True,
        timeout=120,
    )
    if run.returncode != 0:
        raise OracleCrashed(f"llama.cpp detokenize failed: {run.stderr[-2000:]}")
    return list(json.loads(run.stdout))


def as_llama_cpp_prefixes(tok):
    """The same tokenizer with "▁" put before every run of text, after special tokens too
    and where the run starts with a space already (a ``Prepend("▁")`` normalizer, not a
    Metaspace), as llama.cpp's SentencePiece tokenizer runs ``add_space_prefix``."""
    from tokenizers import Tokenizer, normalizers

    out = Tokenizer.from_str(tok.to_str())
    out.pre_tokenizer = None
    out.normalizer = normalizers.Sequence(
        [normalizers.Prepend(SPACE), normalizers.Replace(" ", SPACE)]
    )
    return out


def check_llama_cpp_tokenizes_spm_like_hf(tiny, flavour: Flavour, work: Path) -> int:
    """A SentencePiece flavour: llama.cpp's ids of our GGUF are HF's, with and without BOS,
    and llama.cpp turns HF's ids back into HF's text (byte tokens are bytes to it). Where HF
    puts its "▁" with a Metaspace (none before a run that starts with a space; "first": none
    after special tokens), llama.cpp cannot: the convert notes must say so, and llama.cpp
    must then tokenize exactly as a ``Prepend("▁")`` normalizer does."""
    folder, tok = hf_folder_with_spm(tiny, flavour, work)
    report = convert(folder, work / "m.gguf")
    require_llama_cpp()
    texts = spm_corpus(flavour)
    want = tok
    if flavour.prefix in ("always", "first"):
        said = any(f"prepend_scheme {flavour.prefix!r}" in n for n in report.notes)
        assert said, f"no convert note names the Metaspace gap: {report.notes}"
        want = as_llama_cpp_prefixes(tok)
    plain = llamacpp.tokenize(work / "m.gguf", texts, add_bos=False, special=True)
    bos = llamacpp.tokenize(work / "m.gguf", texts, add_bos=True, special=True)
    checked = 0
    for text, got, got_bos in zip(texts, plain, bos, strict=True):
        ids = want.encode(text, add_special_tokens=False).ids
        assert got == ids, f"{flavour.name}: {text!r}: llama.cpp {got} vs HF {ids}"
        with_bos = want.encode(text).ids
        assert got_bos == with_bos, f"{flavour.name} BOS: llama.cpp {got_bos} vs HF {with_bos}"
        checked += len(ids)
    ids = [tok.encode(text, add_special_tokens=False).ids for text in texts]
    for text, back in zip(texts, llama_cpp_detokenize(work / "m.gguf", ids), strict=True):
        hf = tok.decode(tok.encode(text, add_special_tokens=False).ids, skip_special_tokens=False)
        if flavour.prefix != "never":  # llama-cpp-python's detokenize keeps the prefix space
            back = back.removeprefix(" ")
        assert back == hf, f"{flavour.name}: llama.cpp detokenizes to {back!r}, HF to {hf!r}"
    return checked


@pytest.mark.falsifies("FALSIFY-TOK-001")
@pytest.mark.parametrize("flavour", list(FLAVOURS))
def test_llama_cpp_tokenizes_our_gguf_like_hf_sentencepiece(
    tiny_factory, tmp_path, flavour, evidence
):
    spec = FLAVOURS[flavour]
    tiny = tiny_factory(spec.arch, vocab_size=SPM_VOCAB)
    evidence.record(tokens_compared=check_llama_cpp_tokenizes_spm_like_hf(tiny, spec, tmp_path))


def check_round_trip(tiny, work: Path, flavour: Flavour | None = None) -> int:
    """HF folder -> GGUF -> APR -> GGUF: the same tokenizer (chat template included) at
    every step, and apr diff finds no tokenizer difference."""
    if flavour is None:
        folder, _ = hf_folder_with_tokenizer(tiny, "qwen2", work)
    else:
        folder, _ = hf_folder_with_spm(tiny, flavour, work)
    convert(folder, work / "m.gguf")
    convert(work / "m.gguf", work / "m.apr")
    convert(work / "m.apr", work / "back.gguf")
    with open_model(folder) as hf, open_model(work / "back.gguf") as back:
        assert hf.tokenizer == back.tokenizer, compare_tokenizers(hf.tokenizer, back.tokenizer)
        n = len(hf.tokenizer["tokenizer.ggml.tokens"])
    for a, b in ((work / "m.gguf", work / "m.apr"), (work / "m.gguf", work / "back.gguf")):
        with open_model(a) as ma, open_model(b) as mb:
            report = diff_models(ma, mb)
            assert report.clean and not report.tokenizer, report.diagnosis["line"]
    return n


@pytest.mark.falsifies("FALSIFY-TOK-002")
def test_tokenizer_survives_gguf_apr_gguf(tiny_factory, tmp_path, evidence):
    evidence.record(tokens=check_round_trip(tiny_factory("qwen2", vocab_size=VOCAB), tmp_path))


@pytest.mark.falsifies("FALSIFY-TOK-002")
@pytest.mark.parametrize("flavour", list(FLAVOURS))
def test_sentencepiece_tokenizer_survives_gguf_apr_gguf(tiny_factory, tmp_path, flavour, evidence):
    spec = FLAVOURS[flavour]
    tiny = tiny_factory(spec.arch, vocab_size=SPM_VOCAB)
    evidence.record(tokens=check_round_trip(tiny, tmp_path, spec))


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
