"""Q4_K quantisation, bit-for-bit with ggml's ``quantize_row_q4_K_ref``.

The ``gguf`` package dequantises Q4_K but cannot quantise it, so this is ours. To match
ggml bit for bit, every float operation is float32 in ggml's order: sums run left to right
over the 32 elements of a sub-block (row after row of a ``[32, sub-blocks]`` array, so
every numpy pass is contiguous and covers thousands of sub-blocks), rounding is ggml's
``nearest_int`` (``np.rint`` where that provably agrees), and the f16 scales round to
nearest even. ``tests`` hold it to ``ggml_quantize_chunk`` from the ggml library
that ``llama-cpp-python`` ships.

Block layout (144 bytes per 256 values): f16 ``d``, f16 ``dmin``, 12 bytes of packed 6-bit
sub-block scales and mins, 128 bytes of 4-bit values.
"""

from __future__ import annotations

import numpy as np

QK_K = 256
BLOCK_BYTES = 144
CHUNK_BLOCKS = 1024  # 8192 sub-blocks of 32 values per vectorised pass
_F = np.float32


def _nearest_int(values: np.ndarray) -> np.ndarray:
    """ggml's nearest_int: add 1.5 * 2^23 in float32 and read the mantissa."""
    shifted = (values.astype(_F) + _F(12582912.0)).view(np.int32)
    return (shifted & 0x007FFFFF) - 0x00400000


def _make_qkx2_quants(
    x: np.ndarray,
    w: np.ndarray,
    nmax: int = 15,
    rmin: float = -1.0,
    rdelta: float = 0.1,
    nstep: int = 20,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Vectorised over sub-blocks: x and w are ``[32, sub-blocks]`` (element position
    first, so each step below is a contiguous pass); returns (scale, the_min, L[32, n]).

    ggml's sums that start from 0 are ``np.add.reduce(..., axis=0, initial=0)``: along the
    outer axis numpy adds row after row, the same left-to-right order as ggml's loop
    (``tests/test_q4k_awkward.py`` pins this); the two that start from element 0 stay loops.
    """
    n = x.shape[0]
    mn = x[0].copy()
    mx = x[0].copy()
    sum_w = w[0].copy()
    sum_x = sum_w * x[0]
    for i in range(1, n):
        xi, wi = x[i], w[i]
        np.copyto(mn, xi, where=xi < mn)
        np.copyto(mx, xi, where=xi > mx)
        sum_w += wi
        sum_x += wi * xi
    data_min = mn.copy()
    # NaN/Inf anywhere in a sub-block: the float shortcut in _levels must not be taken
    finite = np.isfinite(np.add.reduce(x, axis=0) * _F(0))
    mn[mn > 0] = _F(0)
    flat = mx == mn
    flat_min = mn.copy()
    buf = _Buffers(x.shape)
    span = np.where(flat, _F(1), mx - mn)
    iscale = _F(nmax) / span
    scale = _F(1) / iscale
    L = _levels(x, mn, iscale, nmax, buf, _regular(iscale, mx, data_min, mn, finite)).copy()
    best = _weighted_error(x, w, L, scale, mn, buf)
    for step in range(nstep + 1):
        # ggml updates ``min`` when a step wins, and later steps scale from the new one
        span = np.where(flat, _F(1), mx - mn)
        iscale = (_F(rmin) + _F(rdelta) * _F(step) + _F(nmax)) / span
        laux = _levels(x, mn, iscale, nmax, buf, _regular(iscale, mx, data_min, mn, finite))
        wl = np.multiply(w, laux, out=buf.wl)
        sum_l = np.add.reduce(wl, axis=0, initial=_F(0))
        sum_l2 = np.add.reduce(np.multiply(wl, laux, out=buf.tmp), axis=0, initial=_F(0))
        sum_xl = np.add.reduce(np.multiply(wl, x, out=buf.tmp), axis=0, initial=_F(0))
        D = sum_w * sum_l2 - sum_l * sum_l
        ok = D > 0
        safe_d = np.where(ok, D, _F(1))
        this_scale = (sum_w * sum_xl - sum_x * sum_l) / safe_d
        this_min = (sum_l2 * sum_x - sum_l * sum_xl) / safe_d
        positive = this_min > 0
        this_min[positive] = _F(0)
        safe_l2 = np.where(sum_l2 == 0, _F(1), sum_l2)
        this_scale = np.where(positive, sum_xl / safe_l2, this_scale)
        cur = _weighted_error(x, w, laux, this_scale, this_min, buf)
        better = ok & (cur < best)
        if better.any():
            np.copyto(L, laux, where=better)
            best = np.where(better, cur, best)
            scale = np.where(better, this_scale, scale)
            mn = np.where(better, this_min, mn)
    L[:, flat] = _F(0)
    scale = np.where(flat, _F(0), scale)
    mn = np.where(flat, flat_min, mn)
    return scale, -mn, L


class _Buffers:
    """Scratch arrays reused across the 22 steps, so no step allocates."""

    def __init__(self, shape: tuple[int, ...]) -> None:
        self.levels = np.empty(shape, dtype=_F)
        self.wl = np.empty(shape, dtype=_F)
        self.tmp = np.empty(shape, dtype=_F)
        self.ints = np.empty(shape, dtype=np.int32)


_SAFE = _F(2.0**21)  # well inside the +-2^22 where the float trick equals nearest_int


def _regular(
    iscale: np.ndarray, mx: np.ndarray, data_min: np.ndarray, mn: np.ndarray, finite: np.ndarray
) -> bool:
    """True when every ``iscale * (x - mn)`` of the chunk is finite and far inside
    +-2^22. Rounding is monotone, so the products lie between those of the sub-block's
    smallest and largest value; there ``np.rint`` gives exactly ggml's ``nearest_int``."""
    hi = np.abs(iscale * (mx - mn))
    lo = np.abs(iscale * (data_min - mn))
    return bool((finite & (hi < _SAFE) & (lo < _SAFE)).all())


def _levels(
    x: np.ndarray, mn: np.ndarray, iscale: np.ndarray, nmax: int, buf: _Buffers, regular: bool
) -> np.ndarray:
    """``clamp(nearest_int(iscale * (x - mn)), 0, nmax)`` as float32, in ``buf.levels``."""
    v = np.subtract(x, mn, out=buf.tmp)
    v *= iscale
    if regular:
        np.rint(v, out=v)
        return np.clip(v, _F(0), _F(nmax), out=buf.levels)
    ints = _nearest_int(v)
    np.clip(ints, 0, nmax, out=ints)
    buf.levels[...] = ints
    return buf.levels


def _weighted_error(
    x: np.ndarray, w: np.ndarray, L: np.ndarray, scale: np.ndarray, mn: np.ndarray, buf: _Buffers
) -> np.ndarray:
    """ggml's sum over i of ``w[i] * (scale * L[i] + min - x[i])^2``, left to right."""
    diff = np.multiply(L, scale, out=buf.tmp)
    diff += mn
    diff -= x
    diff *= diff
    diff *= w
    return np.add.reduce(diff, axis=0, initial=_F(0))


def quantize_q4_k(values: np.ndarray) -> np.ndarray:
    """float32 ``[rows, cols]`` (cols a multiple of 256) → uint8 ``[rows, cols/256*144]``."""
    values = np.ascontiguousarray(values, dtype=_F)
    rows, cols = values.shape
    if cols % QK_K:
        raise ValueError(f"Q4_K needs rows of a multiple of {QK_K} values, got {cols}")
    blocks = values.reshape(-1, 8, 32)
    out = np.empty((blocks.shape[0], BLOCK_BYTES), dtype=np.uint8)
    with np.errstate(all="ignore"):
        # a few thousand sub-blocks at a time: the ~2000 element-wise passes below then run
        # on arrays that stay in the CPU cache (4-5x faster than one pass over the matrix);
        # blocks are independent, so the bytes are the same
        for start in range(0, blocks.shape[0], CHUNK_BLOCKS):
            out[start : start + CHUNK_BLOCKS] = _quantize(blocks[start : start + CHUNK_BLOCKS])
    return out.reshape(rows, cols // QK_K * BLOCK_BYTES)


def _quantize(x: np.ndarray) -> np.ndarray:
    nb = x.shape[0]
    sub = np.ascontiguousarray(x.reshape(nb * 8, 32).T)  # [32, sub-blocks]
    sum_x2 = np.add.reduce(sub * sub, axis=0, initial=_F(0))
    av_x = np.sqrt(sum_x2 / _F(32))
    weights = np.abs(sub)
    weights += av_x  # av_x + |x|: one float add, either order gives the same bits
    scales, mins, L = _make_qkx2_quants(sub, weights)
    scales, mins = scales.reshape(nb, 8), mins.reshape(nb, 8)
    L = L.T.reshape(nb, 8, 32).astype(np.uint8)

    # ggml keeps a running max from 0 with ``>``, which skips NaN (a sub-block whose first
    # value is NaN has a NaN scale); np.max would spread the NaN to the whole block
    max_scale = np.where(scales > 0, scales, _F(0)).max(axis=1)
    max_min = np.where(mins > 0, mins, _F(0)).max(axis=1)
    inv_scale = np.where(max_scale > 0, _F(63) / np.where(max_scale > 0, max_scale, 1), _F(0))
    inv_min = np.where(max_min > 0, _F(63) / np.where(max_min > 0, max_min, 1), _F(0))
    ls = _six_bit_codes(inv_scale[:, None] * scales)
    lm = _six_bit_codes(inv_min[:, None] * mins)

    packed = np.zeros((nb, 12), dtype=np.uint8)
    packed[:, 0:4] = ls[:, 0:4]
    packed[:, 4:8] = lm[:, 0:4]
    packed[:, 8:12] = (ls[:, 4:8] & 0xF) | ((lm[:, 4:8] & 0xF) << 4)
    packed[:, 0:4] |= (ls[:, 4:8] >> 4) << 6
    packed[:, 4:8] |= (lm[:, 4:8] >> 4) << 6

    d16 = (max_scale / _F(63)).astype(np.float16)
    dmin16 = (max_min / _F(63)).astype(np.float16)
    sc, m = _scale_min_k4(packed)
    d = d16.astype(_F)[:, None] * sc.astype(_F)
    dm = dmin16.astype(_F)[:, None] * m.astype(_F)
    requant = np.clip(_nearest_int((x + dm[..., None]) / np.where(d == 0, 1, d)[..., None]), 0, 15)
    L = np.where((d != 0)[..., None], requant, L).astype(np.uint8).reshape(nb, 256)

    qs = np.empty((nb, 128), dtype=np.uint8)
    for chunk in range(4):
        lo = L[:, chunk * 64 : chunk * 64 + 32]
        hi = L[:, chunk * 64 + 32 : chunk * 64 + 64]
        qs[:, chunk * 32 : chunk * 32 + 32] = lo | (hi << 4)
    out = np.empty((nb, BLOCK_BYTES), dtype=np.uint8)
    out[:, 0:2] = d16.view(np.uint8).reshape(nb, 2)
    out[:, 2:4] = dmin16.view(np.uint8).reshape(nb, 2)
    out[:, 4:16] = packed
    out[:, 16:] = qs
    return out


def _six_bit_codes(values: np.ndarray) -> np.ndarray:
    """ggml's ``uint8_t ls = nearest_int(v); ls = MIN(63, ls)``: the int is cut to its low
    byte first, so -1 becomes 255 and then 63 (clamping first would keep 255)."""
    return np.minimum(_nearest_int(values).astype(np.uint8), np.uint8(63))


def _scale_min_k4(q: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    sc = np.empty((q.shape[0], 8), dtype=np.uint8)
    m = np.empty((q.shape[0], 8), dtype=np.uint8)
    sc[:, 0:4] = q[:, 0:4] & 63
    m[:, 0:4] = q[:, 4:8] & 63
    sc[:, 4:8] = (q[:, 8:12] & 0xF) | ((q[:, 0:4] >> 6) << 4)
    m[:, 4:8] = (q[:, 8:12] >> 4) | ((q[:, 4:8] >> 6) << 4)
    return sc, m


def scale_min_k4(packed: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The 8 six-bit scales and 8 six-bit mins of each block from its 12 packed bytes
    (ggml's ``get_scale_min_k4``), public because falsifiers check blocks with it."""
    return _scale_min_k4(packed)


def block_scales(raw: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(d, dmin, step, minimum) of Q4_K bytes, float32: per block ``d``/``dmin`` ``[n, 1]``,
    per 32-element sub-block ``step = d*sc`` and ``minimum = dmin*m`` ``[n, 8]``; a value
    decodes as step*q - minimum, q in 0..15."""
    blocks = raw.reshape(-1, BLOCK_BYTES)
    d = blocks[:, 0:2].copy().view("<f2").astype(_F)
    dmin = blocks[:, 2:4].copy().view("<f2").astype(_F)
    sc, m = _scale_min_k4(blocks[:, 4:16])
    return d, dmin, d * sc, dmin * m


def dequantize_into(
    raw: np.ndarray, out: np.ndarray, scales: tuple[np.ndarray, np.ndarray] | None = None
) -> np.ndarray:
    """Q4_K bytes into the float32 array ``out`` (gguf.quants' arithmetic, d*sc*q - dmin*m
    in float32, without its temporaries): per block, 128 bytes hold 256 four-bit codes,
    low nibbles then high, per 64 values. ``scales``: ``block_scales``' (step, minimum),
    where the caller has them already."""
    blocks = raw.reshape(-1, BLOCK_BYTES)
    n = blocks.shape[0]
    codes = np.empty((n, 4, 2, 32), dtype=np.uint8)
    qs = blocks[:, 16:].reshape(n, 4, 32)
    np.bitwise_and(qs, 15, out=codes[:, :, 0])
    np.right_shift(qs, 4, out=codes[:, :, 1])
    by_sub = out.reshape(n, 8, 32)
    np.copyto(by_sub, codes.reshape(n, 8, 32))
    step, minimum = scales if scales is not None else block_scales(raw)[2:]
    by_sub *= step[..., None]
    by_sub -= minimum[..., None]
    return out
