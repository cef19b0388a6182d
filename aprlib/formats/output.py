"""What every format writer shares: the report it fills and the bytes each tensor gets.

dtypes are kept unless a target dtype is asked for (then 2-D weights whose rows fit the
block size are re-encoded; norms and biases keep their dtype, as llama.cpp does).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from aprlib.errors import FileChangedError
from aprlib.formats.dtypes import DType, from_float32, nbytes, to_float32
from aprlib.formats.filesource import FileSource, crc32
from aprlib.formats.modelfile import Model, Tensor
from aprlib.version import __version__

Progress = Callable[[str, int], None]  # (tensor name, bytes done) after each tensor


@dataclass
class ConvertReport:
    source: Path
    destination: Path
    source_format: str
    target_format: str
    tensors: int = 0
    bytes_written: int = 0
    notes: list[str] = field(default_factory=list)
    fallbacks: list[dict[str, Any]] = field(default_factory=list)
    #: write F16/BF16 vectors as F32 in a GGUF, as llama.cpp needs (``apr convert`` does;
    #: ``write_model`` writes what it is given)
    llama_cpp_vectors: bool = False

    def as_dict(self) -> dict[str, Any]:
        return {
            "source": str(self.source),
            "destination": str(self.destination),
            "source_format": self.source_format,
            "target_format": self.target_format,
            "tensors": self.tensors,
            "bytes_written": self.bytes_written,
            "notes": self.notes,
            "fallbacks": self.fallbacks,
        }

    def advance(self, name: str, written: int, progress: Progress) -> None:
        self.tensors += 1
        self.bytes_written += written
        progress(name, self.bytes_written)


#: a mixture of experts' router (``model.layers.N.mlp.gate.weight``; a dense MLP's gate is
#: ``mlp.gate_proj``): llama.cpp never quantises it ("do not quantize expert gating
#: tensors", ``llama-quant.cpp``; its converter writes it F32), since a router rounded
#: moves which experts a token runs
ROUTER_SUFFIX = ".mlp.gate.weight"


def output_dtype(t: Tensor, requested: DType | None) -> DType:
    """The dtype ``t`` is written in. Vectors (norms, biases) stay as they are, as in
    llama.cpp, and so does a mixture's router (F32 where its source is quantised). A
    matrix whose rows are not whole blocks of the requested quantisation falls back as
    llama.cpp's ``llama_tensor_get_type`` does: a K-quant to a 32-element block type
    (llama.cpp's Q5_0 for Q4_K; Q8_0 is the one aprlib writes), else F16."""
    if requested is None or requested == t.dtype:
        return t.dtype
    if t.name.endswith(ROUTER_SUFFIX):
        return DType.F32 if t.dtype.info.quantized else t.dtype
    info = requested.info
    if info.quantized and len(t.shape) != 2:
        return t.dtype if not t.dtype.info.quantized else DType.F32
    if info.quantized and t.shape[-1] % info.block_elements:
        if t.shape[-1] % DType.Q8_0.info.block_elements == 0:
            return DType.Q8_0
        return DType.F16
    return requested


def quant_fallbacks(tensors: list[Tensor], requested: DType | None) -> list[dict[str, Any]]:
    """The matrices that cannot take ``requested`` and what they get instead, and why."""
    if requested is None or not requested.info.quantized:
        return []
    out = []
    for t in tensors:
        got = output_dtype(t, requested)
        if len(t.shape) == 2 and got != requested and t.dtype != requested:
            if t.name.endswith(ROUTER_SUFFIX):
                reason = "routers of a mixture of experts, never quantised"
                why = "the router of a mixture of experts: llama.cpp never quantises it"
            else:
                reason = "rows not whole blocks"
                why = (
                    f"rows of {t.shape[-1]} elements are not whole "
                    f"{requested.info.block_elements}-element blocks"
                )
            out.append(
                {
                    "tensor": t.name,
                    "requested": requested.name,
                    "written": got.name,
                    "why": why,
                    "reason": reason,  # the kind of fallback, for a one-line note
                }
            )
    return out


#: elements per step when quantising a matrix: its float32 copy and the quantiser's
#: temporaries then cost tens of MB, not several times the tensor
ENCODE_CHUNK = 1 << 22


def encode(t: Tensor, dtype: DType) -> np.ndarray:
    """The tensor's bytes in ``dtype`` (its own bytes, uncopied, when unchanged). A matrix
    is quantised a band of rows at a time (blocks never cross rows: same bytes)."""
    if dtype == t.dtype:
        return t.raw()
    if not (dtype.info.quantized and len(t.shape) == 2 and t.shape[0] > 1):
        return from_float32(t.to_float32(), dtype)
    rows, cols = t.shape
    raw = t.raw()
    row_in, row_out = raw.size // rows, nbytes(dtype, (cols,))
    out = np.empty(rows * row_out, dtype=np.uint8)
    step = max(1, ENCODE_CHUNK // max(cols, 1))
    for r in range(0, rows, step):
        n = min(step, rows - r)
        values = to_float32(raw[r * row_in : (r + n) * row_in], t.dtype, (n, cols))
        out[r * row_out : (r + n) * row_out] = from_float32(values, dtype).reshape(-1)
    return out


def unchanged_span(t: Tensor, dtype: DType) -> tuple[Path, int] | None:
    """Where the bytes ``t`` gets in ``dtype`` lie unchanged in a file, as ``(path,
    offset)``: a writer then copies them file to file (``SpanCopier``); None where they
    must be made by ``encode``."""
    return t.span if dtype == t.dtype else None


def provenance(model: Model) -> dict[str, Any]:
    return {
        "source_file": model.path.name,
        "source_format": model.format,
        "converter": f"aprlib {__version__}",
    }


#: bytes per read when a span's CRC32 is needed: the read lands in the CPU cache, the CRC
#: and the write read it there (16 MiB pieces went through memory twice and ran slower)
CRC_PIECE = 1 << 20
#: bytes written between requests to start their write-back
WRITEBACK_EVERY = 16 << 20
#: copy a span that needs no CRC with ``copy_file_range`` (else through the buffer, as a
#: span with one). Off: on this project's ext4 host the kernel's copy (a splice, a pipe's
#: worth of pages at a time) made ``apr convert`` to GGUF of the Qwen2.5-0.5B-sized BF16
#: model 2.60-2.84 s against 2.25-2.35 s through the 1 MiB buffer, fsync included (issue
#: 27, interleaved runs of bench/bench_convert.py). On a filesystem that clones extents
#: (XFS, btrfs) the kernel's copy is a reflink and would win: measure there before turning
#: this on.
KERNEL_COPY = False
#: ``sync_file_range(2)`` flag: start write-back of the range, wait for nothing
_SYNC_FILE_RANGE_WRITE = 2


def _writeback_starter() -> Callable[[int, int, int], None]:
    """``start(fd, offset, count)``: begin writing the range to disk now, without waiting
    (Linux ``sync_file_range``), so that the disk works while the next bytes are copied
    and the final fsync finds little left; a no-op where the call does not exist."""
    try:
        import ctypes

        call = ctypes.CDLL(None, use_errno=True).sync_file_range
    except (ImportError, OSError, AttributeError):
        return lambda fd, offset, count: None
    call.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
    call.restype = ctypes.c_int

    def start(fd: int, offset: int, count: int) -> None:
        if count > 0:  # a count of 0 would mean "to the end of the file"
            call(fd, offset, count, _SYNC_FILE_RANGE_WRITE)  # advisory: errors are fsync's

    return start


def pwrite_all(fd: int, data: np.ndarray | memoryview, pos: int) -> None:
    """All of ``data`` (an array's bytes, or a byte view) at ``pos`` of ``fd``: ``pwrite`` may
    write less than asked."""
    view = data if isinstance(data, memoryview) else np.ascontiguousarray(data).reshape(-1).data
    view = view.cast("B")
    done = 0
    while done < len(view):
        done += os.pwrite(fd, view[done:], pos + done)


class SpanCopier:
    """Copies byte spans of source files into one output file, file to file.

    A span whose CRC32 is needed is read once, in cache-sized pieces into one reused
    buffer, checksummed there and written from there (``pread``, ``crc32``, ``pwrite``:
    one read and one write of each byte, nothing decoded, no tensor whole in memory). A
    span without one goes the same way without the CRC, or by the kernel
    (``copy_file_range``) where ``KERNEL_COPY`` says so. Either way the write-back of what
    was written starts every 16 MiB
    (``sync_file_range``), so that the disk works while the rest is copied and the final
    fsync, the one a durable ``cp`` pays too, finds little left. Each source is opened once,
    until ``close``.

    Measured on a Qwen2.5-0.5B-sized BF16 model (issue 27): the kernel copying on a thread
    while this one read the span again for its CRC was slower than one read and one write
    here wherever the CPUs were busy (the CRC and the copy compete for them).
    """

    def __init__(self, out: int) -> None:
        self.out = out
        self._sources: dict[Path, FileSource] = {}
        self._buf: memoryview | None = None
        self._writeback = _writeback_starter()

    def _source(self, path: Path, identity: tuple[int, int] | None) -> int:
        """The source's descriptor, opened once; ``identity`` (the reader's
        ``FileSource.identity``) makes a file replaced since it was read an error."""
        src = self._sources.get(path)
        if src is None:
            src = self._sources[path] = FileSource(path, expect=identity)
        return src.fd

    def copy(
        self,
        source: Path | str,
        offset: int,
        count: int,
        dest: int,
        crc: bool,
        tensor: str,
        identity: tuple[int, int] | None = None,
    ) -> int | None:
        """Copy ``count`` bytes of ``source`` at ``offset`` to ``dest`` of the output; the
        CRC32 of those bytes when ``crc``, else None. ``identity``: the file the offsets
        belong to (``Tensor.span_file``)."""
        source = Path(source)
        fd = self._source(source, identity)
        if crc:
            return self._through_buffer(source, fd, offset, count, dest, tensor, crc=True)
        if not KERNEL_COPY:
            self._through_buffer(source, fd, offset, count, dest, tensor)
            return None
        done = 0
        while done < count:
            n = min(WRITEBACK_EVERY, count - done)
            if not _copy_range(fd, self.out, n, offset + done, dest + done):
                rest = count - done  # no copy_file_range here (or the source shrank)
                self._through_buffer(source, fd, offset + done, rest, dest + done, tensor)
                return None
            self._writeback(self.out, dest + done, n)
            done += n
        return None

    def copy_unchanged(self, t: Tensor, dtype: DType, dest: int) -> bool:
        """``t`` written as ``dtype`` at ``dest`` by copying its stored bytes, its CRC32
        checked as they pass where it has one; False (nothing written) where its bytes must
        be made by ``encode``."""
        span = unchanged_span(t, dtype)
        if span is None:
            return False
        source, offset = span
        size = nbytes(dtype, t.shape)
        crc = self.copy(
            source, offset, size, dest, crc=t.checksummed, tensor=t.name, identity=t.span_file
        )
        if crc is not None:
            t.check_crc(crc)
        return True

    def _through_buffer(
        self,
        source: Path,
        fd: int,
        offset: int,
        count: int,
        dest: int,
        tensor: str,
        crc: bool = False,
    ) -> int:
        if self._buf is None:
            self._buf = memoryview(bytearray(CRC_PIECE))
        buf, value, done, started = self._buf, 0, 0, 0
        while done < count:
            n = os.preadv(fd, [buf[: min(CRC_PIECE, count - done)]], offset + done)
            if n <= 0:
                raise FileChangedError(source, "file changed: it ends early", tensor=tensor)
            if crc:
                value = crc32(buf[:n], value)
            written = 0
            while written < n:
                written += os.pwrite(self.out, buf[written:n], dest + done + written)
            done += n
            if done - started >= WRITEBACK_EVERY:
                self._writeback(self.out, dest + started, done - started)
                started = done
        self._writeback(self.out, dest + started, done - started)
        return value

    def close(self) -> None:
        for src in self._sources.values():
            src.close()
        self._sources.clear()


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
