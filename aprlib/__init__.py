"""aprlib: model files (APR, safetensors, GGUF), converters, a reference transformer, diff."""

from typing import Any

__version__ = "0.1.0"  # first: submodules import it

from aprlib.config import (
    ConfigError,
    ModelConfig,
    llama3_2_1b,
    qwen2_0_5b,
    qwen2_1_5b,
    qwen2_7b,
)
from aprlib.convert import convert, write_model
from aprlib.dtypes import DType
from aprlib.errors import ShapeMismatchError
from aprlib.io import model_from_arrays, open_model
from aprlib.shapes import check_weights_match, expected_shapes

#: torch-backed names, imported on first use so that file I/O never imports torch
_LAZY = {"Transformer": "aprlib.model", "Ops": "aprlib.model"}
_LAZY.update(dict.fromkeys(("FinetuneError", "InitLossError", "StepZero"), "aprlib.finetune"))


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'aprlib' has no attribute {name!r}")


__all__ = [
    "ConfigError",
    "DType",
    "FinetuneError",
    "InitLossError",
    "ModelConfig",
    "Ops",
    "ShapeMismatchError",
    "StepZero",
    "Transformer",
    "check_weights_match",
    "convert",
    "expected_shapes",
    "llama3_2_1b",
    "model_from_arrays",
    "open_model",
    "qwen2_0_5b",
    "qwen2_1_5b",
    "qwen2_7b",
    "write_model",
]
