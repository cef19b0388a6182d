"""aprlib: model files (APR, safetensors, GGUF), converters, a reference transformer, diff.

The Python API: ``from aprlib import open_model, convert, write_model, diff_models,
model_from_arrays, Model, Tensor`` and the error classes. (``aprlib.convert`` is the
function; the converter module is ``aprlib.conversion``.)
"""

from typing import Any

__version__ = "0.1.0"  # first: submodules import it

import aprlib.convert  # noqa: F401 - load the alias module before the name means the function
from aprlib.config import (
    ConfigError,
    ModelConfig,
    llama3_2_1b,
    qwen2_0_5b,
    qwen2_1_5b,
    qwen2_7b,
)
from aprlib.conversion import convert, write_model
from aprlib.diff import diff_models
from aprlib.dtypes import DType
from aprlib.errors import (
    AprFormatError,
    ConversionError,
    FileChangedError,
    GgufFormatError,
    ModelFileError,
    ModelMemoryError,
    OracleCrashed,
    OracleError,
    OracleTimeout,
    SafetensorsFormatError,
    ShapeMismatchError,
)
from aprlib.io import open_model
from aprlib.modelfile import Model, Tensor, model_from_arrays
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
    "AprFormatError",
    "ConfigError",
    "ConversionError",
    "DType",
    "FileChangedError",
    "FinetuneError",
    "GgufFormatError",
    "InitLossError",
    "Model",
    "ModelConfig",
    "ModelFileError",
    "ModelMemoryError",
    "Ops",
    "OracleCrashed",
    "OracleError",
    "OracleTimeout",
    "SafetensorsFormatError",
    "ShapeMismatchError",
    "StepZero",
    "Tensor",
    "Transformer",
    "__version__",
    "check_weights_match",
    "convert",
    "diff_models",
    "expected_shapes",
    "llama3_2_1b",
    "model_from_arrays",
    "open_model",
    "qwen2_0_5b",
    "qwen2_1_5b",
    "qwen2_7b",
    "write_model",
]
