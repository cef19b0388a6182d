"""Gemma's norm weights in a GGUF: llama.cpp stores w + 1 where transformers stores w.

Gemma's RMSNorm multiplies by (1 + w); llama.cpp's graph multiplies by the stored weight,
so its converter writes w + 1 (``Family.norm_offset``). Our GGUF writer does the same, and
the reader takes the 1 back off, so every other format and every tool sees transformers'
w: a GGUF whose norms carry the 1 twice then diffs as SHIFTED by +1 against its source.

Adding 1 in float32 rounds away the low bits of a small w, so w + 1 alone does not give
w back. The rounding error of a float32 sum is itself a float32 (the TwoSum theorem);
where it is not zero, the writer keeps it, per tensor, under ``aprlib.norm_residual.NAME``
(llama.cpp ignores the key), and ``(stored - 1) + residual``, summed in float64, is w
exactly. A GGUF from llama.cpp's own converter has no residuals: its w is the stored
value minus 1, rounded to float32 (exact for bf16 sources, whose w + 1 fits float32).
"""

from __future__ import annotations

import numpy as np

RESIDUAL_KEY = "aprlib.norm_residual.{name}"


def is_offset_norm(name: str) -> bool:
    """Whether a tensor (HF name) is a norm weight a Gemma family stores with its offset."""
    return name.endswith("norm.weight")


def shifted(
    weights: np.ndarray, offset: float, stored: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """(float32 w + offset, the float32 residual that restores w from it).

    ``stored``: the float32 value the file will hold, when it is not w + offset in float32
    (rounded further to the file's dtype); the residual is then taken against it."""
    w = np.asarray(weights, dtype=np.float32)
    s = (w + np.float32(offset)).astype(np.float32) if stored is None else stored
    s = np.asarray(s, dtype=np.float32)
    r = (w.astype(np.float64) - (s.astype(np.float64) - offset)).astype(np.float32)
    return s, r


def unshifted(stored: np.ndarray, offset: float, residual: np.ndarray | None = None) -> np.ndarray:
    """w from the stored w + offset (and its residual, where the file keeps one)."""
    values = np.asarray(stored, dtype=np.float32).astype(np.float64) - offset
    if residual is not None:
        r = np.asarray(residual, dtype=np.float32).astype(np.float64)
        values = values + r
        values = np.where(values == 0, np.copysign(0.0, r), values)  # w = -0.0 stays -0.0
    return values.astype(np.float32)
