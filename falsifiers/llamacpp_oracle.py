"""llama.cpp as an outside oracle, through llama-cpp-python (a test extra).

``ggml_quantize`` / ``ggml_dequantize`` call ``ggml_quantize_chunk`` and
``dequantize_row_*`` of the ggml library that llama-cpp-python builds and ships; ``logits``
runs a GGUF file in llama.cpp itself. All of them run in a child process
(``aprlib.forward.llamacpp``): a llama.cpp that dies (SIGILL on a CPU it was not built for) raises
``aprlib.OracleCrashed`` in the test, it does not take the pytest worker with it.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

from aprlib.forward import llamacpp
from aprlib.forward.llamacpp import BLOCK, GGML_TYPES

__all__ = ["BLOCK", "GGML_TYPES", "ggml_dequantize", "ggml_quantize", "logits", "require_llama_cpp"]


def require_llama_cpp() -> None:
    """Skip the test when llama-cpp-python is not installed (found, never imported here)."""
    if importlib.util.find_spec("llama_cpp") is None:
        pytest.skip("llama-cpp-python is not installed (pip install -e '.[test]' builds it)")


def ggml_quantize(values: np.ndarray, kind: str) -> np.ndarray:
    """llama.cpp's own quantiser: float32 [rows, cols] → uint8 [rows, row bytes]."""
    require_llama_cpp()
    return llamacpp.ggml_quantize(values, kind)


def ggml_dequantize(raw: np.ndarray, kind: str, count: int) -> np.ndarray:
    require_llama_cpp()
    return llamacpp.ggml_dequantize(raw, kind, count)


def logits(gguf_path: Path, tokens: list[int]) -> np.ndarray:
    """Logits at every position from llama.cpp, F32 KV cache (the F16 default adds ~1e-3)."""
    require_llama_cpp()
    return llamacpp.logits(gguf_path, tokens, n_ctx=64)
