"""Token streams for training: a flat binary of ids (nanoGPT's ``train.bin``) or a ``.npy``.

A stream is checked against the model before a single step runs: an id at or above the
vocabulary would index past the embedding (an IndexError deep in the forward on CPU, a
device-side assert or silent garbage on a GPU), and a tokenizer with more entries than the
embedding has rows produced ids the model cannot hold.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

#: flat binary dtypes by name (the file carries no header, so the caller says which)
BINARY_DTYPES: dict[str, np.dtype[Any]] = {"uint16": np.dtype("<u2"), "uint32": np.dtype("<u4")}
NPY_MAGIC = b"\x93NUMPY"


class TokenDataError(ValueError):
    """A token file that is missing, malformed, or holds ids the model cannot take."""

    def __init__(self, path: Path | str, message: str) -> None:
        self.path = Path(path)
        super().__init__(f"{path}: {message}")


def load_tokens(path: Path | str, dtype: str = "uint16") -> np.ndarray:
    """The ids of ``path`` as a read-only 1-D memory map (``.npy`` told by its magic)."""
    path = Path(path)
    if not path.is_file():
        raise TokenDataError(path, "no such token file")
    with open(path, "rb") as fh:
        head = fh.read(len(NPY_MAGIC))
    if head == NPY_MAGIC:
        try:
            ids = np.load(path, mmap_mode="r", allow_pickle=False)
        except (ValueError, OSError) as exc:
            raise TokenDataError(path, f"unreadable .npy (truncated or corrupt): {exc}") from None
        if ids.ndim != 1 or ids.dtype.kind not in "iu":
            raise TokenDataError(
                path, f".npy holds {ids.dtype}{list(ids.shape)}; need a 1-D integer array"
            )
        if ids.dtype.kind == "i" and ids.size and int(ids.min()) < 0:
            raise TokenDataError(path, f"negative token id {int(ids.min())}")
    else:
        if dtype not in BINARY_DTYPES:
            raise TokenDataError(path, f"unknown token dtype {dtype!r}; uint16 or uint32")
        item = BINARY_DTYPES[dtype].itemsize
        size = path.stat().st_size
        if size % item:
            raise TokenDataError(
                path, f"{size} bytes is not a whole number of {dtype} ids (truncated?)"
            )
        ids = np.memmap(path, dtype=BINARY_DTYPES[dtype], mode="r") if size else np.zeros(0)
    if ids.size < 2:
        raise TokenDataError(path, f"{ids.size} token ids: too few to predict a next token")
    return ids


CHUNK = 1 << 24  # ids scanned at a time: a 9-billion-token train.bin is never copied whole


def check_ids(ids: np.ndarray, vocab_size: int, path: Path | str) -> None:
    """Refuse a stream with an id the embedding has no row for, naming the first one."""
    for start in range(0, len(ids), CHUNK):
        chunk = np.asarray(ids[start : start + CHUNK])
        if int(chunk.max()) < vocab_size:
            continue
        where = int(np.argmax(chunk >= vocab_size))
        raise TokenDataError(
            path,
            f"token id {int(chunk[where])} at position {start + where} is >= the model's "
            f"vocab_size {vocab_size}: the data was tokenized for another model",
        )


def tokenizer_size(tokenizer: dict[str, Any] | None, folder: Path | None = None) -> int | None:
    """Entries in the model's tokenizer: GGUF-style metadata, or ``tokenizer.json`` beside
    a safetensors file. ``None`` when the model carries no tokenizer."""
    if tokenizer and isinstance(tokenizer.get("tokenizer.ggml.tokens"), list):
        return len(tokenizer["tokenizer.ggml.tokens"])
    if folder is not None and (folder / "tokenizer.json").is_file():
        return tokenizer_json_size(folder / "tokenizer.json")
    return None


def tokenizer_json_size(path: Path) -> int:
    """Entries of an HF ``tokenizer.json``: the model vocabulary plus added tokens."""
    if not path.is_file():
        raise TokenDataError(path, "no such tokenizer file")
    try:
        from tokenizers import Tokenizer

        return Tokenizer.from_file(str(path)).get_vocab_size(with_added_tokens=True)
    except Exception as exc:  # the tokenizers library raises a bare Exception on bad JSON
        try:
            doc = json.loads(path.read_text(encoding="utf-8"))
            return len(doc["model"]["vocab"]) + len(doc.get("added_tokens", []))
        except (OSError, ValueError, KeyError, TypeError):
            raise TokenDataError(path, f"unreadable tokenizer: {exc}") from None


#: how many more embedding rows than tokenizer entries count as padding (Qwen2.5 pads
#: 151,665 entries to 151,936 rows, 0.18%; nanoGPT pads GPT-2's 50,257 to 50,304, 0.09%)
PADDING_SLACK = 0.01


def check_tokenizer(size: int | None, vocab_size: int, where: str) -> None:
    """The tokenizer must fit the embedding: no larger (it emits ids the model has no row
    for) and smaller only by padding (a 50,257-entry GPT-2 tokenizer in front of a
    151,936-row Qwen2 embedding makes valid ids that mean other tokens)."""
    if size is None:
        return
    if size > vocab_size or vocab_size - size > PADDING_SLACK * vocab_size:
        raise TokenDataError(
            where,
            f"tokenizer has {size} entries but the embedding has {vocab_size} rows "
            f"(vocab_size): the tokenizer belongs to another model",
        )
