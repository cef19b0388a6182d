"""Reading a model file that may change under us: pread into owned buffers.

A memory map of a file that is truncated after it was mapped kills the process with
SIGBUS on the next touch of a lost page (apr inspect/diff/convert died of signal 7). Here
every read is a ``preadv`` into a buffer this process owns: a file that shrank gives a
short read, which becomes ``FileChangedError``; no signal is possible. Opening is
non-blocking and refuses anything but a regular file, so a FIFO cannot hang a reader.

The one exception, on request: ``mapped=True`` serves ``read`` as zero-copy views of a
memory map, for a caller that owns the file and needs its pages to come and go (the
reference model's zero-copy load). Such a caller accepts that a file truncated under it
can raise SIGBUS; nothing in ``apr`` opens files that way.
"""

from __future__ import annotations

import contextlib
import gc
import mmap
import os
import stat
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from aprlib.errors import FileChangedError, ModelFileError, ModelMemoryError

CHUNK = 16 << 20
#: below this many bytes zlib's CRC32 is used even where libdeflate's is: a ctypes call
#: and a numpy view of the buffer cost about as much as zlib spends on 64 KiB
FAST_CRC_MIN = 64 << 10


def _load_crc32() -> Any:
    """libdeflate's CRC32 through ctypes, or None where the system has no libdeflate.

    The same CRC32 as zlib's (the polynomial, initial value and chaining of
    ``zlib.crc32(data, value)``), computed with carry-less multiplication: 9 GB/s against
    zlib 1.2.13's 3 GB/s on this project's AMD EPYC host, where the CRC of an APR tensor
    was the largest cost of ``apr diff`` and ``apr convert`` after the copy itself. ctypes
    drops the GIL for the call, as zlib does for a large buffer. Loaded by its soname:
    ``ctypes.util.find_library`` would run ldconfig in a child process."""
    import ctypes

    try:
        crc = ctypes.CDLL("libdeflate.so.0").libdeflate_crc32
    except (OSError, AttributeError):
        return None
    crc.argtypes = [ctypes.c_uint32, ctypes.c_void_p, ctypes.c_size_t]
    crc.restype = ctypes.c_uint32
    return crc


_FAST_CRC: list[Any] = []  # [libdeflate_crc32 or None], loaded on the first large buffer


def crc32(data: Any, value: int = 0) -> int:
    """``zlib.crc32(data, value)`` (the same number), by libdeflate where the system has
    it and the buffer is large (``FAST_CRC_MIN``). ``data``: any contiguous buffer."""
    view = memoryview(data)
    if view.nbytes < FAST_CRC_MIN or not view.c_contiguous:
        return zlib.crc32(view, value)
    if not _FAST_CRC:
        _FAST_CRC.append(_load_crc32())
    fast = _FAST_CRC[0]
    if fast is None:
        return zlib.crc32(view, value)
    flat = np.frombuffer(view.cast("B") if view.format != "B" else view, dtype=np.uint8)
    return int(fast(value, flat.ctypes.data, flat.size))


class FileSource:
    """An open regular file with the size it had when opened."""

    def __init__(
        self,
        path: Path | str,
        error: type[ModelFileError] = ModelFileError,
        mapped: bool = False,
        expect: tuple[int, int] | None = None,
    ) -> None:
        """``expect``: the ``identity`` of the file a reader opened at this path before; a
        different file there now (replaced, not rewritten in place) is ``FileChangedError``,
        never its bytes read at the first file's offsets."""
        self.path = Path(path)
        self.error = error
        self.map: mmap.mmap | None = None
        try:
            self.fd = os.open(self.path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError as exc:
            raise error(self.path, f"cannot open: {exc.strerror}") from None
        try:
            st = os.fstat(self.fd)
            if not stat.S_ISREG(st.st_mode):
                raise error(self.path, "not a regular file (a FIFO, device or socket)")
            #: (device, inode): which file this is, whatever its path later names
            self.identity = (st.st_dev, st.st_ino)
            if expect is not None and self.identity != expect:
                raise FileChangedError(
                    self.path, "file changed: another file is at this path since it was opened"
                )
        except BaseException:
            os.close(self.fd)
            raise
        self.size = st.st_size
        self.sparse = st.st_blocks * 512 < st.st_size // 2  # mostly holes
        if mapped and self.size:
            try:
                self.map = mmap.mmap(self.fd, 0, access=mmap.ACCESS_READ)
            except OSError as exc:
                os.close(self.fd)
                raise ModelMemoryError(self.path, f"cannot map: {exc.strerror}") from None

    def read_into(
        self, buf: memoryview, offset: int, tensor: str | None = None, field: str | None = None
    ) -> None:
        """Fill ``buf`` from ``offset``; a short read means the file changed."""
        done, total = 0, len(buf)
        while done < total:
            try:
                n = os.preadv(self.fd, [buf[done:]], offset + done)
            except OSError as exc:
                raise self.error(
                    self.path, f"read failed: {exc.strerror}", tensor=tensor, field=field
                ) from None
            if n <= 0:
                raise FileChangedError(
                    self.path,
                    f"file changed while open: it ends before byte {offset + total:,} "
                    f"(it had {self.size:,} bytes when opened)",
                    tensor=tensor,
                    field=field,
                )
            done += n

    def read(
        self, offset: int, length: int, tensor: str | None = None, field: str | None = None
    ) -> np.ndarray:
        """``length`` bytes at ``offset`` as a fresh uint8 array (a view of the map when
        opened ``mapped``)."""
        if offset + length > self.size:
            raise self.error(
                self.path,
                f"[{offset:,}, +{length:,}) runs past the end ({self.size:,} bytes)",
                tensor=tensor,
                field=field,
            )
        if self.map is not None:
            return np.frombuffer(self.map, dtype=np.uint8, count=length, offset=offset)
        try:
            out = np.empty(length, dtype=np.uint8)
        except MemoryError:
            raise ModelMemoryError(
                self.path, f"{length:,} bytes do not fit in memory", tensor=tensor, field=field
            ) from None
        if length:
            self.read_into(out.data, offset, tensor, field)
        return out

    def chunks(self, offset: int, length: int, tensor: str | None = None) -> Any:
        """Yield the bytes of a span in pieces of at most ``CHUNK`` (flat memory)."""
        buf = memoryview(bytearray(min(length, CHUNK) or 1))
        done = 0
        while done < length:
            n = min(CHUNK, length - done)
            self.read_into(buf[:n], offset + done, tensor)
            yield buf[:n]
            done += n

    def close(self) -> None:
        if self.map is not None:
            with contextlib.suppress(BufferError):  # a view is alive: the map closes with it
                self.map.close()
            self.map = None
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __enter__(self) -> FileSource:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


@contextlib.contextmanager
def paused_gc() -> Iterator[None]:
    """No cyclic GC while an index of many entries becomes objects: each full collection
    walks every object made so far, so 400,000 tensors took minutes instead of seconds."""
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()
