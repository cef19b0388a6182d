"""Reading a tensor as float32 rows a chunk at a time, so two whole models are never held at
once.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from aprlib.formats.dtypes import element_count, to_float32
from aprlib.formats.io import Tensor

CHUNK_ELEMENTS = 1 << 22  # per side per step: 16 MiB of float32


def rows_per_chunk(t: Tensor) -> int:
    row = element_count(t.shape[1:])
    if t.dtype.info.quantized and len(t.shape) < 2:
        return t.shape[0] if t.shape else 1
    return max(1, CHUNK_ELEMENTS // max(row, 1))


def chunks(t: Tensor, rows: int | None = None) -> Iterator[tuple[int, np.ndarray]]:
    """(first row, float32 rows) over the tensor, a chunk at a time."""
    if not t.shape or (len(t.shape) == 1 and t.dtype.info.quantized):
        yield 0, t.to_float32().reshape(t.shape or (1,))
        return
    raw = t.raw()
    n = t.shape[0]
    row_bytes = raw.size // n if n else 0
    step = rows or rows_per_chunk(t)
    by_row = raw.reshape(n, row_bytes) if n else raw.reshape(0, 0)
    for start in range(0, n, step):
        part = by_row[start : start + step]
        yield start, to_float32(part.reshape(-1), t.dtype, (part.shape[0], *t.shape[1:]))


def chunk_pairs(ta: Tensor, tb: Tensor) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
    rows = min(rows_per_chunk(ta), rows_per_chunk(tb))
    for (start, a), (_, b) in zip(chunks(ta, rows), chunks(tb, rows), strict=True):
        yield start, a, b
