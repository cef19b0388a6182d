"""APR v2: the project's model file format (specified in docs/apr-format.md): its limits,
its reader (``AprFile``, ``open_apr``) and its writer (``AprWriter``, ``write_apr``).

Reading trusts nothing: every length, offset, count and code is checked against the file
before it is used, so a truncated or hostile file raises ``AprFormatError`` naming the file,
the tensor and the field, and never allocates beyond the file's own size. Writing streams
tensor by tensor into a temporary file (``aprlib.atomic``) renamed into place only when
complete.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import mmap
import os
import struct
import zlib
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from aprlib import output
from aprlib.atomic import atomic_output
from aprlib.config import ModelConfig
from aprlib.dtypes import DType, nbytes
from aprlib.errors import AprFormatError
from aprlib.modelfile import Model, Tensor

MAGIC = b"APR2"
MAGIC_V1 = b"APRN"
VERSION = (2, 0)
ALIGN = 64
HEADER = struct.Struct("<4sHHQQQQQQII")  # 64 bytes, see docs/apr-format.md
assert HEADER.size == 64
MAX_NDIM = 8
MAX_DIM = 1 << 40
_ENTRY_FIXED = struct.calcsize("<H") + struct.calcsize("<IB") + struct.calcsize("<QQI")


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
        self.index_length = len(encode_index(self.entries))
        self.data_offset = _align(self.index_offset + self.index_length)
        self._next = 0
        self._fh: Any = None
        self._output: Any = None
        self._tmp: Path | None = None
        self._pool: Any = None
        self._copies: list[Any] = []

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

    def copy(self, name: str, source: Path | str, offset: int) -> None:
        """Write a tensor whose bytes lie unchanged in ``source`` at ``offset``.

        The kernel copies file to file (copy_file_range, on a background thread) while a
        buffered read here computes the CRC: no page of the source is mapped into this
        process, which is faster and keeps RSS flat.
        """
        from concurrent.futures import ThreadPoolExecutor

        entry = self._expect(name)
        self._fh.flush()
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="apr-copy")
        dest = self.data_offset + entry.offset
        self._copies.append(
            self._pool.submit(
                _copy_file, str(source), self._fh.fileno(), entry.nbytes, offset, dest
            )
        )
        crc, buf = 0, bytearray(min(entry.nbytes, 16 << 20) or 1)
        view = memoryview(buf)
        fd = os.open(source, os.O_RDONLY)
        try:
            done = 0
            while done < entry.nbytes:
                n = os.preadv(fd, [view[: entry.nbytes - done]], offset + done)
                if n <= 0:
                    raise ValueError(f"tensor {name!r}: {source} ends early")
                crc = zlib.crc32(view[:n], crc)
                done += n
        finally:
            os.close(fd)
        self._written(entry, crc)

    def write(self, name: str, raw: bytes | memoryview | np.ndarray) -> None:
        entry = self._expect(name)
        view = memoryview(raw if not isinstance(raw, np.ndarray) else np.ascontiguousarray(raw))
        view = view.cast("B")
        if view.nbytes != entry.nbytes:
            raise ValueError(
                f"tensor {name!r}: {entry.dtype.name}{list(entry.shape)} needs "
                f"{entry.nbytes} bytes, got {view.nbytes}"
            )
        self._fh.seek(self.data_offset + entry.offset)
        self._fh.write(view)
        self._written(entry, zlib.crc32(view))

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
            if self._pool is not None:
                self._pool.shutdown(wait=True)
            if self._fh is not None and not self._fh.closed:
                self._fh.close()
            self._output.__exit__(exc_type, exc, tb)  # renames on success, else removes

    def _finish(self) -> None:
        for copy in self._copies:
            copy.result()  # re-raises a failed background copy
        fh = self._fh
        fh.truncate(self.data_offset + self.data_length)
        index = encode_index(self.entries)
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


def _copy_file(source: str, out: int, count: int, offset: int, dest: int) -> None:
    """Copy ``count`` bytes of ``source`` at ``offset`` into ``out`` at ``dest``."""
    fd = os.open(source, os.O_RDONLY)
    try:
        if _copy_range(fd, out, count, offset, dest):
            return
        buf = memoryview(bytearray(min(count, 16 << 20) or 1))
        done = 0
        while done < count:  # no copy_file_range here: read and write
            n = os.preadv(fd, [buf[: count - done]], offset + done)
            if n <= 0:
                raise OSError(f"{source} ends early")
            os.pwrite(out, buf[:n], dest + done)
            done += n
    finally:
        os.close(fd)


def _copy_range(src: int, dst: int, count: int, src_offset: int, dst_offset: int) -> bool:
    """copy_file_range until done; False (nothing guaranteed) where the kernel can't."""
    copy = getattr(os, "copy_file_range", None)
    if copy is None:
        return False
    done = 0
    try:
        while done < count:
            n = copy(src, dst, count - done, src_offset + done, dst_offset + done)
            if n == 0:
                return False
            done += n
    except OSError:
        return False
    return True


class AprFile:
    """A memory-mapped APR file; tensors are zero-copy views of the map."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._fh = open(self.path, "rb")  # noqa: SIM115 - held open with the map, see close()
        try:
            size = os.fstat(self._fh.fileno()).st_size
            if size < HEADER.size:
                raise self._error(
                    f"file is {size} bytes, shorter than the 64-byte header", field="header"
                )
            self._map = mmap.mmap(self._fh.fileno(), 0, access=mmap.ACCESS_READ)
            self._parse(size)
        except BaseException:
            self.close()
            raise

    def _error(
        self, message: str, tensor: str | None = None, field: str | None = None
    ) -> AprFormatError:
        return AprFormatError(self.path, message, tensor=tensor, field=field)

    def _parse(self, size: int) -> None:
        m = self._map
        magic = bytes(m[:4])
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
        ) = HEADER.unpack_from(m, 0)
        if zlib.crc32(m[: HEADER.size - 4]) != crc:
            raise self._error(
                "header checksum mismatch (the header is damaged)", field="header_crc32"
            )
        if major != VERSION[0]:
            raise self._error(
                f"APR version {major}.{minor}; this reader reads {VERSION[0]}.x", field="version"
            )
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
        if count > index_len // _ENTRY_FIXED:
            raise self._error(
                f"tensor count {count} cannot fit in a {index_len}-byte index", field="tensor_count"
            )
        try:
            self.metadata = json.loads(bytes(m[meta_off : meta_off + meta_len]).decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise self._error(f"metadata is not UTF-8 JSON: {exc}", field="metadata") from None
        if not isinstance(self.metadata, dict):
            raise self._error("metadata is not a JSON object", field="metadata")
        self._data_offset = data_off
        self.entries = self._parse_index(index_off, index_len, count, data_len)

    def _parse_index(
        self, off: int, length: int, count: int, data_len: int
    ) -> dict[str, TensorEntry]:
        m, end, pos = self._map, off + length, off
        entries: dict[str, TensorEntry] = {}

        def take(fmt: str, what: str, tensor: str | None) -> tuple[Any, ...]:
            nonlocal pos
            size = struct.calcsize(fmt)
            if pos + size > end:
                raise self._error(
                    f"index ends inside {what} of tensor #{len(entries)}", tensor=tensor, field=what
                )
            values = struct.unpack_from(fmt, m, pos)
            pos += size
            return values

        for _ in range(count):
            (name_len,) = take("<H", "name_length", None)
            if pos + name_len > end:
                raise self._error(
                    f"name of tensor #{len(entries)} runs past the index", field="name"
                )
            try:
                name = bytes(m[pos : pos + name_len]).decode("utf-8")
            except UnicodeDecodeError:
                raise self._error(
                    f"name of tensor #{len(entries)} is not UTF-8", field="name"
                ) from None
            pos += name_len
            code, ndim = take("<IB", "dtype", name)
            try:
                dtype = DType(code)
            except ValueError:
                raise self._error(
                    f"unknown dtype code {code}", tensor=name, field="dtype"
                ) from None
            if ndim > MAX_NDIM:
                raise self._error(
                    f"{ndim} dimensions (at most {MAX_NDIM})", tensor=name, field="shape"
                )
            shape = take(f"<{ndim}Q", "shape", name)
            if any(d > MAX_DIM for d in shape):
                raise self._error(f"dimension {max(shape)} is absurd", tensor=name, field="shape")
            offset, size, crc = take("<QQI", "offset", name)
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
        """The tensor's bytes as a zero-copy uint8 view; checks the CRC32 when asked."""
        e = self.entries[name]
        view = np.frombuffer(
            self._map, dtype=np.uint8, count=e.nbytes, offset=self._data_offset + e.offset
        )
        if verify and zlib.crc32(view) != e.crc32:
            raise self._error(
                "CRC32 mismatch: the tensor's bytes are damaged", tensor=name, field="crc32"
            )
        return view

    def close(self) -> None:
        m = getattr(self, "_map", None)
        if m is not None:
            with contextlib.suppress(BufferError):  # a view is alive: the map closes with it
                m.close()
        self._fh.close()


# --- model-level reader and writer -------------------------------------------------------


def open_apr(path: Path) -> Model:
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
            if p.dtype == t.dtype and t.span is not None:
                w.copy(t.name, *t.span)
            else:
                w.write(t.name, output.encode(t, p.dtype))
            report.advance(t.name, nbytes(p.dtype, p.shape), progress)
