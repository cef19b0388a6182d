"""A model file in canonical terms: ``Model`` holds ``Tensor``s under their HF names.

Every format module builds these; converters, ``apr diff`` and the reference model
consume them, so no consumer knows which format a tensor came from.
"""

from __future__ import annotations

import contextlib
import mmap
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from aprlib.config.modelconfig import ModelConfig
from aprlib.formats.dtypes import DType, nbytes, to_float32

#: what any tensor of any format may be (each format enforces these and its own limits)
MAX_TENSOR_NDIM = 8
MAX_TENSOR_DIM = 1 << 40
#: tensors in one model: the largest published checkpoints hold ~100k (per-expert
#: safetensors); 400k zero-size tensors were a hostile file that took minutes and GBs
MAX_TENSORS = 1 << 17

EMBED = "model.embed_tokens.weight"
LM_HEAD = "lm_head.weight"


@dataclass
class Tensor:
    """One tensor of a model, in canonical terms."""

    name: str
    dtype: DType
    shape: tuple[int, ...]
    source_name: str
    _raw: Callable[[], np.ndarray] = field(repr=False)
    tied_to: str | None = None  # set when this is the embedding standing in for lm_head
    #: (file, byte offset) where raw() lies unchanged, for file-to-file copies
    span: tuple[Path, int] | None = None
    #: the ``FileSource.identity`` of the file ``span`` lies in: whoever reopens its path
    #: passes it as ``expect``, so a file replaced since is an error, not other bytes
    span_file: tuple[int, int] | None = None
    #: the format's integrity check in flat memory, where it has one (APR's CRC32)
    _verify: Callable[[], None] | None = field(default=None, repr=False)
    #: where the bytes at ``span`` carry a stored CRC32 (APR): raises the format's error
    #: naming the tensor unless the CRC32 of those bytes, computed by whoever read them
    #: from the span, is the stored one. A reader of ``span`` must call it.
    _check_crc: Callable[[int], None] | None = field(default=None, repr=False)

    @property
    def nbytes(self) -> int:
        return nbytes(self.dtype, self.shape)

    def raw(self) -> np.ndarray:
        """Raw little-endian bytes (uint8), row-major in the logical shape."""
        return self._raw()

    def to_float32(self) -> np.ndarray:
        return to_float32(self.raw(), self.dtype, self.shape)

    @property
    def checksummed(self) -> bool:
        """Whether bytes read from ``span`` must be checked with ``check_crc``."""
        return self._check_crc is not None

    def check_crc(self, crc: int) -> None:
        """Raise the format's error if ``crc`` (of the bytes at ``span``) is not the stored
        one; a no-op for formats without a checksum."""
        if self._check_crc is not None:
            self._check_crc(crc)

    def verify(self) -> bool:
        """Check the tensor's checksum without holding it; False where the format has none."""
        if self._verify is None:
            return False
        self._verify()
        return True


@dataclass
class Model:
    path: Path
    format: str  # "safetensors" | "gguf" | "apr"
    tensors: dict[str, Tensor]
    config: ModelConfig | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    tokenizer: dict[str, Any] | None = None
    _closers: list[Callable[[], None]] = field(default_factory=list, repr=False)
    _maps: list[Any] = field(default_factory=list, repr=False)

    def drop_pages(self) -> None:
        """Let the kernel take back mapped pages read so far (they stay in the page cache).

        Only a model opened ``open_model(path, mapped=True)`` has maps; by default the
        readers read into owned buffers (``aprlib.formats.filesource``) and this does nothing.
        """
        for m in self._maps:
            with contextlib.suppress(AttributeError, OSError, ValueError):
                m.madvise(mmap.MADV_DONTNEED)

    @property
    def tied(self) -> bool:
        return bool(self.config and self.config.tie_word_embeddings)

    def get(self, name: str) -> Tensor:
        """A tensor by canonical name. ``lm_head.weight`` of a tied model is the embedding,
        returned on purpose and marked ``tied_to``; of an untied model it must exist."""
        if name in self.tensors:
            return self.tensors[name]
        if name == LM_HEAD and self.tied and EMBED in self.tensors:
            embed = self.tensors[EMBED]
            return Tensor(
                LM_HEAD, embed.dtype, embed.shape, embed.source_name, embed._raw, tied_to=EMBED
            )
        if name == LM_HEAD and self.config is not None:
            raise KeyError(
                f"{self.path}: no {LM_HEAD} and the config says the model is not "
                "tied (tie_word_embeddings: false): the output head is missing"
            )
        raise KeyError(f"{self.path}: no tensor {name!r}")

    def __iter__(self) -> Iterator[Tensor]:
        return iter(self.tensors.values())

    def close(self) -> None:
        for close in self._closers:
            close()
        self._closers.clear()

    def __enter__(self) -> Model:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def check_tensor_shape(shape: tuple[int, ...], name: str) -> None:
    """ValueError for a shape no format of ours may carry (so no writer makes a file
    that our own reader refuses)."""
    if len(shape) > MAX_TENSOR_NDIM:
        raise ValueError(f"tensor {name!r}: {len(shape)} dimensions (at most {MAX_TENSOR_NDIM})")
    if any(d > MAX_TENSOR_DIM for d in shape):
        raise ValueError(f"tensor {name!r}: dimension {max(shape)} exceeds 2**40")


def _returning(raw: np.ndarray) -> Callable[[], np.ndarray]:
    """A loader bound to this array now (a lambda in the loop would bind the last one)."""
    return lambda: raw


def model_from_arrays(
    tensors: dict[str, tuple[DType, tuple[int, ...], np.ndarray]],
    config: ModelConfig | None,
    path: Path | str = "<memory>",
) -> Model:
    """An in-memory model (dtype, shape, raw bytes per name), e.g. to write a variant."""
    built = {}
    for name, (dtype, shape, raw) in tensors.items():
        raw = np.ascontiguousarray(raw).view(np.uint8).reshape(-1)
        if raw.size != nbytes(dtype, shape):
            raise ValueError(f"{name}: {raw.size} bytes for {dtype.name}{list(shape)}")
        built[name] = Tensor(name, dtype, tuple(shape), name, _returning(raw))
    return Model(Path(path), "memory", built, config)
