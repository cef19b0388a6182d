"""aprlib: model files (APR, safetensors, GGUF), converters, a reference transformer, diff.

The Python API: ``from aprlib import open_model, convert, write_model, diff_models,
model_from_arrays, Model, Tensor`` and the error classes. Each name is imported on first
use, so ``apr --help`` and a script that only reads files never import the diff engine or
torch. Where each concern lives: docs/architecture.md.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

from aprlib.version import __version__

#: the documented API, name -> module
_API: dict[str, str] = {
    **dict.fromkeys(
        ("ConfigError", "ModelConfig", "llama3_2_1b", "qwen2_0_5b", "qwen2_1_5b", "qwen2_7b"),
        "aprlib.config.modelconfig",
    ),
    "convert": "aprlib.formats.conversion",
    "write_model": "aprlib.formats.conversion",
    "diff_models": "aprlib.compare.diff",
    "DType": "aprlib.formats.dtypes",
    **dict.fromkeys(
        (
            "AprFormatError",
            "ConversionError",
            "FileChangedError",
            "GgufFormatError",
            "ModelFileError",
            "ModelMemoryError",
            "OracleCrashed",
            "OracleError",
            "OracleTimeout",
            "SafetensorsFormatError",
            "ShapeMismatchError",
        ),
        "aprlib.errors",
    ),
    "open_model": "aprlib.formats.io",
    **dict.fromkeys(("Model", "Tensor", "model_from_arrays"), "aprlib.formats.modelfile"),
    **dict.fromkeys(("check_weights_match", "expected_shapes"), "aprlib.compare.shapes"),
    **dict.fromkeys(("Transformer", "Ops"), "aprlib.forward.model"),
    **dict.fromkeys(("BisectReport", "Side", "Tolerance", "bisect"), "aprlib.forward.bisect"),
    **dict.fromkeys(
        ("ActivationDump", "DumpError", "PointMap", "read_dump", "write_dump"),
        "aprlib.forward.dump",
    ),
    "bisect_module": "aprlib.forward.sides",
    **dict.fromkeys(
        ("MemoryPlan", "StreamChoice", "StreamedWeights", "choose_streaming", "memory_plan"),
        "aprlib.forward.weights",
    ),
    **dict.fromkeys(("FinetuneError", "InitLossError", "StepZero"), "aprlib.train.finetune"),
}

__all__ = [
    "ActivationDump",
    "AprFormatError",
    "BisectReport",
    "ConfigError",
    "ConversionError",
    "DType",
    "DumpError",
    "FileChangedError",
    "FinetuneError",
    "GgufFormatError",
    "InitLossError",
    "MemoryPlan",
    "Model",
    "ModelConfig",
    "ModelFileError",
    "ModelMemoryError",
    "Ops",
    "OracleCrashed",
    "OracleError",
    "OracleTimeout",
    "PointMap",
    "SafetensorsFormatError",
    "ShapeMismatchError",
    "Side",
    "StepZero",
    "StreamChoice",
    "StreamedWeights",
    "Tensor",
    "Tolerance",
    "Transformer",
    "__version__",
    "bisect",
    "bisect_module",
    "check_weights_match",
    "choose_streaming",
    "convert",
    "diff_models",
    "expected_shapes",
    "llama3_2_1b",
    "memory_plan",
    "model_from_arrays",
    "open_model",
    "qwen2_0_5b",
    "qwen2_1_5b",
    "qwen2_7b",
    "read_dump",
    "write_dump",
    "write_model",
]

if TYPE_CHECKING:
    from aprlib.compare.diff import diff_models
    from aprlib.compare.shapes import check_weights_match, expected_shapes
    from aprlib.config.modelconfig import (
        ConfigError,
        ModelConfig,
        llama3_2_1b,
        qwen2_0_5b,
        qwen2_1_5b,
        qwen2_7b,
    )
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
    from aprlib.formats.conversion import convert, write_model
    from aprlib.formats.dtypes import DType
    from aprlib.formats.io import open_model
    from aprlib.formats.modelfile import Model, Tensor, model_from_arrays
    from aprlib.forward.bisect import BisectReport, Side, Tolerance, bisect
    from aprlib.forward.dump import ActivationDump, DumpError, PointMap, read_dump, write_dump
    from aprlib.forward.model import Ops, Transformer
    from aprlib.forward.sides import bisect_module
    from aprlib.forward.weights import (
        MemoryPlan,
        StreamChoice,
        StreamedWeights,
        choose_streaming,
        memory_plan,
    )
    from aprlib.train.finetune import FinetuneError, InitLossError, StepZero


def __getattr__(name: str) -> Any:
    module = _API.get(name)
    if module is None:
        raise AttributeError(f"module 'aprlib' has no attribute {name!r}")
    value = getattr(import_module(module), name)
    globals()[name] = value  # the function, not the submodule, from now on
    return value


def __dir__() -> list[str]:
    """The module's own names and the API not yet imported (``__getattr__`` serves it)."""
    return sorted({*globals(), *__all__})
