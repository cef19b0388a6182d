"""Typed errors: each names the file, and the tensor and field where there is one."""

from __future__ import annotations

from pathlib import Path


class ModelFileError(Exception):
    """A model file that cannot be read as what it claims to be."""

    def __init__(
        self, path: Path | str, message: str, tensor: str | None = None, field: str | None = None
    ) -> None:
        self.path = Path(path)
        self.message = message
        self.tensor = tensor
        self.field = field
        super().__init__(str(self))

    def __str__(self) -> str:
        where = [str(self.path)]
        if self.tensor is not None:
            where.append(f"tensor {self.tensor!r}")
        if self.field is not None:
            where.append(f"field {self.field}")
        return f"{': '.join(where)}: {self.message}"


class AprFormatError(ModelFileError):
    """An APR file that is truncated, damaged, hostile or of another version."""


class SafetensorsFormatError(ModelFileError):
    """A safetensors file whose header or data does not hold together."""


class GgufFormatError(ModelFileError):
    """A GGUF file that the gguf reader rejects or that carries an unsupported tensor."""


class ConversionError(Exception):
    """A conversion that cannot be done faithfully (it leaves no output file)."""


class ShapeMismatchError(ModelFileError):
    """Weights whose shapes disagree with the config; names every mismatched field.

    ``mismatches`` holds ``(field, config value, weights value)`` for each one, so a loader
    fails before anything is truncated or broadcast.
    """

    def __init__(self, path: Path | str, mismatches: list[tuple[str, object, object]]) -> None:
        self.mismatches = mismatches
        text = "; ".join(f"{f}: config {c}, weights {w}" for f, c, w in mismatches)
        super().__init__(path, f"weights disagree with the config: {text}", field="config")
