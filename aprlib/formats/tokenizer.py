"""Tokenizers as GGUF carries them (``tokenizer.ggml.*``): the one form aprlib keeps.

APR metadata holds the same keys, so a GGUF → APR → GGUF trip is a copy. An HF folder's
``tokenizer.json`` (byte-level BPE, as Qwen2 and Llama-3 use) is read into that form the
way llama.cpp's ``convert_hf_to_gguf.py`` does: tokens by id, padded to the embedding's
rows with ``[PAD{i}]`` (UNUSED), added tokens typed CONTROL (special) or USER_DEFINED, merges as
``"a b"``, special ids and ``add_bos`` from ``tokenizer_config.json``. The pre-tokenizer
is named from its split regex; one llama.cpp does not know is an error that names it,
never a silent default (llama.cpp would split text differently and every id would move).

Two tokenizers are also compared by meaning here: the first token id whose text differs,
the first merge that differs, special ids and the pre-tokenizer.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from aprlib.errors import ModelFileError

PREFIX = "tokenizer.ggml."

#: llama.cpp token types (llama_token_type)
NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6
#: HF split regex of the pre-tokenizer → llama.cpp's ``tokenizer.ggml.pre`` name
PRE_TOKENIZERS = {
    (
        r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+"
        r"[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
    ): "qwen2",
    (
        r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+"
        r"[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
    ): "llama-bpe",
}
#: the GPT-2 pre-tokenizer (ByteLevel with its built-in regex)
GPT2 = "gpt-2"
MAX_TOKENIZER_JSON = 256 << 20


class TokenizerError(ModelFileError):
    """A tokenizer that cannot be carried faithfully (names the file and the field)."""


def read_hf_folder(folder: Path, vocab_size: int | None) -> dict[str, Any] | None:
    """The GGUF-keyed tokenizer of an HF folder, or None when it has no tokenizer.json."""
    path = Path(folder) / "tokenizer.json"
    if not path.is_file():
        return None
    if path.stat().st_size > MAX_TOKENIZER_JSON:
        raise TokenizerError(path, f"over {MAX_TOKENIZER_JSON >> 20} MiB", field="size")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise TokenizerError(path, f"not JSON: {exc}") from None
    config_path = Path(folder) / "tokenizer_config.json"
    config: dict[str, Any] = {}
    if config_path.is_file():
        try:
            config = json.loads(config_path.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise TokenizerError(config_path, f"not JSON: {exc}") from None
    model_config: dict[str, Any] = {}
    if (Path(folder) / "config.json").is_file():
        try:
            model_config = json.loads((Path(folder) / "config.json").read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError):
            model_config = {}  # the model reader reports a bad config.json
    return from_hf(data, config, vocab_size, path, model_config)


def _parts(section: Any, key: str) -> list[Any]:
    """A pre-tokenizer's or post-processor's steps: a ``Sequence``'s list, else itself
    alone (not a list where the file is malformed: no steps)."""
    if not isinstance(section, dict):
        return []
    parts = section.get(key, [section]) if section.get("type") == "Sequence" else [section]
    return parts if isinstance(parts, list) else []


def _pre_name(data: dict[str, Any], path: Path | str) -> str:
    pre = data.get("pre_tokenizer") or {}
    parts = pre.get("pretokenizers", [pre]) if pre.get("type") == "Sequence" else [pre]
    kinds = [p.get("type") for p in parts]
    if kinds == ["ByteLevel"] and parts[0].get("use_regex", True):
        return GPT2
    if kinds == ["Split", "ByteLevel"] and not parts[1].get("use_regex", True):
        pattern = (parts[0].get("pattern") or {}).get("Regex")
        if pattern in PRE_TOKENIZERS and parts[0].get("behavior") == "Isolated":
            return PRE_TOKENIZERS[pattern]
        raise TokenizerError(
            path,
            f"unknown pre-tokenizer split regex {pattern!r} (known: "
            f"{', '.join(sorted(PRE_TOKENIZERS.values()))}, {GPT2}); llama.cpp would split "
            "text differently",
            field="pre_tokenizer",
        )
    raise TokenizerError(
        path,
        f"unknown pre-tokenizer {json.dumps(pre)[:200]} (byte-level BPE with the "
        f"{', '.join(sorted(PRE_TOKENIZERS.values()))} or {GPT2} split is supported)",
        field="pre_tokenizer",
    )


def _special_id(config: dict[str, Any], key: str, ids: dict[str, int]) -> int | None:
    value = config.get(key)
    if isinstance(value, dict):
        value = value.get("content")
    return ids.get(value) if isinstance(value, str) else None


def from_hf(
    data: dict[str, Any],
    config: dict[str, Any],
    vocab_size: int | None,
    path: Path | str = "tokenizer.json",
    model_config: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """``tokenizer.json`` (+ ``tokenizer_config.json``) → ``tokenizer.ggml.*`` keys.

    A special id that ``tokenizer_config.json`` does not give comes from the model's
    ``config.json`` (``bos_token_id``...), as gguf-py's SpecialVocab does."""
    model = data.get("model") or {}
    if model.get("type") != "BPE":
        raise TokenizerError(
            path, f"tokenizer model {model.get('type')!r} (only BPE is supported)", field="model"
        )
    pre = _pre_name(data, path)
    ids: dict[str, int] = dict(model.get("vocab") or {})
    added = {t["content"]: t for t in data.get("added_tokens") or []}
    for content, token in added.items():
        ids[content] = int(token["id"])
    by_id = {i: t for t, i in ids.items()}
    n = max(vocab_size or 0, max(by_id, default=-1) + 1)
    tokens, types = [], []
    for i in range(n):
        text = by_id.get(i)
        if text is None:
            tokens.append(f"[PAD{i}]")
            types.append(UNUSED)
        elif text in added:
            tokens.append(text)
            types.append(CONTROL if added[text].get("special") else USER_DEFINED)
        else:
            tokens.append(text)
            types.append(NORMAL)
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges") or []]
    out: dict[str, Any] = {
        "tokenizer.ggml.model": "gpt2",
        "tokenizer.ggml.pre": pre,
        "tokenizer.ggml.tokens": tokens,
        "tokenizer.ggml.token_type": types,
        "tokenizer.ggml.merges": merges,
    }
    for key, gguf_key in (
        ("bos_token", "bos_token_id"),
        ("eos_token", "eos_token_id"),
        ("pad_token", "padding_token_id"),
        ("unk_token", "unknown_token_id"),
    ):
        token_id = _special_id(config, key, ids)
        if token_id is None:
            fallback = (model_config or {}).get(key + "_id")
            token_id = fallback if isinstance(fallback, int) and 0 <= fallback < n else None
        if token_id is not None:
            out[PREFIX + gguf_key] = token_id
    if adds_prefix_space(data):
        out[PREFIX + "add_space_prefix"] = True  # llama.cpp reads it for SentencePiece only
    adds = post_processor_adds(data, config)
    leading = template_bos(data)
    if leading is not None and leading in ids:
        # what HF runs: the template adds this token before every sequence, whatever
        # tokenizer_config.json calls BOS (llama.cpp's converter then writes add_bos
        # false, or the config.json id: llama.cpp would tokenize without it, or another)
        out[PREFIX + "bos_token_id"] = ids[leading]
        adds["bos"] = True
    for which in ("bos", "eos"):
        key = f"add_{which}_token"
        if which in adds:
            out[PREFIX + key] = adds[which]
        elif isinstance(config.get(key), bool):
            out[PREFIX + key] = config[key]
    return out


def _special_text(config: dict[str, Any], key: str) -> str | None:
    value = config.get(key)
    if isinstance(value, dict):
        value = value.get("content")
    return value if isinstance(value, str) else None


def _template_special(piece: Any) -> Any:
    """The token a template piece adds (``{"SpecialToken": {"id": "<s>"}}``), else None:
    ``$A`` sequences and anything malformed add none."""
    special = piece.get("SpecialToken") if isinstance(piece, dict) else None
    return special.get("id") if isinstance(special, dict) else None


def adds_prefix_space(data: dict[str, Any]) -> bool:
    """Whether the pre-tokenizer puts a space before the text (a ByteLevel with
    ``add_prefix_space``: GPT-2's own): " hello" is then tokenized where "hello" is given."""
    return any(
        isinstance(p, dict) and p.get("type") == "ByteLevel" and p.get("add_prefix_space") is True
        for p in _parts(data.get("pre_tokenizer"), "pretokenizers")
    )


def llama_cpp_tokenizer_gaps(tok: dict[str, Any]) -> list[str]:
    """Where llama.cpp will tokenize other than the tokenizer this GGUF carries, in words
    for the convert notes (the keys say what the tokenizer does; llama.cpp does not read
    them for this vocabulary)."""
    gaps = []
    if _field(tok, "model") == "gpt2" and _field(tok, "add_space_prefix") is True:
        gaps.append(
            "tokenizer: its pre-tokenizer puts a space before every text (ByteLevel "
            "add_prefix_space, kept as tokenizer.ggml.add_space_prefix); llama.cpp's BPE "
            "tokenizer reads that key for SentencePiece vocabularies only, so the first "
            "token of every text will differ (HF tokenizes ' hello' where llama.cpp "
            "tokenizes 'hello')"
        )
    return gaps


def template_bos(data: dict[str, Any]) -> str | None:
    """The special token a ``TemplateProcessing`` post-processor puts before a single
    sequence (Llama 3's ``<|begin_of_text|>``), else None."""
    for proc in _parts(data.get("post_processor"), "processors"):
        if isinstance(proc, dict) and proc.get("type") == "TemplateProcessing":
            single = proc.get("single")
            if isinstance(single, list) and len(single) > 1:
                first = _template_special(single[0])
                return first if isinstance(first, str) else None
            return None
    return None


def post_processor_adds(data: dict[str, Any], config: dict[str, Any]) -> dict[str, bool]:
    """What the HF post-processor adds around one sequence (``{"bos": ..., "eos": ...}``),
    read as llama.cpp's converter (gguf-py ``SpecialVocab``) reads it: a ByteLevel
    processor adds nothing, a Roberta one both, a template its leading BOS and trailing EOS.
    A side it does not decide is left out (then ``tokenizer_config.json`` decides); the
    post-processor wins over ``tokenizer_config.json`` where both speak, as in llama.cpp."""
    out: dict[str, bool] = {}
    bos, eos = _special_text(config, "bos_token"), _special_text(config, "eos_token")
    for proc in _parts(data.get("post_processor"), "processors"):
        if not isinstance(proc, dict):
            continue
        kind = proc.get("type")
        if kind == "ByteLevel":
            out.setdefault("bos", False)
            out.setdefault("eos", False)
        elif kind == "RobertaProcessing":
            out["bos"] = out["eos"] = True
        elif kind == "TemplateProcessing":
            single = proc.get("single")
            if isinstance(single, list) and len(single) > 1:
                first, last = _template_special(single[0]), _template_special(single[-1])
                if first:
                    out["bos"] = first == bos or not config
                if last:
                    out["eos"] = last == eos or not config
            break
    return out


#: scalar fields compared one to one (the special ids and flags llama.cpp reads)
SCALARS = (
    "model",
    "pre",
    "bos_token_id",
    "eos_token_id",
    "padding_token_id",
    "unknown_token_id",
    "add_bos_token",
    "add_eos_token",
)
#: list fields compared element by element, reported at the first difference
LISTS = ("tokens", "merges", "token_type")


def _field(tok: dict[str, Any], name: str) -> Any:
    return tok.get(PREFIX + name)


#: ``tokenizer.ggml.pre`` values for which llama.cpp adds BOS when the file does not say
#: (llama-vocab.cpp: the LLAMA3 pre-tokenizer family, tekken, chameleon)
ADDS_BOS_BY_DEFAULT = frozenset(
    {"llama3", "llama-v3", "llama-bpe", "falcon3", "falcon-h1", "pixtral", "midm-2.0", "lfm2"}
    | {"tekken", "chameleon"}
)


def effective_add(tok: dict[str, Any], which: str) -> bool:
    """Does a tokenizer in this form add ``which`` ("bos" or "eos") to a sequence? The
    explicit ``add_*_token`` where there is one, else llama.cpp's default for its vocabulary
    (a byte-level BPE adds BOS only for the llama-bpe family, EOS never): "not set" and an
    explicit false are the same tokenizer when the default adds nothing."""
    value = _field(tok, f"add_{which}_token")
    if isinstance(value, bool):
        return value
    if which == "bos" and _field(tok, "model") == "gpt2":
        return _field(tok, "pre") in ADDS_BOS_BY_DEFAULT
    return which == "bos" and _field(tok, "model") == "llama"  # SentencePiece: BOS, no EOS


#: strings tried, in order, for one whose ids differ between two tokenizers
EXAMPLES = (
    "Hello world",
    "digits 1234567890",
    "It's they're we've",
    "tabs\t\tand   spaces\n\n",
    "Grüße, naïve café 東京",
)


def compare_tokenizers(a: dict[str, Any] | None, b: dict[str, Any] | None) -> list[str]:
    """One line per difference, by what each tokenizer does (``add_bos_token`` unset and
    false agree where llama.cpp's default adds nothing), then one line with an example
    string whose ids differ where one is found; empty when the two agree or either side
    has none (a file without a tokenizer is not a file with another tokenizer)."""
    if not a or not b:
        return []
    out = []
    for name in SCALARS:
        if name in ("add_bos_token", "add_eos_token"):
            which = name[4:7]
            va, vb = effective_add(a, which), effective_add(b, which)
            if va != vb:
                out.append(f"{name}: {va!r} vs {vb!r}" + _said(a, b, name))
            continue
        va, vb = _field(a, name), _field(b, name)
        if va != vb:
            out.append(f"{name}: {va!r} vs {vb!r}")
    for name in LISTS:
        la, lb = list(_field(a, name) or []), list(_field(b, name) or [])
        if la == lb:
            continue
        first = next((i for i, (x, y) in enumerate(zip(la, lb, strict=False)) if x != y), None)
        if first is None:
            out.append(f"{name}: {len(la)} vs {len(lb)} entries (one is a prefix of the other)")
        else:
            what = "token id" if name != "merges" else "merge"
            out.append(
                f"{name}: first differing {what} {first}: {la[first]!r} vs {lb[first]!r}"
                + (f" ({len(la)} vs {len(lb)} entries)" if len(la) != len(lb) else "")
            )
    if out:
        example = _example(a, b)
        if example:
            out.append(example)
    return out


def _said(a: dict[str, Any], b: dict[str, Any], name: str) -> str:
    """Where a side's value is llama.cpp's default rather than its own key, say so."""
    unset = [side for side, tok in (("A", a), ("B", b)) if _field(tok, name) is None]
    return f" ({' and '.join(unset)} unset: llama.cpp's default)" if unset else ""


def encoder(tok: dict[str, Any]) -> Callable[[str], list[int]]:
    """text → the ids this tokenizer gives it with its special tokens added, as llama.cpp
    would: BOS first and EOS last where :func:`effective_add` says so."""
    from tokenizers import Tokenizer

    body, _ = to_hf(tok)
    run = Tokenizer.from_str(body)
    bos, eos = _field(tok, "bos_token_id"), _field(tok, "eos_token_id")
    head = [bos] if effective_add(tok, "bos") and isinstance(bos, int) else []
    tail = [eos] if effective_add(tok, "eos") and isinstance(eos, int) else []

    def encode(text: str) -> list[int]:
        return [*head, *run.encode(text, add_special_tokens=False).ids, *tail]

    return encode


def _example(a: dict[str, Any], b: dict[str, Any]) -> str | None:
    """``example 'Hello world': ids [..] vs [..]`` for the first string the two tokenize
    differently, or None when neither can be run here (not byte-level BPE) or none differs."""
    try:
        ea, eb = encoder(a), encoder(b)
        for text in EXAMPLES:
            ia, ib = ea(text), eb(text)
            if ia != ib:
                return f"example {text!r}: ids {json.dumps(ia)} vs {json.dumps(ib)}"
    except Exception:  # an example is a courtesy; the differences stand without one
        return None
    return None


def to_hf(tok: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """``tokenizer.ggml.*`` → (``tokenizer.json`` text, ``tokenizer_config.json`` dict), for
    an HF folder destination; built with the ``tokenizers`` library, so what it writes is
    what ``tokenizers`` loads. [PAD] fillers are left out (HF has no entry for them)."""
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers

    if _field(tok, "model") != "gpt2":
        raise TokenizerError(
            "tokenizer.ggml.model",
            f"{_field(tok, 'model')!r} cannot be written as tokenizer.json (only gpt2 BPE)",
        )
    pre = _field(tok, "pre")
    patterns = {name: regex for regex, name in PRE_TOKENIZERS.items()}
    pre_tokenizer: pre_tokenizers.PreTokenizer
    space = _field(tok, "add_space_prefix") is True
    if pre == GPT2:
        pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=space)
    elif pre in patterns:
        pre_tokenizer = pre_tokenizers.Sequence(
            [
                pre_tokenizers.Split(Regex(patterns[pre]), behavior="isolated"),
                pre_tokenizers.ByteLevel(add_prefix_space=space, use_regex=False),
            ]
        )
    else:
        raise TokenizerError("tokenizer.ggml.pre", f"unknown pre-tokenizer {pre!r}")
    tokens = list(_field(tok, "tokens") or [])
    types = list(_field(tok, "token_type") or [NORMAL] * len(tokens))
    kept = [i for i, kind in enumerate(types) if kind != UNUSED]
    vocab = {tokens[i]: i for i in kept}
    merges = [tuple(m.split(" ", 1)) for m in _field(tok, "merges") or []]
    out = Tokenizer(models.BPE(vocab=vocab, merges=merges))
    out.pre_tokenizer = pre_tokenizer
    out.decoder = decoders.ByteLevel()
    added = [i for i in kept if types[i] in (CONTROL, USER_DEFINED)]
    out.add_tokens(
        [AddedToken(tokens[i], special=types[i] == CONTROL, normalized=False) for i in added]
    )
    config: dict[str, Any] = {"tokenizer_class": "PreTrainedTokenizerFast"}
    for key, gguf_key in (
        ("bos_token", "bos_token_id"),
        ("eos_token", "eos_token_id"),
        ("pad_token", "padding_token_id"),
        ("unk_token", "unknown_token_id"),
    ):
        token_id = _field(tok, gguf_key)
        if isinstance(token_id, int) and 0 <= token_id < len(tokens):
            config[key] = tokens[token_id]
    for key in ("add_bos_token", "add_eos_token"):
        if isinstance(_field(tok, key), bool):
            config[key] = _field(tok, key)
    return out.to_str(), config
