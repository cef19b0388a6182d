"""Q4_K quantisation, bit-for-bit with ggml's ``quantize_row_q4_K_ref``.

The ``gguf`` package dequantises Q4_K but cannot quantise it, so this is ours. To match
ggml bit for bit, every float operation is float32 in ggml's order: sums run left to right
over the 32 elements of a sub-block (one numpy operation per element position, vectorised
across all sub-blocks), rounding uses ggml's ``nearest_int`` trick, and the f16 scales
round to nearest even. ``tests`` hold it to ``ggml_quantize_chunk`` from the ggml library
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
    """Vectorised over sub-blocks (rows of x): returns (scale, the_min, L)."""
    n = x.shape[1]
    mn = x[:, 0].copy()
    mx = x[:, 0].copy()
    sum_w = w[:, 0].copy()
    sum_x = sum_w * x[:, 0]
    for i in range(1, n):
        xi, wi = x[:, i], w[:, i]
        mn = np.where(xi < mn, xi, mn)
        mx = np.where(xi > mx, xi, mx)
        sum_w = sum_w + wi
        sum_x = sum_x + wi * xi
    mn = np.where(mn > 0, _F(0), mn)
    flat = mx == mn
    flat_min = mn.copy()
    span = np.where(flat, _F(1), mx - mn)
    iscale = _F(nmax) / span
    scale = _F(1) / iscale
    L = np.clip(_nearest_int(iscale[:, None] * (x - mn[:, None])), 0, nmax)
    best = np.zeros_like(mn)
    for i in range(n):
        diff = scale * L[:, i].astype(_F) + mn - x[:, i]
        best = best + w[:, i] * (diff * diff)
    for step in range(nstep + 1):
        # ggml updates ``min`` when a step wins, and later steps scale from the new one
        span = np.where(flat, _F(1), mx - mn)
        iscale = (_F(rmin) + _F(rdelta) * _F(step) + _F(nmax)) / span
        laux = np.clip(_nearest_int(iscale[:, None] * (x - mn[:, None])), 0, nmax)
        lf = laux.astype(_F)
        sum_l = np.zeros_like(mn)
        sum_l2 = np.zeros_like(mn)
        sum_xl = np.zeros_like(mn)
        for i in range(n):
            wl = w[:, i] * lf[:, i]
            sum_l = sum_l + wl
            sum_l2 = sum_l2 + wl * lf[:, i]
            sum_xl = sum_xl + wl * x[:, i]
        D = sum_w * sum_l2 - sum_l * sum_l
        ok = D > 0
        safe_d = np.where(ok, D, _F(1))
        this_scale = (sum_w * sum_xl - sum_x * sum_l) / safe_d
        this_min = (sum_l2 * sum_x - sum_l * sum_xl) / safe_d
        positive = this_min > 0
        this_min = np.where(positive, _F(0), this_min)
        safe_l2 = np.where(sum_l2 == 0, _F(1), sum_l2)
        this_scale = np.where(positive, sum_xl / safe_l2, this_scale)
        cur = np.zeros_like(mn)
        for i in range(n):
            diff = this_scale * lf[:, i] + this_min - x[:, i]
            cur = cur + w[:, i] * (diff * diff)
        better = ok & (cur < best)
        L = np.where(better[:, None], laux, L)
        best = np.where(better, cur, best)
        scale = np.where(better, this_scale, scale)
        mn = np.where(better, this_min, mn)
    L = np.where(flat[:, None], 0, L)
    scale = np.where(flat, _F(0), scale)
    mn = np.where(flat, flat_min, mn)
    return scale, -mn, L


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
    sub = x.reshape(nb * 8, 32)
    sum_x2 = np.zeros(nb * 8, dtype=_F)
    for i in range(32):
        sum_x2 = sum_x2 + sub[:, i] * sub[:, i]
    av_x = np.sqrt(sum_x2 / _F(32))
    weights = av_x[:, None] + np.abs(sub)
    scales, mins, L = _make_qkx2_quants(sub, weights)
    scales, mins, L = scales.reshape(nb, 8), mins.reshape(nb, 8), L.reshape(nb, 8, 32)

    max_scale = np.maximum(scales.max(axis=1), _F(0))
    max_min = np.maximum(mins.max(axis=1), _F(0))
    inv_scale = np.where(max_scale > 0, _F(63) / np.where(max_scale > 0, max_scale, 1), _F(0))
    inv_min = np.where(max_min > 0, _F(63) / np.where(max_min > 0, max_min, 1), _F(0))
    ls = np.minimum(_nearest_int(inv_scale[:, None] * scales), 63).astype(np.uint8)
    lm = np.minimum(_nearest_int(inv_min[:, None] * mins), 63).astype(np.uint8)

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
