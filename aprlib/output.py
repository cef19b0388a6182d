"""What every format writer shares: the report it fills and the bytes each tensor gets.

dtypes are kept unless a target dtype is asked for (then 2-D weights whose rows fit the
block size are re-encoded; norms and biases keep their dtype, as llama.cpp does).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from aprlib import __version__
from aprlib.dtypes import DType, from_float32
from aprlib.modelfile import Model, Tensor

Progress = Callable[[str, int], None]  # (tensor name, bytes done) after each tensor


@dataclass
class ConvertReport:
    source: Path
    destination: Path
    source_format: str
    target_format: str
    tensors: int = 0
    bytes_written: int = 0
    notes: list[str] = field(default_factory=list)

    def advance(self, name: str, written: int, progress: Progress) -> None:
        self.tensors += 1
        self.bytes_written += written
        progress(name, self.bytes_written)


def output_dtype(t: Tensor, requested: DType | None) -> DType:
    if requested is None or requested == t.dtype:
        return t.dtype
    info = requested.info
    if info.quantized and (len(t.shape) != 2 or t.shape[-1] % info.block_elements):
        return t.dtype if not t.dtype.info.quantized else DType.F32
    return requested


def encode(t: Tensor, dtype: DType) -> np.ndarray:
    """The tensor's bytes in ``dtype`` (its own bytes, uncopied, when unchanged)."""
    if dtype == t.dtype:
        return t.raw()
    return from_float32(t.to_float32(), dtype)


def provenance(model: Model) -> dict[str, Any]:
    return {
        "source_file": model.path.name,
        "source_format": model.format,
        "converter": f"aprlib {__version__}",
    }
