"""One pass over a pair of tensors: byte comparison, difference statistics and the
quantisation bound, reading each side once from its file into buffers reused for the
whole diff.

A diff's cost is set here. Most pairs of a real diff are byte-identical and cost a read
and a memcmp; the rest (a quantised copy: every pair) are decoded a cache-sized piece at a
time, and each piece serves the statistics and the rounding bound at once. Nothing the
size of a tensor is allocated: page-faulting fresh memory for every tensor cost more than
the arithmetic. Where a format stores a checksum (APR's CRC32), the bytes are checked as
they stream past; a byte-identical pair is checked once, since the same bytes under each
side's stored CRC verify both.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Generator
from typing import Any

import numpy as np

from aprlib.compare import quantnoise
from aprlib.formats.dtypes import DType, decode_into, element_count
from aprlib.formats.filesource import FileSource, crc32
from aprlib.formats.modelfile import Tensor

CHUNK_BYTES = 16 << 20  # per side per read
#: per side per read of a byte comparison: small enough that both sides' bytes are still in
#: the core's cache when memcmp (and the CRC32) read them back. With 16 MiB reads every
#: byte went to DRAM three times (pread's store, memcmp's load, the CRC's load): a
#: byte-identical 1 GB pair took 0.31 s on 2 threads against 0.14 s in 1 MiB steps (2 x 4
#: MiB per thread overflow an 8 MiB L3 and were as slow as 16 MiB; 256 KiB gained nothing)
COMPARE_BYTES = 1 << 20
#: the magnitudes whose squares a float32 sum of a piece holds without overflow (2^80 x
#: 2^17 elements) or underflow into subnormals; a piece outside is summed in float64
FLOAT32_SAFE = (2.0**-40, 2.0**40)
#: elements decoded at once: big enough that numpy's per-call cost is small beside the
#: arithmetic, small enough that the handful of float32 arrays of a piece stay in cache
PIECE = 1 << 17


class _Buffers(threading.local):
    """Per-thread buffers, allocated on first use and reused for every pair after."""

    def __init__(self) -> None:
        self.read: list[np.ndarray] = []
        self.pieces: list[np.ndarray] = []

    def scratch(self, size: int) -> list[np.ndarray]:
        """Float32 arrays of at least ``size``: a, b, a - b, |a - b|, ones, and the
        bound's workspace."""
        if not self.pieces or self.pieces[0].size < size:
            self.pieces = [np.empty(size, dtype=np.float32) for _ in range(4)]
            self.pieces += [np.ones(size, dtype=np.float32), np.empty(size, dtype=np.float32)]
        return self.pieces

    def read_buffers(self) -> list[np.ndarray]:
        if not self.read:
            self.read = [np.empty(CHUNK_BYTES, dtype=np.uint8) for _ in range(2)]
        return self.read


_LOCAL = _Buffers()


def _load_memcmp() -> Any:
    """libc's memcmp through ctypes (numpy has no allocation-free byte compare: its
    array_equal builds a boolean array). ctypes drops the GIL for the call."""
    import ctypes

    try:
        # the process's own symbols hold libc's memcmp; ctypes.util.find_library("c") would
        # run ldconfig in a child process on every ``apr diff``'s start-up
        memcmp = ctypes.CDLL(None).memcmp
    except (OSError, AttributeError):  # pragma: no cover - platforms without a C library
        return None
    memcmp.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t]
    memcmp.restype = ctypes.c_int
    return memcmp


_MEMCMP = _load_memcmp()


def _same_bytes(x: np.ndarray, y: np.ndarray) -> bool:
    if x.size != y.size:
        return False
    if not x.size:
        return True
    if _MEMCMP is not None:
        return bool(_MEMCMP(x.ctypes.data, y.ctypes.data, x.size) == 0)
    return bool(np.array_equal(x, y))  # pragma: no cover


# --- streaming raw rows ------------------------------------------------------------------


def row_layout(t: Tensor) -> tuple[int, int]:
    """(rows, elements per row) as the pass walks the tensor: a quantised vector is one
    row (its blocks run along it), any other vector is rows of one element."""
    if not t.shape:
        return 1, 1
    if len(t.shape) == 1:
        return (1, t.shape[0]) if t.dtype.info.quantized else (t.shape[0], 1)
    return t.shape[0], element_count(t.shape[1:])


def pair_layout(ta: Tensor, tb: Tensor) -> tuple[int, int]:
    """The layout both sides of a pair are walked in: a vector that is quantised on
    either side is one row on both (blocks must not be cut apart)."""
    if len(ta.shape) == 1 and (ta.dtype.info.quantized or tb.dtype.info.quantized):
        return 1, ta.shape[0]
    return row_layout(ta)


def _raw_rows(
    t: Tensor, n: int, rows: int, buf: np.ndarray, check: bool = True
) -> Generator[np.ndarray, None, None]:
    """The tensor's bytes as ``n`` rows, ``rows`` rows at a time; from its file span into
    ``buf`` where it has one, else slices of raw(). ``check``: verify the stored checksum
    once all is read (the byte comparison checks one CRC for both sides itself)."""
    row_bytes = t.nbytes // n if n else 0
    if t.span is None:
        raw = t.raw().reshape(-1)
        for start in range(0, n, rows):
            yield raw[start * row_bytes : (start + rows) * row_bytes]
        return
    path, offset = t.span
    crc = 0
    check = check and t.checksummed
    with FileSource(path, expect=t.span_file) as src:
        for start in range(0, n, rows):
            view = buf[: min(rows, n - start) * row_bytes]
            src.read_into(view.data, offset + start * row_bytes, t.name)
            if check:
                crc = crc32(view.data, crc)
            yield view
    if check:
        t.check_crc(crc)


def bytes_equal(ta: Tensor, tb: Tensor) -> bool:
    """A memcmp over the raw bytes, a buffer at a time, never a float decode. Identical
    bytes are checked against the stored CRC once: the same bytes verify both sides."""
    if ta.nbytes != tb.nbytes:
        return False
    if ta.span is None and tb.span is None:
        return _same_bytes(ta.raw().reshape(-1), tb.raw().reshape(-1))
    buf_a, buf_b = _LOCAL.read_buffers()
    streams = [
        _raw_rows(t, t.nbytes, COMPARE_BYTES, buf, check=False)
        for t, buf in ((ta, buf_a), (tb, buf_b))
    ]
    crc = 0
    checksummed = ta.checksummed or tb.checksummed
    for x, y in zip(*streams, strict=True):
        if not _same_bytes(x, y):
            for s in streams:
                s.close()  # a differing pair is read again by the full pass, CRC and all
            return False
        if checksummed:
            crc = crc32(x.data, crc)
    ta.check_crc(crc)
    tb.check_crc(crc)
    return True


# --- decoding a piece --------------------------------------------------------------------


# --- the pass ----------------------------------------------------------------------------


def scan(
    ta: Tensor, tb: Tensor, low: Tensor | None, intermediate: DType | None = None
) -> dict[str, Any]:
    """Difference statistics over the positions finite on both sides (NaN and Inf are
    counted and located on their own, so one NaN cannot turn every figure into nan), and
    where ``low`` names the lower-precision side, the worst error as a share of its
    rounding bound (``_noise``: None when some element breaks it). ``intermediate``: an
    F16 or BF16 rounding the low side was quantised from; the bound is then checked
    against the higher side rounded through it (``quantnoise.INTERMEDIATES``), and the
    pass stops at the first piece that breaks it (such a re-scan wants only ``_noise``)."""
    n_rows, row = pair_layout(ta, tb)
    row_bytes_a = ta.nbytes // n_rows if n_rows else 0
    row_bytes_b = tb.nbytes // n_rows if n_rows else 0
    rows = max(1, min(CHUNK_BYTES // max(row_bytes_a, row_bytes_b, 1), n_rows))
    piece_rows = max(1, PIECE // max(row, 1))
    size = max(piece_rows * row, 1)
    buf_a, buf_b = _LOCAL.read_buffers()
    scratch = _LOCAL.scratch(size)
    low_dtype = low.dtype if low is not None else None
    check_noise = low_dtype is not None and quantnoise.has_bound(low_dtype)
    low_is_a = low is ta
    worst = 0.0
    sum_sq = sum_diff = sum_aa = sum_bb = max_abs = max_a = 0.0
    count = 0
    counts = {"nan_a": 0, "nan_b": 0, "inf_a": 0, "inf_b": 0}
    first_bad: int | None = None
    start = 0
    dot = np.dot
    streams = (_raw_rows(ta, n_rows, rows, buf_a), _raw_rows(tb, n_rows, rows, buf_b))
    for raw_a, raw_b in zip(*streams, strict=True):
        count_rows = raw_a.size // row_bytes_a if row_bytes_a else rows
        for r in range(0, count_rows, piece_rows):
            k = min(piece_rows, count_rows - r)
            n = k * row
            piece_a = raw_a[r * row_bytes_a : (r + k) * row_bytes_a]
            piece_b = raw_b[r * row_bytes_b : (r + k) * row_bytes_b]
            sub_a, sub_b = (
                quantnoise.q4_k_sub_blocks(p) if t.dtype is DType.Q4_K else None
                for t, p in ((ta, piece_a), (tb, piece_b))
            )
            a = decode_into(piece_a, ta.dtype, scratch[0][:n], sub_a and sub_a[:2])
            b = decode_into(piece_b, tb.dtype, scratch[1][:n], sub_b and sub_b[:2])
            diff = np.subtract(a, b, out=scratch[2][:n])
            err = np.abs(diff, out=scratch[3][:n])
            worst_here = float(err.max()) if n else 0.0
            if not math.isfinite(worst_here):  # a NaN or Inf (or a float32 overflow)
                check_noise = False
                a, b, bad = _finite_part(a, b, counts)
                if first_bad is None and bad is not None:
                    first_bad = (start + r) * row + bad
                a, b = a.astype(np.float64), b.astype(np.float64)  # finite a - b may overflow
                diff = a - b
                err = np.abs(diff)
                worst_here = float(err.max()) if a.size else 0.0
            magnitude_a = float(max(a.max(), -a.min())) if a.size else 0.0
            max_abs = max(max_abs, worst_here)
            max_a = max(max_a, magnitude_a)
            magnitude = magnitude_a + worst_here  # bounds |b| too
            if (
                a.dtype == np.float32
                and magnitude
                and not (FLOAT32_SAFE[0] <= magnitude <= FLOAT32_SAFE[1])
            ):
                # squares of these would overflow or underflow a float32 sum: widen
                a, b = a.astype(np.float64), b.astype(np.float64)
                diff = a - b
            if check_noise and low_dtype is not None:
                high, low_piece, low_sub = (b, piece_a, sub_a) if low_is_a else (a, piece_b, sub_b)
                low_values = a if low_is_a else b
                noise_err = err
                if intermediate is not None:
                    high = quantnoise.round_through(high, intermediate)
                    noise_err = np.abs(high - low_values)
                share = quantnoise.worst_share(
                    low_dtype, high, noise_err, low_piece, scratch[5], low_sub
                )
                check_noise = share <= 1.0
                worst = max(worst, share)
                if intermediate is not None and not check_noise:
                    break  # a re-scan wants the verdict only: the first piece decides
            # sums through BLAS dot (with ones for a plain sum): 3x faster than numpy's
            # pairwise sum, and accurate to ~1e-7 relative over a piece
            sum_diff += float(dot(diff, scratch[4][: diff.size]))
            sum_sq += float(dot(diff, diff))
            sum_aa += float(dot(a, a))
            sum_bb += float(dot(b, b))
            count += a.size
        start += count_rows
        if intermediate is not None and not check_noise:
            for stream in streams:
                stream.close()
            break
    # a.b from |a - b|^2 = a.a + b.b - 2 a.b: one dot product fewer per piece, and no
    # cancellation that matters (its error is ~1e-7 of a.a + b.b)
    sum_ab = (sum_aa + sum_bb - sum_sq) / 2
    norm = (sum_aa * sum_bb) ** 0.5
    out: dict[str, Any] = {
        "max_abs": max_abs,
        "rms": (sum_sq / count) ** 0.5 if count else 0.0,
        "relative": max_abs / max_a if max_a else float("inf") if max_abs else 0.0,
        "cosine": min(1.0, sum_ab / norm) if norm else 1.0,
        "_equal": max_abs == 0.0 and first_bad is None,
        "_n": count,
        "_ratio": sum_ab / sum_aa if sum_aa else float("nan"),
        "_offset": -sum_diff / count if count else 0.0,  # mean of b - a
        "_sum_aa": sum_aa,
        "_sum_bb": sum_bb,
        "_first_bad": first_bad,
        "_counts": counts,
        "_noise": worst if check_noise else None,
    }
    out.update({k: v for k, v in counts.items() if v})
    return out


def _finite_part(
    a: np.ndarray, b: np.ndarray, counts: dict[str, int]
) -> tuple[np.ndarray, np.ndarray, int | None]:
    """Count this piece's NaN and Inf per side; return the positions finite on both
    sides and the first position where the sides differ in kind."""
    fa, fb = np.isfinite(a), np.isfinite(b)
    na, nb = np.isnan(a), np.isnan(b)
    counts["nan_a"] += int(na.sum())
    counts["nan_b"] += int(nb.sum())
    counts["inf_a"] += int((~fa & ~na).sum())
    counts["inf_b"] += int((~fb & ~nb).sum())
    differs = (na != nb) | (~fa & ~na & (a != b)) | (~fb & ~nb & (a != b))
    bad = int(np.argmax(differs)) if differs.any() else None
    both = fa & fb
    return a[both], b[both], bad
