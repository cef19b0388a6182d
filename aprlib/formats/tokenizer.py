"""Tokenizers as GGUF carries them (``tokenizer.ggml.*``): the one form aprlib keeps.

APR metadata holds the same keys, so a GGUF → APR → GGUF trip is a copy. An HF folder's
``tokenizer.json`` (byte-level BPE, as Qwen2 and Llama-3 use) is read into that form the
way llama.cpp's ``convert_hf_to_gguf.py`` does: tokens by id, padded to the embedding's
rows with ``[PAD{i}]`` (UNUSED), added tokens typed CONTROL (special) or USER_DEFINED, merges as
``"a b"``, special ids and ``add_bos`` from ``tokenizer_config.json``. The pre-tokenizer
is named from its split regex; one llama.cpp does not know is an error that names it,
never a silent default (llama.cpp would split text differently and every id would move).

A SentencePiece tokenizer (Llama 2, Mistral, Phi-3, Gemma: a ``tokenizer.json`` BPE with
``byte_fallback``, spaces written "▁" by a normalizer or a Metaspace pre-tokenizer, ``<0xNN>``
byte tokens) becomes llama.cpp's "llama" vocabulary (the section at the end of this module):
tokens, scores that order the merges as the merge list does, BYTE/CONTROL/USER_DEFINED types
and ``add_space_prefix``. The chat template (``tokenizer_config.json`` or
``chat_template.jinja``) rides along as ``tokenizer.chat_template`` keys. Two things HF does
that no llama.cpp key can say are kept under keys of their own, for the convert notes
(:func:`llama_cpp_tokenizer_gaps`) and for :func:`to_hf`: a Metaspace's prepend scheme
(``tokenizer.ggml.prepend_scheme``) and added tokens' whitespace flags
(``tokenizer.ggml.added_token_strip``).

Two tokenizers are also compared by meaning here: the first token id whose text differs,
the first merge that differs, special ids and the pre-tokenizer.
"""

from __future__ import annotations

import json
import re
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
    """The GGUF-keyed tokenizer of an HF folder, or None when it has no tokenizer.json (nor
    a SentencePiece ``tokenizer.model``)."""
    path = Path(folder) / "tokenizer.json"
    if not path.is_file() and not (Path(folder) / "tokenizer.model").is_file():
        return None
    config_path = Path(folder) / "tokenizer_config.json"
    config = _read_json(config_path) or {}
    if not isinstance(config, dict):
        raise TokenizerError(config_path, "not a JSON object")
    config = _chat_template_files(Path(folder), config)
    if not path.is_file():
        return _read_model_file(Path(folder) / "tokenizer.model", config, config_path, vocab_size)
    if path.stat().st_size > MAX_TOKENIZER_JSON:
        raise TokenizerError(path, f"over {MAX_TOKENIZER_JSON >> 20} MiB", field="size")
    data = _read_json(path)
    if not isinstance(data, dict):
        raise TokenizerError(path, "not a JSON object")
    model_config: dict[str, Any] = {}
    try:
        model_config = _read_json(Path(folder) / "config.json") or {}
    except TokenizerError:
        model_config = {}  # the model reader reports a bad config.json
    return from_hf(data, config, vocab_size, path, model_config, config_path)


def _read_model_file(
    path: Path, config: dict[str, Any], config_path: Path, vocab_size: int | None
) -> dict[str, Any]:
    """A ``tokenizer.model`` with no ``tokenizer.json`` beside it, as llama.cpp's converter
    reads it (with the optional sentencepiece package), and ``tokenizer_config.json``."""
    if path.stat().st_size > MAX_TOKENIZER_JSON:
        raise TokenizerError(path, f"over {MAX_TOKENIZER_JSON >> 20} MiB", field="size")
    out = read_model_file(path, vocab_size)
    out = apply_added_tokens_decoder(out, config, config_path)
    out.update(_config_adds(config))
    out.update(chat_template_keys(config, config_path))
    return out


def _read_json(path: Path) -> Any:
    """A JSON file's value, None where there is no such file."""
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise TokenizerError(path, f"not JSON: {exc}") from None


def _chat_template_files(folder: Path, config: dict[str, Any]) -> dict[str, Any]:
    """``tokenizer_config.json`` with the folder's template files as its ``chat_template``
    where it has none, as gguf-py's SpecialVocab reads them: ``chat_template.jinja`` (with
    ``additional_chat_templates/*.jinja`` named by their stems), else ``chat_template.json``."""
    if not isinstance(config, dict) or "chat_template" in config:
        return config
    jinja, extra = folder / "chat_template.jinja", folder / "additional_chat_templates"
    if jinja.is_file():
        template: Any = jinja.read_text(encoding="utf-8")
        named = sorted(extra.glob("*.jinja")) if extra.is_dir() else []
        if named:
            template = [{"name": "default", "template": template}] + [
                {"name": f.stem, "template": f.read_text(encoding="utf-8")} for f in named
            ]
        return {**config, "chat_template": template}
    listed = _read_json(folder / "chat_template.json")
    if isinstance(listed, dict) and "chat_template" in listed:
        return {**config, "chat_template": listed["chat_template"]}
    return config


#: GGUF keys of the chat template (not under ``tokenizer.ggml.``: llama.cpp's own names)
CHAT = "tokenizer.chat_template"
CHAT_NAMES = "tokenizer.chat_templates"


def chat_template_keys(config: dict[str, Any], path: Path | str) -> dict[str, Any]:
    """``tokenizer_config.json``'s ``chat_template`` as llama.cpp's converter writes it: a
    string as ``tokenizer.chat_template``; a list of ``{name, template}`` with ``default``
    there and each other as ``tokenizer.chat_template.NAME`` (name cut to ``[A-Za-z0-9_]``),
    their names in ``tokenizer.chat_templates``. Any other shape is an error naming it."""
    value = config.get("chat_template")
    if value is None:
        return {}
    if isinstance(value, str):
        return {CHAT: value}
    if not isinstance(value, list):
        raise TokenizerError(
            path,
            f"chat_template is a {type(value).__name__} (a string or a list)",
            field="chat_template",
        )
    out: dict[str, Any] = {}
    names = []
    for entry in value:
        name = entry.get("name") if isinstance(entry, dict) else None
        template = entry.get("template") if isinstance(entry, dict) else None
        if not isinstance(name, str) or not isinstance(template, str):
            raise TokenizerError(
                path,
                f"chat_template entry {str(entry)[:100]} is not {{name, template}}",
                field="chat_template",
            )
        name = re.sub(r"[^A-Za-z0-9]", "_", name)
        if name == "default":
            out[CHAT] = template
        elif name:
            out[f"{CHAT}.{name}"] = template
            names.append(name)
    if names:
        out[CHAT_NAMES] = names
    return out


def _config_adds(config: dict[str, Any]) -> dict[str, Any]:
    """``add_bos_token``/``add_eos_token`` where ``tokenizer_config.json`` states them."""
    return {
        PREFIX + key: config[key]
        for key in ("add_bos_token", "add_eos_token")
        if isinstance(config.get(key), bool)
    }


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
    config_path: Path | str = "tokenizer_config.json",
) -> dict[str, Any]:
    """``tokenizer.json`` (+ ``tokenizer_config.json``) → ``tokenizer.ggml.*`` keys: a
    byte-level BPE as llama.cpp's "gpt2" vocabulary, a SentencePiece BPE (byte fallback) as
    its "llama" one.

    A special id that ``tokenizer_config.json`` does not give comes from the model's
    ``config.json`` (``bos_token_id``...), as gguf-py's SpecialVocab does."""
    model = data.get("model") or {}
    if model.get("type") != "BPE":
        raise TokenizerError(
            path, f"tokenizer model {model.get('type')!r} (only BPE is supported)", field="model"
        )
    if is_sentencepiece(data):
        out, ids = spm_from_hf(data, vocab_size, path)
        check_config_prefix(out, config, config_path)
    else:
        out, ids = _byte_level(data, vocab_size, path)
    n = len(out[PREFIX + "tokens"])
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
    strips = added_token_strips(data)
    if strips:
        out[STRIPS] = strips
    out.update(chat_template_keys(config, config_path))
    return out


#: HF added tokens that take the whitespace beside them: ``"rstrip <|end|>"``... (no GGUF key
#: of llama.cpp says this: it strips by model name only, for Phi-3)
STRIPS = PREFIX + "added_token_strip"
STRIP_FLAGS = ("lstrip", "rstrip", "single_word")


def added_token_strips(data: dict[str, Any]) -> list[str]:
    """``"FLAG TOKEN"`` for each flag set on an added token of ``tokenizer.json``: HF then
    takes the whitespace before (lstrip) or after (rstrip) it, or matches it only as a whole
    word, where llama.cpp's file format has nowhere to say so."""
    return [
        f"{flag} {t['content']}"
        for t in data.get("added_tokens") or []
        if isinstance(t, dict) and isinstance(t.get("content"), str)
        for flag in STRIP_FLAGS
        if t.get(flag) is True
    ]


def _byte_level(
    data: dict[str, Any], vocab_size: int | None, path: Path | str
) -> tuple[dict[str, Any], dict[str, int]]:
    """A byte-level BPE (Qwen2, Llama 3) → (llama.cpp's "gpt2" vocabulary keys, text → id)."""
    model = data.get("model") or {}
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
    if adds_prefix_space(data):
        out[PREFIX + "add_space_prefix"] = True  # llama.cpp reads it for SentencePiece only
    return out, ids


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
    strips = [x for x in tok.get(STRIPS) or [] if isinstance(x, str)]
    if strips:
        gaps.append(
            f"tokenizer: HF takes the whitespace around {len(strips)} added token flag(s) "
            f"({', '.join(strips[:4])}{', ...' if len(strips) > 4 else ''}); a GGUF has no "
            "key for that and llama.cpp strips only by model name (Phi-3: general.name "
            "holding 'phi3' or 'phi-3'), so ids beside those tokens may differ"
        )
    scheme = _field(tok, "prepend_scheme")
    if _field(tok, "model") == "llama" and scheme in ("always", "first"):
        gaps.append(
            f"tokenizer: its Metaspace pre-tokenizer (prepend_scheme {scheme!r}, kept as "
            "tokenizer.ggml.prepend_scheme) puts '▁' before a run of text only where it does "
            "not start with a space"
            + (", and only at the start of the text" if scheme == "first" else "")
            + "; llama.cpp's SentencePiece tokenizer (add_space_prefix) puts one before every "
            "run, after every special or user-defined token too, so the first token of a text "
            "that starts with a space"
            + (", and the first token after each special token," if scheme == "first" else "")
            + " will differ (HF: ' hi' -> '▁hi'; llama.cpp: '▁▁hi' or '▁▁' 'hi')"
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
    "add_space_prefix",
    "prepend_scheme",
)
#: list fields compared element by element, reported at the first difference
LISTS = ("tokens", "merges", "token_type", "scores")


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


def effective_space_prefix(tok: dict[str, Any]) -> bool:
    """Does the tokenizer put "▁"/" " before a text? The explicit key where there is one,
    else llama.cpp's default: true for a SentencePiece ("llama") vocabulary, false for BPE."""
    value = _field(tok, "add_space_prefix")
    return value if isinstance(value, bool) else _field(tok, "model") == "llama"


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
        if name == "add_space_prefix":
            sa, sb = effective_space_prefix(a), effective_space_prefix(b)
            if sa != sb:
                out.append(f"{name}: {sa!r} vs {sb!r}" + _said(a, b, name))
            continue
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
    out.extend(_compare_chat_templates(a, b))
    if out:
        example = _example(a, b)
        if example:
            out.append(example)
    return out


def _compare_chat_templates(a: dict[str, Any], b: dict[str, Any]) -> list[str]:
    """One line per chat template key that differs (present on one side only, or another
    text: where the texts first part)."""
    out = []
    for key in sorted(k for k in {*a, *b} if k == CHAT or k.startswith(CHAT + ".")):
        va, vb = a.get(key), b.get(key)
        if va == vb:
            continue
        if va is None or vb is None:
            out.append(
                f"{key}: {'missing' if va is None else 'present'} vs "
                f"{'missing' if vb is None else 'present'}"
            )
            continue
        at = next((i for i, (x, y) in enumerate(zip(va, vb, strict=False)) if x != y), None)
        at = min(len(va), len(vb)) if at is None else at
        out.append(
            f"{key}: differs at character {at}: {va[at : at + 40]!r} vs {vb[at : at + 40]!r}"
        )
    if a.get(CHAT_NAMES) != b.get(CHAT_NAMES):
        out.append(f"{CHAT_NAMES}: {a.get(CHAT_NAMES)!r} vs {b.get(CHAT_NAMES)!r}")
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
    if _field(tok, "model") == "llama":
        return spm_to_hf(tok).to_str(), _hf_config(tok)
    if _field(tok, "model") != "gpt2":
        raise TokenizerError(
            "tokenizer.ggml.model",
            f"{_field(tok, 'model')!r} cannot be written as tokenizer.json (only the gpt2 "
            "BPE and llama SentencePiece vocabularies)",
        )
    return _byte_level_body(tok), _hf_config(tok)


def _byte_level_body(tok: dict[str, Any]) -> str:
    """``tokenizer.json`` text of a "gpt2" vocabulary."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers

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
    out.add_tokens(added_tokens(tok, tokens, types, kept))
    return str(out.to_str())


def _hf_config(tok: dict[str, Any]) -> dict[str, Any]:
    """``tokenizer_config.json``: special tokens by text, the add flags, the chat template
    (a string, or a list of ``{name, template}`` where there are named ones)."""
    tokens = list(_field(tok, "tokens") or [])
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
    names = tok.get(CHAT_NAMES)
    if isinstance(names, list) and names:
        default = [{"name": "default", "template": tok[CHAT]}] if CHAT in tok else []
        config["chat_template"] = default + [
            {"name": n, "template": tok[f"{CHAT}.{n}"]} for n in names if f"{CHAT}.{n}" in tok
        ]
    elif isinstance(tok.get(CHAT), str):
        config["chat_template"] = tok[CHAT]
    return config


# --- SentencePiece (Llama 2, Mistral, Phi-3, Gemma) as llama.cpp's "llama" vocabulary ---
# (in this module, not one of its own: both halves share the types, the error and the keys,
# and a second module would import this one while this one dispatches to it: a cycle)
#
# Their ``tokenizer.json`` is a BPE with ``byte_fallback``: text has its spaces written "▁"
# (by a normalizer, or a Metaspace pre-tokenizer), one "▁" put before it or not, and is merged
# with no further split; a character outside the vocabulary becomes its ``<0xNN>`` byte tokens.
# llama.cpp runs that as ``tokenizer.ggml.model = "llama"``: it merges any two neighbours whose
# text is a token, the one with the highest *score* first (leftmost on ties), and never reads a
# merge list. So the scores carry the merge order: a token made by a merge scores minus the
# rank of the first merge that makes it, as SentencePiece scores its BPE pieces (its piece ``i``
# scores ``-i``); the characters follow in id order. That is exact only where the merge list
# is complete (every split of a token into two tokens) and each token's merges are neighbours,
# as transformers' converter writes them; a list that is not is an error. ``<0xNN>`` tokens
# are BYTE, the model's ``unk_token`` UNKNOWN, added tokens CONTROL (special) or USER_DEFINED;
# a shape of normalizer or pre-tokenizer not reasoned about here is an error naming it.
#
# ``tokenizer.model`` alone (no ``tokenizer.json``) is read with the optional ``sentencepiece``
# package, imported only then, as llama.cpp's ``_create_vocab_sentencepiece`` reads it.

SPACE = "\u2581"
BYTE_PIECE = re.compile(r"<0x[0-9A-Fa-f]{2}>")
#: llama.cpp's converter scores: padding rows and added tokens
PAD_SCORE, ADDED_SCORE = -10000.0, -1000.0
#: Metaspace prepend schemes (HF's); llama.cpp runs neither "always" nor "first" exactly
SCHEMES = ("always", "first", "never")
PREPEND_KEY = PREFIX + "prepend_scheme"


def is_sentencepiece(data: dict[str, Any]) -> bool:
    """A BPE with byte fallback: a SentencePiece model in ``tokenizer.json`` form."""
    model = data.get("model")
    return (
        isinstance(model, dict)
        and model.get("type") == "BPE"
        and model.get("byte_fallback") is True
    )


def _is_replace_space(step: Any) -> bool:
    """``Replace(" ", "▁")``: the normalizer every SentencePiece ``tokenizer.json`` has."""
    return (
        isinstance(step, dict)
        and step.get("type") == "Replace"
        and step.get("pattern") == {"String": " "}
        and step.get("content") == SPACE
    )


def _is_prepend_space(step: Any) -> bool:
    return isinstance(step, dict) and step.get("type") == "Prepend" and step.get("prepend") == SPACE


def _is_noop_split(step: Any) -> bool:
    """Gemma's ``Split(" ", MergedWithPrevious)``: after ``Replace(" ", "▁")`` no space is
    left to split on, so it changes nothing."""
    return (
        isinstance(step, dict)
        and step.get("type") == "Split"
        and step.get("pattern") == {"String": " "}
        and step.get("behavior") == "MergedWithPrevious"
    )


def _metaspace_scheme(step: dict[str, Any], path: Path | str) -> str:
    """The prepend scheme of a Metaspace that does not split (llama.cpp never splits)."""
    if step.get("replacement") != SPACE or step.get("split") is True:
        raise TokenizerError(
            path,
            f"Metaspace {json.dumps(step)[:200]} (llama.cpp's SentencePiece tokenizer writes "
            "spaces as '▁' and merges across them: replacement '▁' and split false only)",
            field="pre_tokenizer",
        )
    scheme = step.get("prepend_scheme")
    if scheme is None and isinstance(step.get("add_prefix_space"), bool):
        scheme = "always" if step["add_prefix_space"] else "never"  # tokenizers < 0.19
    if scheme not in SCHEMES:
        raise TokenizerError(
            path, f"Metaspace prepend_scheme {scheme!r} (known: {SCHEMES})", field="pre_tokenizer"
        )
    return str(scheme)


def prepend_scheme(data: dict[str, Any], path: Path | str) -> str:
    """How the tokenizer puts a "▁" before text: "legacy" (a ``Prepend("▁")`` normalizer:
    before every run of text, after special tokens too, even one that starts with a space:
    exactly llama.cpp's ``add_space_prefix``), "never" (Gemma), or a Metaspace scheme,
    "always" or "first" (HF puts none where the run already starts with "▁", and "first"
    only at the text's start: llama.cpp cannot say either). Two shapes are known:
    ``Replace(" ", "▁")`` as normalizer, with ``Prepend("▁")`` before it or not (Llama 2,
    Gemma), and a Metaspace pre-tokenizer with no normalizer (newer Llama/Mistral files)."""
    norm = list(_parts(data.get("normalizer"), "normalizers"))
    pre = list(_parts(data.get("pre_tokenizer"), "pretokenizers"))
    if norm and _is_replace_space(norm[-1]) and all(_is_prepend_space(s) for s in norm[:-1]):
        if len(norm) > 2:
            raise TokenizerError(path, "more than one Prepend('▁')", field="normalizer")
        if not all(_is_noop_split(s) for s in pre):
            raise TokenizerError(
                path,
                f"unknown pre-tokenizer {json.dumps(data.get('pre_tokenizer'))[:200]} after "
                "Replace(' ', '▁') (llama.cpp's SentencePiece tokenizer does not split)",
                field="pre_tokenizer",
            )
        return "legacy" if len(norm) == 2 else "never"
    metaspace = len(pre) == 1 and isinstance(pre[0], dict) and pre[0].get("type") == "Metaspace"
    if not norm and metaspace:
        return _metaspace_scheme(pre[0], path)
    field = "normalizer" if norm else "pre_tokenizer"
    raise TokenizerError(
        path,
        f"unknown SentencePiece {field} {json.dumps(data.get(field))[:200]} (known: "
        "Replace(' ', '▁') with or without Prepend('▁'), or a Metaspace pre-tokenizer)",
        field=field,
    )


def _merge_products(merges: list[Any], vocab: dict[str, int], path: Path | str) -> list[str]:
    """The tokens merges make, in the order of the first merge making each (HF's priority).
    The merges that make one token must be neighbours in the list: llama.cpp ranks by the
    token made, so another token's merge between them would be ranked otherwise."""
    seen: dict[str, None] = {}
    last = None
    for merge in merges:
        pair = merge.split(" ", 1) if isinstance(merge, str) else merge
        if not (isinstance(pair, list | tuple) and len(pair) == 2):
            raise TokenizerError(path, f"merge {merge!r} is not a pair", field="model.merges")
        made = f"{pair[0]}{pair[1]}"
        if made not in vocab:
            raise TokenizerError(
                path, f"merge {merge!r} makes {made!r}, not in the vocabulary", field="model.merges"
            )
        if made != last and made in seen:
            raise TokenizerError(
                path,
                f"merge {merge!r} makes {made!r} apart from the other merges making it; "
                "llama.cpp ranks merges by the token they make (its score)",
                field="model.merges",
            )
        seen.setdefault(made, None)
        last = made
    return list(seen)


def _check_complete(normal: dict[int, str], merges: list[Any], path: Path | str) -> None:
    """Every split of a NORMAL token into two NORMAL tokens is a merge: llama.cpp merges any
    two neighbours whose text is a token, HF only the pairs its list names."""
    pairs = {tuple(m.split(" ", 1)) if isinstance(m, str) else tuple(m) for m in merges}
    texts = set(normal.values())
    for text in normal.values():
        for cut in range(1, len(text)):
            left, right = text[:cut], text[cut:]
            if left in texts and right in texts and (left, right) not in pairs:
                raise TokenizerError(
                    path,
                    f"no merge {left!r} + {right!r} though {text!r} is a token: llama.cpp "
                    "merges any two neighbours that make a token, HF only the listed pairs",
                    field="model.merges",
                )


def spm_scores(
    normal: dict[int, str], vocab: dict[str, int], merges: list[Any], path: Path | str
) -> dict[int, float]:
    """Scores of the NORMAL tokens under which llama.cpp merges as HF's merge list does:
    minus the merge rank for the tokens merges make (SentencePiece's own scores for its BPE
    pieces), then the remaining ones (characters) in id order, as SentencePiece ranks them."""
    made = _merge_products(merges, vocab, path)
    _check_complete(normal, merges, path)
    out = {vocab[t]: -float(rank) for rank, t in enumerate(made)}
    rest = sorted(i for i in normal if i not in out)
    out.update({i: -float(len(made) + k) for k, i in enumerate(rest)})
    return out


def spm_from_hf(
    data: dict[str, Any], vocab_size: int | None, path: Path | str
) -> tuple[dict[str, Any], dict[str, int]]:
    """``tokenizer.json`` of a SentencePiece BPE → (the "llama" vocabulary keys, text → id)."""
    model = data["model"]
    vocab = model.get("vocab")
    if not isinstance(vocab, dict):
        raise TokenizerError(path, "model.vocab is not an object", field="model.vocab")
    ids: dict[str, int] = dict(vocab)
    added = {t["content"]: t for t in data.get("added_tokens") or []}
    for content, token in added.items():
        ids[content] = int(token["id"])
    by_id = {i: t for t, i in ids.items()}
    unk = model.get("unk_token")
    n = max(vocab_size or 0, max(by_id, default=-1) + 1)
    types = [_kind(by_id.get(i), added, unk) for i in range(n)]
    normal = {i: t for i, t in by_id.items() if types[i] == NORMAL}
    score = spm_scores(normal, dict(vocab), list(model.get("merges") or []), path)
    tokens, values = [], []
    for i in range(n):
        text = by_id.get(i)
        if text is None:
            text, value = f"[PAD{i}]", PAD_SCORE
        elif types[i] in (CONTROL, USER_DEFINED):
            value = ADDED_SCORE  # as llama.cpp's converter scores added tokens
        else:
            value = score.get(i, 0.0)  # SentencePiece scores byte and unknown pieces 0
        tokens.append(text)
        values.append(value)
    scheme = prepend_scheme(data, path)
    out = llama_vocab(tokens, values, types, add_space_prefix=scheme != "never")
    if scheme in ("always", "first"):
        out[PREPEND_KEY] = scheme  # what llama.cpp cannot run: kept for the notes and to_hf
    if isinstance(unk, str) and unk in ids:
        out[PREFIX + "unknown_token_id"] = ids[unk]
    return out, ids


def llama_vocab(
    tokens: list[str], scores: list[float], types: list[int], add_space_prefix: bool
) -> dict[str, Any]:
    """llama.cpp's SentencePiece vocabulary ("llama") as GGUF keys, from either source
    (tokenizer.json's BPE with byte fallback, or tokenizer.model)."""
    return {
        PREFIX + "model": "llama",
        PREFIX + "pre": "default",
        PREFIX + "tokens": tokens,
        PREFIX + "scores": scores,
        PREFIX + "token_type": types,
        PREFIX + "add_space_prefix": add_space_prefix,
    }


def _kind(text: str | None, added: dict[str, Any], unk: Any) -> int:
    """llama.cpp's token type: added tokens first (as its converter reads
    ``added_tokens_decoder``), then the unknown piece and ``<0xNN>`` bytes."""
    if text is None:
        return UNUSED
    if text in added:
        return CONTROL if added[text].get("special") else USER_DEFINED
    if text == unk:
        return UNKNOWN
    if BYTE_PIECE.fullmatch(text):
        return BYTE
    return NORMAL


def merges_from_scores(
    tokens: list[str], scores_: list[float], types: list[int]
) -> list[tuple[str, str]]:
    """The merge list HF needs for what llama.cpp does with scores: every split of a NORMAL
    token into two tokens, highest score first, as transformers' converter writes them."""
    index = {t: i for i, t in enumerate(tokens) if types[i] != UNUSED}
    found = []
    for i, text in enumerate(tokens):
        if types[i] != NORMAL:
            continue
        for cut in range(1, len(text)):
            left, right = text[:cut], text[cut:]
            if left in index and right in index:
                found.append((-scores_[i], i, index[left], index[right], left, right))
    return [(f[4], f[5]) for f in sorted(found)]


def spm_to_hf(tok: dict[str, Any]) -> Any:
    """A ``tokenizers.Tokenizer`` that tokenizes as llama.cpp runs this "llama" vocabulary."""
    from tokenizers import Tokenizer, decoders, models, normalizers

    tokens = list(_field(tok, "tokens") or [])
    types = list(_field(tok, "token_type") or [NORMAL] * len(tokens))
    values = list(_field(tok, "scores") or [])
    if len(values) != len(tokens) or len(types) != len(tokens):
        raise TokenizerError(
            "tokenizer.ggml.scores",
            f"{len(tokens)} tokens, {len(values)} scores, {len(types)} types: a llama "
            "vocabulary needs one score and one type per token",
        )
    kept = [i for i, kind in enumerate(types) if kind != UNUSED]
    vocab = {tokens[i]: i for i in kept}
    unk = next((tokens[i] for i in kept if types[i] == UNKNOWN), None)
    unk_id = _field(tok, "unknown_token_id")
    if unk is None and isinstance(unk_id, int) and 0 <= unk_id < len(tokens):
        unk = tokens[unk_id]
    merges = merges_from_scores(tokens, values, types)
    out = Tokenizer(
        models.BPE(vocab=vocab, merges=merges, unk_token=unk, fuse_unk=True, byte_fallback=True)
    )
    space = _field(tok, "add_space_prefix") is not False  # llama.cpp's default: true
    scheme = tok.get(PREPEND_KEY)
    if space and scheme in ("always", "first"):  # the source's Metaspace, as it was
        from tokenizers import pre_tokenizers

        out.pre_tokenizer = pre_tokenizers.Metaspace(SPACE, prepend_scheme=scheme, split=False)
    else:  # llama.cpp's own: "▁" before every run of text, or never
        steps = [normalizers.Replace(" ", SPACE)]
        out.normalizer = normalizers.Sequence(
            [normalizers.Prepend(SPACE), *steps] if space else steps
        )
    parts = [decoders.Replace(SPACE, " "), decoders.ByteFallback(), decoders.Fuse()]
    out.decoder = decoders.Sequence([*parts, decoders.Strip(" ", 1, 0)] if space else parts)
    out.add_tokens(added_tokens(tok, tokens, types, kept))
    _post_processor(out, tok, tokens)
    return out


def _post_processor(out: Any, tok: dict[str, Any], tokens: list[str]) -> None:
    """BOS/EOS around a sequence as llama.cpp adds them, so HF adds the same."""
    from tokenizers import processors

    ends = []
    for which, key in (("bos", "bos_token_id"), ("eos", "eos_token_id")):
        token_id = _field(tok, key)
        ok = isinstance(token_id, int) and 0 <= token_id < len(tokens)
        ends.append((tokens[token_id], token_id) if ok and effective_add(tok, which) else None)
    bos, eos = ends
    if bos is None and eos is None:
        return
    head, tail = [bos[0]] if bos else [], [eos[0]] if eos else []
    single = " ".join([*head, "$A", *tail])
    pair = " ".join([*head, "$A", *tail, *head, "$B", *tail])
    out.post_processor = processors.TemplateProcessing(
        single=single, pair=pair, special_tokens=sorted({e for e in ends if e})
    )


def read_model_file(path: Path, vocab_size: int | None) -> dict[str, Any]:
    """``tokenizer.model`` (no ``tokenizer.json`` beside it) as llama.cpp's converter reads it:
    pieces, scores and types from SentencePiece itself; ``add_space_prefix`` from whether it
    puts "▁" before a text. Needs the optional ``sentencepiece`` package."""
    try:
        import sentencepiece
    except ImportError:
        raise TokenizerError(
            path, "no tokenizer.json beside it, and reading it needs the sentencepiece package"
        ) from None
    sp = sentencepiece.SentencePieceProcessor()
    try:
        sp.LoadFromSerializedProto(path.read_bytes())
    except (OSError, RuntimeError) as exc:
        raise TokenizerError(path, f"not a SentencePiece model: {exc}") from None
    n = max(vocab_size or 0, sp.vocab_size())
    tokens = [f"[PAD{i}]" for i in range(n)]
    values, types = [PAD_SCORE] * n, [UNUSED] * n
    for i in range(sp.vocab_size()):
        tokens[i], values[i] = sp.id_to_piece(i), float(sp.get_score(i))
        types[i] = (
            UNKNOWN
            if sp.is_unknown(i)
            else CONTROL
            if sp.is_control(i)
            else UNUSED
            if sp.is_unused(i)
            else BYTE
            if sp.is_byte(i)
            else NORMAL
        )
    pieces = sp.encode("a", out_type=str)
    out = llama_vocab(tokens, values, types, bool(pieces) and pieces[0].startswith(SPACE))
    for key, value in (
        ("bos_token_id", sp.bos_id()),
        ("eos_token_id", sp.eos_id()),
        ("unknown_token_id", sp.unk_id()),
        ("padding_token_id", sp.pad_id()),
    ):
        if 0 <= value < n:
            out[PREFIX + key] = value
    return out


def apply_added_tokens_decoder(
    tok: dict[str, Any], config: dict[str, Any], path: Path | str
) -> dict[str, Any]:
    """``tokenizer_config.json``'s ``added_tokens_decoder`` over a vocabulary read from
    ``tokenizer.model``, as llama.cpp's converter applies it: each id in range becomes its
    text, CONTROL where special else USER_DEFINED, scored -1000."""
    added = config.get("added_tokens_decoder") or {}
    if not isinstance(added, dict):
        raise TokenizerError(
            path, "added_tokens_decoder is not an object", field="added_tokens_decoder"
        )
    tokens = list(tok[PREFIX + "tokens"])
    types, values = list(tok[PREFIX + "token_type"]), list(tok[PREFIX + "scores"])
    for key, entry in added.items():
        if not (
            str(key).isdigit() and isinstance(entry, dict) and isinstance(entry.get("content"), str)
        ):
            raise TokenizerError(
                path, f"added_tokens_decoder entry {key!r}", field="added_tokens_decoder"
            )
        i = int(key)
        if i < len(tokens):
            tokens[i], values[i] = entry["content"], ADDED_SCORE
            types[i] = CONTROL if entry.get("special") else USER_DEFINED
    return {
        **tok,
        PREFIX + "tokens": tokens,
        PREFIX + "token_type": types,
        PREFIX + "scores": values,
    }


def check_config_prefix(tok: dict[str, Any], config: dict[str, Any], path: Path | str) -> None:
    """A ``tokenizer_config.json`` ``add_prefix_space`` that says otherwise than the
    tokenizer.json (llama.cpp's Llama converter writes the config's) is an error: which one
    transformers runs depends on its version, and every first token hangs on it."""
    said = config.get("add_prefix_space")
    does = tok.get(PREFIX + "add_space_prefix")
    if isinstance(said, bool) and isinstance(does, bool) and said != does:
        raise TokenizerError(
            path,
            f"add_prefix_space {said} where tokenizer.json puts '▁' before the text: {does}",
            field="add_prefix_space",
        )


def added_tokens(
    tok: dict[str, Any], tokens: list[str], types: list[int], kept: list[int]
) -> list[Any]:
    """CONTROL (special) and USER_DEFINED tokens as HF ``AddedToken`` s, with the whitespace
    flags the source's tokenizer.json gave them (``tokenizer.ggml.added_token_strip``)."""
    from tokenizers import AddedToken

    flags: dict[str, set[str]] = {}
    for entry in tok.get(STRIPS) or []:
        flag, _, text = str(entry).partition(" ")
        flags.setdefault(text, set()).add(flag)
    return [
        AddedToken(
            tokens[i],
            special=types[i] == CONTROL,
            normalized=False,
            **{flag: True for flag in flags.get(tokens[i], ()) if flag in STRIP_FLAGS},
        )
        for i in kept
        if types[i] in (CONTROL, USER_DEFINED)
    ]
