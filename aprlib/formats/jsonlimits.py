"""JSON from a model file, with caps that hold before a byte is parsed.

``json.loads`` turns ``[[],[],...]`` into ~30 bytes of Python objects per input byte and
recurses once per nesting level: a 43 MB APR metadata block became 1.1 GB, and deep
nesting ended in a RecursionError traceback. Here the text is bounded in bytes, in items
(commas, colons and openers bound the number of values from above, so a count of them
caps the objects ``json.loads`` can build) and in depth; every failure is the caller's
typed error naming the file and the field.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from aprlib.errors import ModelFileError
from aprlib.formats.filesource import FileSource, paused_gc

MAX_DEPTH = 64
MAX_ITEMS = 2_000_000  # a 256k-token vocabulary with merges and types holds ~800k


class DuplicateKeyError(ValueError):
    """A JSON object that names the same key twice (which value wins is undefined)."""


def _reject_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise DuplicateKeyError(f"key {key!r} appears twice")
        out[key] = value
    return out


def _depth(value: Any) -> int:
    """Nesting depth, iteratively (no recursion on hostile input)."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        node, level = stack.pop()
        if isinstance(node, dict):
            node = list(node.values())
        if isinstance(node, list):
            deepest = max(deepest, level)
            if level <= MAX_DEPTH:
                stack.extend((child, level + 1) for child in node if isinstance(child, list | dict))
    return deepest


def load_json(
    data: bytes,
    path: Path | str,
    field: str,
    error: type[ModelFileError] = ModelFileError,
    max_bytes: int = 64 << 20,
    max_items: int | None = None,
) -> Any:
    """Parse ``data`` as UTF-8 JSON under the caps, or raise ``error`` naming ``field``."""
    max_items = MAX_ITEMS if max_items is None else max_items
    if len(data) > max_bytes:
        raise error(path, f"{len(data):,} bytes of JSON (at most {max_bytes:,})", field=field)
    items = data.count(b",") + data.count(b":") + data.count(b"[") + data.count(b"{")
    if items > max_items:
        raise error(path, f"JSON with up to {items:,} items (at most {max_items:,})", field=field)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise error(path, f"not UTF-8 (byte {exc.start})", field=field) from None
    try:
        with paused_gc():
            value = json.loads(text, object_pairs_hook=_reject_duplicates)
    except RecursionError:
        raise error(path, f"JSON nested deeper than {MAX_DEPTH} levels", field=field) from None
    except (json.JSONDecodeError, DuplicateKeyError) as exc:
        raise error(path, f"not valid JSON: {exc}", field=field) from None
    if _depth(value) > MAX_DEPTH:
        raise error(path, f"JSON nested deeper than {MAX_DEPTH} levels", field=field)
    return value


def read_json_file(
    path: Path,
    field: str,
    error: type[ModelFileError] = ModelFileError,
    max_bytes: int = 16 << 20,
) -> Any:
    """A small JSON file (config.json, an index): a regular file, capped, parsed."""

    with FileSource(path, error) as src:
        if src.size > max_bytes:
            raise error(path, f"{src.size:,} bytes (at most {max_bytes:,})", field=field)
        data = src.read(0, src.size, field=field).tobytes()
    return load_json(data, path, field, error, max_bytes)
