"""llama.cpp as an outside oracle, through llama-cpp-python (a test extra).

``ggml_quantize_chunk`` and ``dequantize_row_*`` come from the ggml library that
llama-cpp-python builds and ships; ``logits`` runs a GGUF file in llama.cpp itself.
"""

from __future__ import annotations

import ctypes
import glob
import os
from functools import lru_cache
from pathlib import Path

import numpy as np
import pytest

GGML_TYPES = {"Q8_0": 8, "Q4_K": 12}
BLOCK = {"Q8_0": (32, 34), "Q4_K": (256, 144)}


def require_llama_cpp():
    return pytest.importorskip(
        "llama_cpp", reason="llama-cpp-python is not installed (pip install -e '.[test]' builds it)"
    )


@lru_cache(maxsize=1)
def _ggml_base() -> ctypes.CDLL:
    llama_cpp = require_llama_cpp()
    folder = os.path.join(os.path.dirname(llama_cpp.__file__), "lib")
    lib = ctypes.CDLL(sorted(glob.glob(os.path.join(folder, "libggml-base.*")))[0])
    lib.ggml_quantize_chunk.restype = ctypes.c_size_t
    lib.ggml_quantize_chunk.argtypes = [
        ctypes.c_int,
        ctypes.c_void_p,
        ctypes.c_void_p,
        ctypes.c_int64,
        ctypes.c_int64,
        ctypes.c_int64,
        ctypes.c_void_p,
    ]
    for name in ("dequantize_row_q8_0", "dequantize_row_q4_K"):
        fn = getattr(lib, name)
        fn.restype = None
        fn.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64]
    return lib


def ggml_quantize(values: np.ndarray, kind: str) -> np.ndarray:
    """llama.cpp's own quantiser: float32 [rows, cols] → uint8 [rows, row bytes]."""
    values = np.ascontiguousarray(values, dtype=np.float32)
    rows, cols = values.shape
    per, size = BLOCK[kind]
    out = np.zeros(rows * cols // per * size, dtype=np.uint8)
    written = _ggml_base().ggml_quantize_chunk(
        GGML_TYPES[kind], values.ctypes.data, out.ctypes.data, 0, rows, cols, None
    )
    assert written == out.size
    return out.reshape(rows, -1)


def ggml_dequantize(raw: np.ndarray, kind: str, count: int) -> np.ndarray:
    raw = np.ascontiguousarray(raw, dtype=np.uint8)
    out = np.zeros(count, dtype=np.float32)
    fn = {"Q8_0": _ggml_base().dequantize_row_q8_0, "Q4_K": _ggml_base().dequantize_row_q4_K}
    fn[kind](raw.ctypes.data, out.ctypes.data, count)
    return out


def logits(gguf_path: Path, tokens: list[int]) -> np.ndarray:
    """Logits at every position from llama.cpp, F32 KV cache (the F16 default adds ~1e-3)."""
    llama_cpp = require_llama_cpp()
    llm = llama_cpp.Llama(
        str(gguf_path), logits_all=True, type_k=0, type_v=0, n_ctx=64, n_threads=2, verbose=False
    )
    try:
        llm.eval(tokens)
        return np.array(llm.scores[: len(tokens)], dtype=np.float32)
    finally:
        llm.close()
