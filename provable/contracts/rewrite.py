"""Rewrite a contract's statuses in place, keeping every other byte as it was.

ruamel.yaml round-trips comments, key order and quoting, but not always every byte (it
writes ``~`` as an empty value, and its indentation is one global setting). So we dump the
document twice, before and after the change, and carry only the lines that the change
touched over onto the original text: what the change did not touch stays byte-identical.
"""

from __future__ import annotations

import difflib
import io
from collections.abc import Callable
from pathlib import Path
from typing import Any

from provable.contracts.atomic import write_atomic

#: (mapping, sequence, offset) layouts tried in turn, the common ones first
_INDENTS = (
    (2, 4, 2),
    (2, 2, 0),
    (4, 6, 4),
    (4, 4, 0),
    (4, 4, 2),
    (4, 8, 4),
    (4, 6, 2),
    (2, 4, 0),
    (3, 5, 3),
    (4, 8, 0),
)


class RewriteError(Exception):
    """The contract cannot be rewritten safely (it is left untouched)."""


def _yaml(indent: tuple[int, int, int]) -> Any:
    from ruamel.yaml import YAML

    yaml = YAML(typ="rt")
    yaml.preserve_quotes = True
    yaml.width = 4096  # never re-wrap a long line
    mapping, sequence, offset = indent
    yaml.indent(mapping=mapping, sequence=sequence, offset=offset)
    return yaml


def _dump(yaml: Any, doc: Any) -> str:
    out = io.StringIO()
    yaml.dump(doc, out)
    return out.getvalue()


def _best_indent(original: str) -> tuple[Any, Any, str]:
    """The indentation whose unchanged dump is closest to the original (usually identical)."""
    best = None
    for indent in _INDENTS:
        yaml = _yaml(indent)
        doc = yaml.load(original)
        base = _dump(yaml, doc)
        if base == original:
            return yaml, doc, base
        changed = sum(
            1 for a, b in zip(original.splitlines(), base.splitlines(), strict=False) if a != b
        )
        if best is None or changed < best[0]:
            best = (changed, yaml, doc, base)
    assert best is not None
    return best[1], best[2], best[3]


def rewrite_text(original: str, mutate: Callable[[Any], None]) -> str:
    """Apply ``mutate`` to the round-trip document and return the new text."""
    from ruamel.yaml.error import YAMLError

    if "\r\n" in original:  # CRLF files stay CRLF: edit the LF form, convert back
        lf = original.replace("\r\n", "\n")
        return rewrite_text(lf, mutate).replace("\n", "\r\n")
    if original and not original.endswith("\n"):
        original += "\n"  # ruamel always ends with one; align the last line with it
    try:
        yaml, doc, base = _best_indent(original)
        mutate(doc)
        new = _dump(yaml, doc)
    except YAMLError as exc:
        raise RewriteError(f"cannot round-trip: {exc}") from None
    if base == original:
        return new
    original_lines = original.splitlines(keepends=True)
    base_lines = base.splitlines(keepends=True)
    if len(original_lines) != len(base_lines):
        return new  # cannot align: fall back to the round-trip dump
    new_lines = new.splitlines(keepends=True)
    out: list[str] = []
    matcher = difflib.SequenceMatcher(None, base_lines, new_lines, autojunk=False)
    for tag, i1, i2, j1, j2 in matcher.get_opcodes():
        out.extend(original_lines[i1:i2] if tag == "equal" else new_lines[j1:j2])
    return "".join(out)


def rewrite_file(path: Path, mutate: Callable[[Any], None]) -> bool:
    """Rewrite ``path`` atomically; True when its bytes changed. Caller holds the lock."""
    original = Path(path).read_bytes().decode("utf-8")  # bytes: keep CRLF line ends
    new = rewrite_text(original, mutate)
    if new == original:
        return False
    write_atomic(path, new)
    return True


# --- edits of a round-trip contract document --------------------------------------------


def _split_tail(cmap: Any, key: Any) -> Any:
    """Detach the comment/blank lines that follow ``key``'s line; keep its inline comment."""
    from ruamel.yaml.tokens import CommentToken

    entry = cmap.ca.items.get(key)
    if not entry or len(entry) < 3 or entry[2] is None:
        return None
    token = entry[2]
    value = token.value
    newline = value.find("\n")
    if newline < 0 or newline == len(value) - 1:
        return None  # nothing after this line
    head, tail = value[: newline + 1], value[newline + 1 :]
    if head.strip():
        token.value = head  # the inline comment stays on its line
        # a token's first newline ends the line it is attached to
        return CommentToken("\n" + tail, token.start_mark, None)
    entry[2] = None
    return CommentToken(value, token.start_mark, None)


def _is_block_scalar(value: Any) -> bool:
    from ruamel.yaml.scalarstring import FoldedScalarString, LiteralScalarString

    return isinstance(value, (LiteralScalarString, FoldedScalarString))


def set_key(cmap: Any, key: str, value: Any, after: str | None = None) -> None:
    """Set ``cmap[key]``; a new key goes after ``after`` (or last) and inherits the blank
    lines and comments that followed that line, so the layout around it does not shift.

    A new key never goes after a trailing ``|``/``>`` block scalar: the blank lines that
    end such a scalar belong to it, and a key after them would sit apart from its mapping.
    """
    if key in cmap:
        cmap[key] = value
        return
    keys = list(cmap.keys())
    anchor = after if after in cmap else (keys[-1] if keys else None)
    if after not in cmap:
        while anchor is not None and _is_block_scalar(cmap[anchor]) and keys.index(anchor) > 0:
            anchor = keys[keys.index(anchor) - 1]
    position = keys.index(anchor) + 1 if anchor is not None else len(keys)
    tail = _split_tail(cmap, anchor) if anchor is not None else None
    cmap.insert(position, key, value)
    if tail is not None:
        cmap.ca.items[key] = [None, None, tail, None]


def quoted_like(old: Any, new: str) -> Any:
    """``new`` in the same quoting style as ``old`` (``"1.2.0"`` stays double-quoted)."""
    from ruamel.yaml.scalarstring import DoubleQuotedScalarString, SingleQuotedScalarString

    if isinstance(old, SingleQuotedScalarString):
        return SingleQuotedScalarString(new)
    if isinstance(old, DoubleQuotedScalarString) or old is None:
        return DoubleQuotedScalarString(new)
    return new


def append_changelog(doc: Any, entry: dict[str, str]) -> None:
    """Append an entry, in the style (flow or block) of the entries already there."""
    from ruamel.yaml.comments import CommentedMap, CommentedSeq
    from ruamel.yaml.scalarstring import DoubleQuotedScalarString

    item = CommentedMap((k, DoubleQuotedScalarString(v)) for k, v in entry.items())
    log = doc.get("changelog")
    if not isinstance(log, list):
        log = CommentedSeq()
        set_key(doc, "changelog", log)
    if log and hasattr(log[-1], "fa") and log[-1].fa.flow_style():
        item.fa.set_flow_style()
    if log and isinstance(log[-1], dict):
        last = log[-1]
        tail = _split_tail(last, list(last.keys())[-1]) if last else None
        log.append(item)
        if tail is not None:
            item.ca.items[list(item.keys())[-1]] = [None, None, tail, None]
    else:
        log.append(item)
