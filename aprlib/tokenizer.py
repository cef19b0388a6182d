"""Tokenizers as GGUF carries them (``tokenizer.ggml.*``): the one form aprlib keeps.

APR metadata holds the same keys, so a GGUF → APR → GGUF trip is a copy. This module
compares two such tokenizers by meaning: the first token id whose text differs, the first
merge that differs, special ids and the pre-tokenizer, so a diff can say *which* part of
the vocabulary moved instead of "files identical".
"""

from __future__ import annotations

from typing import Any

PREFIX = "tokenizer.ggml."
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


def compare_tokenizers(a: dict[str, Any] | None, b: dict[str, Any] | None) -> list[str]:
    """One line per difference; empty when the two agree or either side has none (a file
    without a tokenizer is not a file with another tokenizer)."""
    if not a or not b:
        return []
    out = []
    for name in SCALARS:
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
    return out
