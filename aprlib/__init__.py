"""aprlib: model files (APR, safetensors, GGUF), converters, a reference transformer, diff.

The Python API: ``from aprlib import open_model, convert, write_model, diff_models,
model_from_arrays, Model, Tensor`` and the error classes. (``aprlib.convert`` is the
function; the converter module is ``aprlib.conversion``.)
"""

__version__ = "0.1.0"

import aprlib.convert  # noqa: F401 - load the alias module before the name means the function
from aprlib.conversion import convert, write_model
from aprlib.diff import diff_models
from aprlib.errors import (
    AprFormatError,
    ConversionError,
    GgufFormatError,
    ModelFileError,
    SafetensorsFormatError,
)
from aprlib.io import open_model
from aprlib.modelfile import Model, Tensor, model_from_arrays

__all__ = [
    "AprFormatError",
    "ConversionError",
    "GgufFormatError",
    "Model",
    "ModelFileError",
    "SafetensorsFormatError",
    "Tensor",
    "__version__",
    "convert",
    "diff_models",
    "model_from_arrays",
    "open_model",
    "write_model",
]
