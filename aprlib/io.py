"""``open_model(path)``: safetensors (one file or a sharded folder), GGUF and APR alike.

The format is told by magic bytes, never by the file name. Every tensor is exposed under
its canonical (HF) name with its logical row-major shape, its dtype and its raw bytes as a
zero-copy view of a memory map (a GGUF ``llama`` q/k projection is un-permuted on read, the
one case that copies).
"""

from __future__ import annotations

import contextlib
import itertools
import json
import mmap
import os
import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from aprlib import layout
from aprlib.apr import MAGIC, MAGIC_V1, AprFile
from aprlib.config import ConfigError, ModelConfig, from_gguf_kv, from_hf
from aprlib.dtypes import SAFETENSORS_DTYPES, DType, nbytes, to_float32
from aprlib.errors import (
    AprFormatError,
    GgufFormatError,
    ModelFileError,
    SafetensorsFormatError,
)

EMBED = "model.embed_tokens.weight"
LM_HEAD = "lm_head.weight"
MAX_SAFETENSORS_HEADER = 100 * 1024 * 1024


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

    @property
    def nbytes(self) -> int:
        return nbytes(self.dtype, self.shape)

    def raw(self) -> np.ndarray:
        """Raw little-endian bytes (uint8), row-major in the logical shape."""
        return self._raw()

    def to_float32(self) -> np.ndarray:
        return to_float32(self.raw(), self.dtype, self.shape)


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
        """Let the kernel take back the pages read so far (they stay in the page cache).

        A memory map counts every page touched as resident: without this, streaming a
        1 GB model through a converter would show 1 GB of RSS.
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
        built[name] = Tensor(name, dtype, tuple(shape), name, lambda r=raw: r)
    return Model(Path(path), "memory", built, config)


def sniff(path: Path) -> str:
    """The format of ``path`` from its first bytes (a folder is a sharded safetensors)."""
    path = Path(path)
    if path.is_dir():
        return "safetensors"
    try:
        with open(path, "rb") as fh:
            head = fh.read(9)
    except OSError as exc:
        raise ModelFileError(path, f"cannot read: {exc.strerror}") from None
    if head[:4] == b"GGUF":
        return "gguf"
    if head[:4] in (MAGIC, MAGIC_V1):
        return "apr"
    if len(head) == 9 and head[8:9] == b"{":
        return "safetensors"
    raise ModelFileError(
        path,
        f"unrecognised format (first bytes {head[:8]!r}); expected safetensors, GGUF or APR",
        field="magic",
    )


def open_model(path: Path | str) -> Model:
    """Open any supported model file or folder, memory-mapped."""
    path = Path(path)
    if not path.exists():
        raise ModelFileError(path, "no such file or directory")
    kind = sniff(path)
    if kind == "apr":
        return _open_apr(path)
    if kind == "gguf":
        return _open_gguf(path)
    return _open_safetensors(path)


# --- APR ---------------------------------------------------------------------------------


def _open_apr(path: Path) -> Model:
    f = AprFile(path)
    meta = f.metadata
    try:
        config = ModelConfig.from_dict(meta["config"]) if meta.get("config") else None
    except TypeError as exc:
        f.close()
        raise AprFormatError(
            path, f"metadata config is incomplete: {exc}", field="metadata.config"
        ) from None
    tensors = {
        name: Tensor(name, e.dtype, e.shape, name, lambda n=name: f.raw(n))
        for name, e in f.entries.items()
    }  # no span: an APR source's bytes are read (and their CRC checked) on the way
    return Model(path, "apr", tensors, config, meta, meta.get("tokenizer"), [f.close], [f._map])


# --- safetensors -------------------------------------------------------------------------


class _SafetensorsFile:
    def __init__(self, path: Path) -> None:
        self.path = path
        with open(path, "rb") as fh:
            size = os.fstat(fh.fileno()).st_size
            if size < 8:
                raise SafetensorsFormatError(
                    path, f"file is {size} bytes: no header", field="header_length"
                )
            (n,) = struct.unpack("<Q", fh.read(8))
            if n > size - 8 or n > MAX_SAFETENSORS_HEADER:
                raise SafetensorsFormatError(
                    path,
                    f"header length {n} exceeds the file ({size} bytes)",
                    field="header_length",
                )
            try:
                header = json.loads(fh.read(n).decode("utf-8"))
            except (UnicodeDecodeError, json.JSONDecodeError) as exc:
                raise SafetensorsFormatError(
                    path, f"header is not JSON: {exc}", field="header"
                ) from None
            self.map = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) if size else None
        if not isinstance(header, dict):
            raise SafetensorsFormatError(path, "header is not a JSON object", field="header")
        self.metadata = header.pop("__metadata__", None) or {}
        self.data_start = 8 + n
        data_len = size - self.data_start
        self.entries: dict[str, tuple[DType, tuple[int, ...], int, int]] = {}
        spans = []
        for name, info in header.items():
            if not isinstance(info, dict):
                raise SafetensorsFormatError(path, "entry is not an object", tensor=name)
            dtype = SAFETENSORS_DTYPES.get(info.get("dtype"))
            if dtype is None:
                raise SafetensorsFormatError(
                    path,
                    f"unsupported dtype {info.get('dtype')!r} (F32, F16, BF16)",
                    tensor=name,
                    field="dtype",
                )
            shape, offsets = info.get("shape"), info.get("data_offsets")
            if not isinstance(shape, list) or not all(isinstance(d, int) and d >= 0 for d in shape):
                raise SafetensorsFormatError(
                    path, f"bad shape {shape!r}", tensor=name, field="shape"
                )
            if (
                not isinstance(offsets, list)
                or len(offsets) != 2
                or not all(isinstance(o, int) for o in offsets)
                or not 0 <= offsets[0] <= offsets[1] <= data_len
            ):
                raise SafetensorsFormatError(
                    path,
                    f"data_offsets {offsets!r} outside the data ({data_len} bytes)",
                    tensor=name,
                    field="data_offsets",
                )
            expected = nbytes(dtype, tuple(shape))
            if offsets[1] - offsets[0] != expected:
                raise SafetensorsFormatError(
                    path,
                    f"{offsets[1] - offsets[0]} bytes for {dtype.name}{shape} (needs {expected})",
                    tensor=name,
                    field="data_offsets",
                )
            self.entries[name] = (dtype, tuple(shape), offsets[0], offsets[1])
            spans.append((offsets[0], offsets[1], name))
        spans.sort()
        for (_, end, a), (start, _, b) in itertools.pairwise(spans):
            if start < end:
                raise SafetensorsFormatError(
                    path, f"data overlaps tensor {a!r}", tensor=b, field="data_offsets"
                )

    def raw(self, name: str) -> np.ndarray:
        _, _, begin, end = self.entries[name]
        if end == begin:
            return np.zeros(0, dtype=np.uint8)
        return np.frombuffer(
            self.map, dtype=np.uint8, count=end - begin, offset=self.data_start + begin
        )

    def close(self) -> None:
        if self.map is not None:
            with contextlib.suppress(BufferError):
                self.map.close()


def _read_hf_config(folder: Path) -> ModelConfig | None:
    cfg = folder / "config.json"
    if not cfg.is_file():
        return None
    try:
        return from_hf(json.loads(cfg.read_text(encoding="utf-8")))
    except (json.JSONDecodeError, UnicodeDecodeError, ConfigError) as exc:
        raise ModelFileError(cfg, f"config.json: {exc}", field="config") from None


def _open_safetensors(path: Path) -> Model:
    if path.is_dir():
        index = path / "model.safetensors.index.json"
        if index.is_file():
            try:
                weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
            except (json.JSONDecodeError, KeyError, TypeError) as exc:
                raise SafetensorsFormatError(
                    index, f"bad shard index: {exc}", field="weight_map"
                ) from None
            shard_names = sorted(set(weight_map.values()))
        else:
            shard_names = sorted(p.name for p in path.glob("*.safetensors"))
            if not shard_names:
                raise ModelFileError(path, "folder holds no *.safetensors file")
            weight_map = None
        folder, files = path, [path / s for s in shard_names]
    else:
        folder, files, weight_map = path.parent, [path], None
    shards: list[_SafetensorsFile] = []
    tensors: dict[str, Tensor] = {}
    metadata: dict[str, Any] = {}
    try:
        for file in files:
            shard = _SafetensorsFile(file)
            shards.append(shard)
            metadata.update(shard.metadata)
            for name, (dtype, shape, _, _) in shard.entries.items():
                if weight_map is not None and weight_map.get(name) != file.name:
                    continue
                if name in tensors:
                    raise SafetensorsFormatError(file, "tensor appears in two shards", tensor=name)
                tensors[name] = Tensor(
                    name,
                    dtype,
                    shape,
                    name,
                    lambda s=shard, n=name: s.raw(n),
                    span=(file, shard.data_start + shard.entries[name][2]),
                )
        if weight_map is not None:
            missing = sorted(set(weight_map) - set(tensors))
            if missing:
                raise SafetensorsFormatError(
                    path,
                    f"index names {len(missing)} tensors no shard holds, e.g. {missing[0]!r}",
                    tensor=missing[0],
                )
        config = _read_hf_config(folder)
    except BaseException:
        for shard in shards:
            shard.close()
        raise
    return Model(
        path,
        "safetensors",
        tensors,
        config,
        metadata,
        None,
        [s.close for s in shards],
        [s.map for s in shards if s.map is not None],
    )


# --- GGUF --------------------------------------------------------------------------------

GGUF_DTYPES = {0: DType.F32, 1: DType.F16, 8: DType.Q8_0, 12: DType.Q4_K, 30: DType.BF16}


def _open_gguf(path: Path) -> Model:
    from aprlib.gguf_header import read_header, tensor_nbytes

    try:
        with open(path, "rb") as fh:
            buf = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)
    except (OSError, ValueError) as exc:
        raise GgufFormatError(path, f"cannot map: {exc}") from None
    try:
        header = read_header(buf, path)
    except BaseException:
        buf.close()
        raise
    kv: dict[str, Any] = {}
    tokenizer: dict[str, Any] = {}
    for name, value in header.kv.items():
        (tokenizer if name.startswith("tokenizer.ggml.") else kv)[name] = value
    for key in ("tokenizer.ggml.bos_token_id", "tokenizer.ggml.eos_token_id"):
        if key in tokenizer:
            kv[key] = tokenizer[key]
    names = {t.name for t in header.tensors}
    try:
        config = from_gguf_kv(kv, has_output_tensor="output.weight" in names)
    except ConfigError as exc:
        buf.close()
        raise GgufFormatError(path, str(exc), field="general.architecture") from None
    permute = config.architecture in layout.PERMUTED_QK_ARCHS
    tensors: dict[str, Tensor] = {}
    data_len = len(buf) - header.data_start
    for t in header.tensors:
        fail = None
        canonical = layout.gguf_to_hf(t.name)
        dtype = GGUF_DTYPES.get(t.ggml_type)
        if canonical is None:
            fail = GgufFormatError(path, "no canonical name for this tensor", tensor=t.name)
        elif dtype is None:
            fail = GgufFormatError(
                path, f"unsupported tensor type {t.ggml_type}", tensor=t.name, field="type"
            )
        else:
            shape = layout.gguf_shape_to_logical(t.dims)
            try:
                size = tensor_nbytes(t)
            except (KeyError, ValueError) as exc:
                size, fail = 0, GgufFormatError(path, str(exc), tensor=t.name, field="type")
            if fail is None and (size != nbytes(dtype, shape) or t.offset + size > data_len):
                fail = GgufFormatError(
                    path,
                    f"{dtype.name}{list(shape)} needs {size} bytes at offset {t.offset}; "
                    f"the data section holds {data_len}",
                    tensor=t.name,
                    field="size",
                )
        if fail is not None:
            _close_quietly(buf)
            raise fail
        flat = np.frombuffer(buf, dtype=np.uint8, count=size, offset=header.data_start + t.offset)
        heads = (
            layout.qk_heads(canonical, config.num_attention_heads, config.num_key_value_heads)
            if permute
            else None
        )
        if heads is None:

            def read(v=flat):
                return v
        else:

            def read(v=flat, s=shape, h=heads):
                return np.ascontiguousarray(layout.unpermute_qk(v.reshape(s[0], -1), h)).reshape(-1)

        tensors[canonical] = Tensor(
            canonical,
            dtype,
            shape,
            t.name,
            read,
            span=(path, header.data_start + t.offset) if heads is None else None,
        )
    return Model(
        path,
        "gguf",
        tensors,
        config,
        kv,
        tokenizer or None,
        [lambda: _close_quietly(buf)],
        [buf],
    )


def _close_quietly(buf: mmap.mmap) -> None:
    """numpy views of the map may outlive the model (a caller kept a tensor's bytes): the
    map then closes when the last view goes."""
    with contextlib.suppress(BufferError):
        buf.close()
