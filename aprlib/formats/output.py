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

from aprlib.formats.dtypes import DType, from_float32, nbytes, to_float32
from aprlib.formats.modelfile import Model, Tensor
from aprlib.version import __version__

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
    fallbacks: list[dict[str, Any]] = field(default_factory=list)
    #: write F16/BF16 vectors as F32 in a GGUF, as llama.cpp needs (``apr convert`` does;
    #: ``write_model`` writes what it is given)
    llama_cpp_vectors: bool = False

    def as_dict(self) -> dict[str, Any]:
        return {
            "source": str(self.source),
            "destination": str(self.destination),
            "source_format": self.source_format,
            "target_format": self.target_format,
            "tensors": self.tensors,
            "bytes_written": self.bytes_written,
            "notes": self.notes,
            "fallbacks": self.fallbacks,
        }

    def advance(self, name: str, written: int, progress: Progress) -> None:
        self.tensors += 1
        self.bytes_written += written
        progress(name, self.bytes_written)


def output_dtype(t: Tensor, requested: DType | None) -> DType:
    """The dtype ``t`` is written in. Vectors (norms, biases) stay as they are, as in
    llama.cpp. A matrix whose rows are not whole blocks of the requested quantisation
    falls back as llama.cpp's ``llama_tensor_get_type`` does: a K-quant to a 32-element
    block type (llama.cpp's Q5_0 for Q4_K; Q8_0 is the one aprlib writes), else F16."""
    if requested is None or requested == t.dtype:
        return t.dtype
    info = requested.info
    if info.quantized and len(t.shape) != 2:
        return t.dtype if not t.dtype.info.quantized else DType.F32
    if info.quantized and t.shape[-1] % info.block_elements:
        if t.shape[-1] % DType.Q8_0.info.block_elements == 0:
            return DType.Q8_0
        return DType.F16
    return requested


def quant_fallbacks(tensors: list[Tensor], requested: DType | None) -> list[dict[str, Any]]:
    """The matrices that cannot take ``requested`` and what they get instead, and why."""
    if requested is None or not requested.info.quantized:
        return []
    out = []
    for t in tensors:
        got = output_dtype(t, requested)
        if len(t.shape) == 2 and got != requested and t.dtype != requested:
            out.append(
                {
                    "tensor": t.name,
                    "requested": requested.name,
                    "written": got.name,
                    "why": f"rows of {t.shape[-1]} elements are not whole "
                    f"{requested.info.block_elements}-element blocks",
                }
            )
    return out


#: elements per step when quantising a matrix: its float32 copy and the quantiser's
#: temporaries then cost tens of MB, not several times the tensor
ENCODE_CHUNK = 1 << 22


def encode(t: Tensor, dtype: DType) -> np.ndarray:
    """The tensor's bytes in ``dtype`` (its own bytes, uncopied, when unchanged). A matrix
    is quantised a band of rows at a time (blocks never cross rows: same bytes)."""
    if dtype == t.dtype:
        return t.raw()
    if not (dtype.info.quantized and len(t.shape) == 2 and t.shape[0] > 1):
        return from_float32(t.to_float32(), dtype)
    rows, cols = t.shape
    raw = t.raw()
    row_in, row_out = raw.size // rows, nbytes(dtype, (cols,))
    out = np.empty(rows * row_out, dtype=np.uint8)
    step = max(1, ENCODE_CHUNK // max(cols, 1))
    for r in range(0, rows, step):
        n = min(step, rows - r)
        values = to_float32(raw[r * row_in : (r + n) * row_in], t.dtype, (n, cols))
        out[r * row_out : (r + n) * row_out] = from_float32(values, dtype).reshape(-1)
    return out


def provenance(model: Model) -> dict[str, Any]:
    return {
        "source_file": model.path.name,
        "source_format": model.format,
        "converter": f"aprlib {__version__}",
    }
