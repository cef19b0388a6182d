"""APR v2: the project's model file format (specified in docs/apr-format.md): its limits,
its reader (``AprFile``, ``open_apr``) and its writer (``AprWriter``, ``write_apr``).

Reading trusts nothing: every length, offset, count and code is checked against the file
before it is used, so a truncated or hostile file raises ``AprFormatError`` naming the file,
the tensor and the field, and never allocates beyond the file's own size. Writing streams
tensor by tensor into a temporary file (``aprlib.formats.atomic``) renamed into place only when
complete.
"""

from __future__ import annotations

import functools
import itertools
import json
import os
import struct
import zlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from aprlib.config.modelconfig import ConfigError, ModelConfig, check_config_values
from aprlib.errors import AprFormatError, FileChangedError
from aprlib.formats import output
from aprlib.formats.atomic import atomic_output
from aprlib.formats.dtypes import DType, nbytes
from aprlib.formats.filesource import FileSource, crc32
from aprlib.formats.jsonlimits import load_json
from aprlib.formats.modelfile import (
    MAX_TENSOR_DIM,
    MAX_TENSOR_NDIM,
    MAX_TENSORS,
    Model,
    Tensor,
    check_tensor_shape,
)

MAGIC = b"APR2"
MAGIC_V1 = b"APRN"
VERSION = (2, 1)
ALIGN = 64
HEADER = struct.Struct("<4sHHQQQQQQII")  # 64 bytes, see docs/apr-format.md
assert HEADER.size == 64
#: APR 2.1: the last 12 bytes of the index region; 2.0 readers parse tensor_count
#: entries and never look past them, so they read a 2.1 file unchanged
TRAILER = struct.Struct("<4sII")  # magic, CRC32 of the metadata, CRC32 of the entries
TRAILER_MAGIC = b"ACRC"
MAX_NDIM = MAX_TENSOR_NDIM
MAX_DIM = MAX_TENSOR_DIM
MAX_METADATA = 64 << 20  # a 256k-token tokenizer is ~20 MB of JSON
_U16, _CODE_NDIM, _PLACE = struct.Struct("<H"), struct.Struct("<IB"), struct.Struct("<QQI")
_SHAPES = [struct.Struct(f"<{n}Q") for n in range(MAX_NDIM + 1)]
_ENTRY_FIXED = _U16.size + _CODE_NDIM.size + _PLACE.size


def _align(n: int) -> int:
    return (n + ALIGN - 1) // ALIGN * ALIGN


@dataclass(frozen=True)
class TensorEntry:
    name: str
    dtype: DType
    shape: tuple[int, ...]
    offset: int  # from the start of the data region
    nbytes: int
    crc32: int


def encode_index(entries: Iterable[TensorEntry]) -> bytes:
    out = bytearray()
    for e in entries:
        name = e.name.encode("utf-8")
        out += struct.pack("<H", len(name)) + name
        out += struct.pack("<IB", int(e.dtype), len(e.shape))
        out += struct.pack(f"<{len(e.shape)}Q", *e.shape)
        out += struct.pack("<QQI", e.offset, e.nbytes, e.crc32)
    return bytes(out)


@dataclass
class PlannedTensor:
    name: str
    dtype: DType
    shape: tuple[int, ...]


class AprWriter:
    """Write an APR file from a plan, one tensor at a time (memory: one tensor).

    ``with AprWriter(path, metadata, plan) as w: w.write(name, raw)`` in plan order. The
    file appears at ``path`` only when every tensor was written; on any error nothing is
    left behind.
    """

    def __init__(self, path: Path, metadata: dict[str, Any], plan: list[PlannedTensor]) -> None:
        self.path = Path(path)
        names = [p.name for p in plan]
        if len(set(names)) != len(names):
            dup = next(n for n in names if names.count(n) > 1)
            raise ValueError(f"duplicate tensor name {dup!r} in the write plan")
        self.metadata = json.dumps(metadata, sort_keys=True, ensure_ascii=False).encode("utf-8")
        offset = 0
        self.entries: list[TensorEntry] = []
        for p in plan:
            size = nbytes(p.dtype, p.shape)
            self.entries.append(TensorEntry(p.name, p.dtype, tuple(p.shape), offset, size, 0))
            offset = _align(offset + size)
        self.data_length = offset
        self.index_offset = HEADER.size + len(self.metadata)
        for e in self.entries:
            check_tensor_shape(e.shape, e.name)
        if not self.entries:
            raise ValueError("an APR file holds at least one tensor; the plan is empty")
        self.index_length = len(encode_index(self.entries)) + TRAILER.size
        self.data_offset = _align(self.index_offset + self.index_length)
        self._next = 0
        self._fh: Any = None
        self._output: Any = None
        self._tmp: Path | None = None
        self._copier: output.SpanCopier | None = None

    def __enter__(self) -> AprWriter:
        self._output = atomic_output(self.path)
        self._tmp = self._output.__enter__()
        self._fh = open(self._tmp, "r+b")
        self._fh.write(b"\0" * HEADER.size + self.metadata)
        self._fh.write(b"\0" * (self.data_offset - self.index_offset))  # index comes last
        return self

    def _expect(self, name: str) -> TensorEntry:
        if self._next >= len(self.entries):
            raise ValueError(f"tensor {name!r} is not in the write plan (plan complete)")
        entry = self.entries[self._next]
        if name != entry.name:
            raise ValueError(f"expected tensor {entry.name!r} next, got {name!r}")
        return entry

    def _written(self, entry: TensorEntry, crc: int) -> None:
        self.entries[self._next] = TensorEntry(
            entry.name, entry.dtype, entry.shape, entry.offset, entry.nbytes, crc
        )
        self._next += 1

    def copy(
        self,
        name: str,
        source: Path | str,
        offset: int,
        check_crc: Callable[[int], None] | None = None,
        identity: tuple[int, int] | None = None,
    ) -> None:
        """Write a tensor whose bytes lie unchanged in ``source`` at ``offset`` (in the file
        whose ``FileSource.identity`` is ``identity``, where given).

        The bytes go file to file (``output.SpanCopier``): read once into a reused
        cache-sized buffer, the CRC computed there as they pass, written from there; no
        page of the source is mapped into this process, no tensor is whole in memory, and
        the write-back of what was written starts at once.
        """
        entry = self._expect(name)
        if self._copier is None:
            self._fh.flush()  # the buffered header and metadata are written first
            self._copier = output.SpanCopier(self._fh.fileno())
        dest = self.data_offset + entry.offset
        crc = self._copier.copy(
            source, offset, entry.nbytes, dest, crc=True, tensor=name, identity=identity
        )
        assert crc is not None
        if check_crc is not None:  # an APR source: what was copied is what it stored
            check_crc(crc)
        self._written(entry, crc)

    def write(self, name: str, raw: bytes | memoryview | np.ndarray) -> None:
        entry = self._expect(name)
        view = np.ascontiguousarray(raw).data if isinstance(raw, np.ndarray) else memoryview(raw)
        view = view.cast("B")
        if view.nbytes != entry.nbytes:
            raise ValueError(
                f"tensor {name!r}: {entry.dtype.name}{list(entry.shape)} needs "
                f"{entry.nbytes} bytes, got {view.nbytes}"
            )
        self._fh.seek(self.data_offset + entry.offset)
        self._fh.write(view)
        self._written(entry, crc32(view))

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        try:
            if exc_type is None:
                if self._next != len(self.entries):
                    missing = self.entries[self._next].name
                    raise ValueError(f"tensor {missing!r} was planned but never written")
                self._finish()
        except BaseException as failure:
            exc_type, exc, tb = type(failure), failure, failure.__traceback__
            raise
        finally:
            if self._copier is not None:
                self._copier.close()
            if self._fh is not None and not self._fh.closed:
                self._fh.close()
            self._output.__exit__(exc_type, exc, tb)  # renames on success, else removes

    def _finish(self) -> None:
        fh = self._fh
        fh.truncate(self.data_offset + self.data_length)
        index = encode_index(self.entries)
        index += TRAILER.pack(TRAILER_MAGIC, zlib.crc32(self.metadata), zlib.crc32(index))
        fh.seek(self.index_offset)
        fh.write(index)
        fields = (
            MAGIC,
            *VERSION,
            HEADER.size,
            len(self.metadata),
            self.index_offset,
            len(index),
            self.data_offset,
            self.data_length,
            len(self.entries),
        )
        head = HEADER.pack(*fields, 0)
        head = head[:-4] + struct.pack("<I", zlib.crc32(head[:-4]))
        fh.seek(0)
        fh.write(head)
        fh.flush()
        fh.close()


class AprFile:
    """An open APR file: header, metadata and index checked; tensors read on demand.

    Tensor bytes are read with ``pread`` into buffers this process owns (see
    ``aprlib.formats.filesource``): a file truncated while open gives ``FileChangedError``, never
    SIGBUS.
    """

    def __init__(self, path: Path, mapped: bool = False) -> None:
        self.path = Path(path)
        self.version = VERSION
        self._src = FileSource(self.path, AprFormatError, mapped)
        try:
            size = self._src.size
            if size < HEADER.size:
                raise self._error(
                    f"file is {size} bytes, shorter than the 64-byte header", field="header"
                )
            self._parse(size)
        except BaseException:
            self.close()
            raise

    def _error(
        self, message: str, tensor: str | None = None, field: str | None = None
    ) -> AprFormatError:
        return AprFormatError(self.path, message, tensor=tensor, field=field)

    def _parse(self, size: int) -> None:
        head = self._src.read(0, HEADER.size, field="header").tobytes()
        magic = head[:4]
        if magic == MAGIC_V1:
            raise self._error(
                "APR v1 file (magic APRN): v1 is not read any more, because its "
                "dtype codes collide with GGML's; convert again from the source",
                field="magic",
            )
        if magic != MAGIC:
            raise self._error(
                f"not an APR v2 file (magic {magic!r}, expected {MAGIC!r})", field="magic"
            )
        (
            _,
            major,
            minor,
            meta_off,
            meta_len,
            index_off,
            index_len,
            data_off,
            data_len,
            count,
            crc,
        ) = HEADER.unpack(head)
        if zlib.crc32(head[: HEADER.size - 4]) != crc:
            raise self._error(
                "header checksum mismatch (the header is damaged)", field="header_crc32"
            )
        if major != VERSION[0]:
            raise self._error(
                f"APR version {major}.{minor}; this reader reads {VERSION[0]}.x", field="version"
            )
        self.version = (major, minor)
        regions = (
            ("metadata", meta_off, meta_len),
            ("index", index_off, index_len),
            ("data", data_off, data_len),
        )
        end_previous = HEADER.size
        for name, off, length in regions:
            if off < end_previous or off > size or length > size - off:
                raise self._error(
                    f"{name} region [{off}, +{length}) lies outside the file "
                    f"({size} bytes) or overlaps the region before it",
                    field=f"{name}_offset",
                )
            end_previous = off + length
        if data_off % ALIGN:
            raise self._error(
                f"data offset {data_off} is not {ALIGN}-byte aligned", field="data_offset"
            )
        if count == 0:
            raise self._error("tensor count is 0: a model file holds tensors", field="tensor_count")
        if count > MAX_TENSORS:
            raise self._error(
                f"tensor count {count:,} (at most {MAX_TENSORS:,})", field="tensor_count"
            )
        if count > index_len // _ENTRY_FIXED:
            raise self._error(
                f"tensor count {count} cannot fit in a {index_len}-byte index", field="tensor_count"
            )
        if meta_len > MAX_METADATA:
            raise self._error(
                f"metadata of {meta_len:,} bytes (at most {MAX_METADATA:,})", field="metadata"
            )
        raw_meta = self._src.read(meta_off, meta_len, field="metadata").tobytes()
        index = self._src.read(index_off, index_len, field="index").tobytes()
        if minor >= 1:
            self._check_trailer(raw_meta, index)
        self.metadata = load_json(raw_meta, self.path, "metadata", AprFormatError, MAX_METADATA)
        if not isinstance(self.metadata, dict):
            raise self._error("metadata is not a JSON object", field="metadata")
        self._data_offset = data_off
        self.entries = self._parse_index(index, count, data_len)

    def _check_trailer(self, raw_meta: bytes, index: bytes) -> None:
        """APR 2.1: the index ends with a trailer of CRC32s over metadata and index."""
        if len(index) < TRAILER.size:
            raise self._error("index too short for its 2.1 trailer", field="index_crc32")
        magic, meta_crc, index_crc = TRAILER.unpack_from(index, len(index) - TRAILER.size)
        if magic != TRAILER_MAGIC:
            raise self._error(
                f"APR 2.1 index lacks its checksum trailer (found {magic!r})", field="index_crc32"
            )
        if zlib.crc32(raw_meta) != meta_crc:
            raise self._error(
                "metadata checksum mismatch (the metadata is damaged)", field="metadata_crc32"
            )
        if zlib.crc32(index[: -TRAILER.size]) != index_crc:
            raise self._error(
                "index checksum mismatch (tensor names, dtypes, shapes or offsets are damaged)",
                field="index_crc32",
            )

    def _parse_index(self, m: bytes, count: int, data_len: int) -> dict[str, TensorEntry]:
        end, pos = len(m), 0
        entries: dict[str, TensorEntry] = {}

        def take(fmt: struct.Struct, what: str, tensor: str | None) -> tuple[Any, ...]:
            nonlocal pos
            if pos + fmt.size > end:
                raise self._error(
                    f"index ends inside {what} of tensor #{len(entries)}", tensor=tensor, field=what
                )
            values = fmt.unpack_from(m, pos)
            pos += fmt.size
            return values

        for _ in range(count):
            (name_len,) = take(_U16, "name_length", None)
            if pos + name_len > end:
                raise self._error(
                    f"name of tensor #{len(entries)} runs past the index", field="name"
                )
            try:
                name = m[pos : pos + name_len].decode("utf-8")
            except UnicodeDecodeError:
                raise self._error(
                    f"name of tensor #{len(entries)} is not UTF-8", field="name"
                ) from None
            pos += name_len
            code, ndim = take(_CODE_NDIM, "dtype", name)
            dtype = DType.from_code(code)
            if dtype is None:
                raise self._error(f"unknown dtype code {code}", tensor=name, field="dtype")
            if ndim > MAX_NDIM:
                raise self._error(
                    f"{ndim} dimensions (at most {MAX_NDIM})", tensor=name, field="shape"
                )
            shape = take(_SHAPES[ndim], "shape", name)
            if any(d > MAX_DIM for d in shape):
                raise self._error(f"dimension {max(shape)} is absurd", tensor=name, field="shape")
            offset, size, crc = take(_PLACE, "offset", name)
            try:
                expected = nbytes(dtype, shape)
            except ValueError as exc:
                raise self._error(str(exc), tensor=name, field="shape") from None
            if size != expected:
                raise self._error(
                    f"byte size {size} != {expected} for {dtype.name}{list(shape)}",
                    tensor=name,
                    field="nbytes",
                )
            if offset % ALIGN:
                raise self._error(
                    f"data offset {offset} is not a multiple of {ALIGN}",
                    tensor=name,
                    field="offset",
                )
            if offset > data_len or size > data_len - offset:
                raise self._error(
                    f"data [{offset}, +{size}) runs past the data region ({data_len} bytes)",
                    tensor=name,
                    field="offset",
                )
            if name in entries:
                raise self._error(
                    "tensor name appears twice in the index", tensor=name, field="name"
                )
            entries[name] = TensorEntry(name, dtype, tuple(shape), offset, size, crc)
        ordered = sorted(entries.values(), key=lambda e: e.offset)
        for a, b in itertools.pairwise(ordered):
            if a.offset + a.nbytes > b.offset:
                raise self._error(f"data overlaps tensor {a.name!r}", tensor=b.name, field="offset")
        return entries

    def raw(self, name: str, verify: bool = True) -> np.ndarray:
        """The tensor's bytes (a fresh uint8 array); checks the CRC32 when asked."""
        e = self.entries[name]
        data = self._src.read(self._data_offset + e.offset, e.nbytes, tensor=name, field="data")
        if verify:
            self.check_crc(name, crc32(data.data))
        return data

    def check_crc(self, name: str, crc: int) -> None:
        """Raise unless ``crc``, computed by a reader of the tensor's span, is the stored one."""
        if crc != self.entries[name].crc32:
            raise self._error(
                "CRC32 mismatch: the tensor's bytes are damaged", tensor=name, field="crc32"
            )

    def verify(self, name: str) -> None:
        """Check a tensor's CRC32 in flat memory; runs of holes in a sparse file are
        checksummed arithmetically (``crc32_zeros``), not read."""
        e = self.entries[name]
        if e.nbytes == 0:
            if e.crc32 != 0:
                raise self._error(
                    "CRC32 mismatch: an empty tensor's is 0", tensor=name, field="crc32"
                )
            return
        crc = 0
        for kind, start, length in _extents(self._src, self._data_offset + e.offset, e.nbytes):
            if kind == "hole":
                crc = crc32_zeros(crc, length)
            else:
                for piece in self._src.chunks(start, length, tensor=name):
                    crc = crc32(piece, crc)
        if self._src.size != os.fstat(self._src.fd).st_size:
            raise FileChangedError(self.path, "file changed while open", tensor=name)
        self.check_crc(name, crc)

    def close(self) -> None:
        src = getattr(self, "_src", None)
        if src is not None:
            src.close()


def _extents(src: FileSource, offset: int, length: int) -> list[tuple[str, int, int]]:
    """``(data|hole, start, length)`` pieces of a span, holes only where the file system
    reports them (SEEK_DATA/SEEK_HOLE); everything is data where it cannot tell."""
    end, pos, out = offset + length, offset, []
    seek_data = getattr(os, "SEEK_DATA", None)
    if not src.sparse or seek_data is None:
        return [("data", offset, length)]
    try:
        while pos < end:
            try:
                data = os.lseek(src.fd, pos, seek_data)
            except OSError:  # ENXIO: only a hole up to the end of the file
                data = end
            data = min(data, end)
            if data > pos:
                out.append(("hole", pos, data - pos))
            if data >= end:
                break
            hole = min(os.lseek(src.fd, data, os.SEEK_HOLE), end)
            out.append(("data", data, hole - data))
            pos = hole
    except OSError:
        return [("data", offset, length)]
    return out


def _gf2_times(matrix: list[int], vector: int) -> int:
    total, i = 0, 0
    while vector:
        if vector & 1:
            total ^= matrix[i]
        vector >>= 1
        i += 1
    return total


def crc32_zeros(crc: int, count: int) -> int:
    """``zlib.crc32(b"\\0" * count, crc)`` in O(log count) time (zlib's crc32_combine
    operator: appending zeros is linear on the inverted register)."""
    if count <= 0:
        return crc
    odd = [0xEDB88320] + [1 << n for n in range(31)]  # one zero bit
    even = [_gf2_times(odd, odd[n]) for n in range(32)]  # two zero bits
    odd = [_gf2_times(even, even[n]) for n in range(32)]  # four zero bits
    register = crc ^ 0xFFFFFFFF
    while True:
        even = [_gf2_times(odd, odd[n]) for n in range(32)]
        if count & 1:
            register = _gf2_times(even, register)
        count >>= 1
        if not count:
            break
        odd = [_gf2_times(even, even[n]) for n in range(32)]
        if count & 1:
            register = _gf2_times(odd, register)
        count >>= 1
        if not count:
            break
    return register ^ 0xFFFFFFFF


# --- model-level reader and writer -------------------------------------------------------


def open_apr(path: Path, mapped: bool = False) -> Model:
    f = AprFile(path, mapped)
    try:
        meta = f.metadata
        raw_config = meta.get("config")
        if raw_config is not None:
            check_config_values(raw_config, "apr")
        config = ModelConfig.from_dict(raw_config) if raw_config else None
        tokenizer = meta.get("tokenizer")
        if tokenizer is not None and not isinstance(tokenizer, dict):
            raise ConfigError(f"tokenizer is a {type(tokenizer).__name__}, not an object")
    except (ConfigError, TypeError) as exc:
        f.close()
        field = getattr(exc, "field", None)
        where = f"metadata.config.{field}" if field else "metadata.config"
        raise AprFormatError(path, f"metadata config: {exc}", field=where) from None
    tensors = {  # a reader of the span checks the CRC32 of what it read (check_crc)
        name: Tensor(
            name,
            e.dtype,
            e.shape,
            name,
            functools.partial(f.raw, name),
            span=(path, f._data_offset + e.offset),
            span_file=f._src.identity,
            _verify=functools.partial(f.verify, name),
            _check_crc=functools.partial(f.check_crc, name),
        )
        for name, e in f.entries.items()
    }
    maps = [f._src.map] if f._src.map is not None else []
    return Model(path, "apr", tensors, config, meta, tokenizer, [f.close], maps)


def write_apr(
    model: Model,
    tensors: list[Tensor],
    dst: Path,
    dtype: DType | None,
    report: output.ConvertReport,
    progress: output.Progress,
) -> None:
    cfg = model.config
    metadata = {
        "format": "apr",
        "format_version": "2.0",
        "architecture": cfg.architecture if cfg else None,
        "config": cfg.to_dict() if cfg else None,
        "rope_type": cfg.rope_type if cfg else None,
        "tokenizer": model.tokenizer,
        "provenance": output.provenance(model),
    }
    plan = [PlannedTensor(t.name, output.output_dtype(t, dtype), t.shape) for t in tensors]
    with AprWriter(dst, metadata, plan) as w:
        for t, p in zip(tensors, plan, strict=True):
            span = output.unchanged_span(t, p.dtype)
            if span is not None:
                w.copy(t.name, *span, check_crc=t.check_crc, identity=t.span_file)
            else:
                w.write(t.name, output.encode(t, p.dtype))
            report.advance(t.name, nbytes(p.dtype, p.shape), progress)
