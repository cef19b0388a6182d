"""The rounding bound of a lower-precision encoding, element by element, in float32.

``apr diff`` calls a pair QUANT_NOISE only when every element of the higher-precision side
lies within the rounding its lower-precision twin's dtype does. The bounds are exact
statements about the encodings (half an ulp, half a quantisation step), evaluated in
float32 on cache-sized pieces: a quantised diff touches every element of both files, so
a float64 round trip per element would cost more than reading the files. Float32 is
enough because every bound carries a relative slack (``SLACK``) far above the float32
rounding of ``|high - low|``.
"""

from __future__ import annotations

import math

import numpy as np

from aprlib.formats.dtypes import Q8_0_BLOCK, DType

#: relative slack on every bound: float32 evaluation of |high - low| and of the bound
#: itself rounds by at most a few 2^-24; 2^-16 covers that with room, and is far below
#: any real defect (a scaled or shifted tensor misses the bound by orders of magnitude)
SLACK = np.float32(1 + 2.0**-16)
TINY = np.float32(2.0**-126)  # the smallest normal float32: keeps 0/0 out, never subnormal

#: bits per weight of the other GGML types, for a generic rounding bound
CODE_BITS = {
    DType.Q4_0: 4, DType.Q4_1: 4, DType.Q5_0: 5, DType.Q5_1: 5, DType.Q2_K: 2, DType.Q3_K: 3,
    DType.Q5_K: 5, DType.Q6_K: 6, DType.IQ4_NL: 4, DType.IQ4_XS: 4, DType.MXFP4: 4,
}  # fmt: skip

#: the ternary types: 256-element blocks of q in {-1, 0, 1} times the block's f16 scale d,
#: which ggml sets to the block's largest |x| (q = round(x / d)). So every element lies
#: within d/2 of its code, plus the f16 rounding of d itself: the byte offset of d
TERNARY = {DType.TQ1_0: 52, DType.TQ2_0: 64}

#: the codebook types (a 3-, 2- or 1-bit grid of 4- or 8-value points, searched under
#: sign and scale constraints): ggml's search gives no element-wise bound that a short
#: derivation could stand behind, so they are compared by cosine only, and say so
COSINE_ONLY = {
    DType.IQ3_S: 0.95, DType.IQ3_XXS: 0.95, DType.IQ2_S: 0.85, DType.IQ2_XS: 0.85,
    DType.IQ2_XXS: 0.85, DType.IQ1_S: 0.6, DType.IQ1_M: 0.6,
}  # fmt: skip

#: the bits per weight the generic bound's step is of: its own and the codebook types'
BITS = {
    **CODE_BITS,
    DType.IQ2_XXS: 2, DType.IQ2_XS: 2, DType.IQ3_XXS: 3, DType.IQ1_S: 1, DType.IQ3_S: 3,
    DType.IQ2_S: 2, DType.IQ1_M: 1, DType.TQ1_0: 1, DType.TQ2_0: 2,
}  # fmt: skip

#: what each bound allows per element, in words, for the output
BOUND_TEXT = {
    DType.BF16: "|x| 2^-8 (half a BF16 ulp)",
    DType.F16: "|x| 2^-11 + 2^-25 (half an F16 ulp)",
    DType.Q8_0: "d/2 per 32-element block (half a Q8_0 step)",
    DType.Q4_K: "d*scale/2 per 32-element sub-block (half a Q4_K step), plus ggml's clamp "
    "outside the sub-block's range (at most a step + 8 d + dmin)",
    **{
        d: f"one {bits}-bit step over each 32-element group's +-max range ({d.name})"
        for d, bits in CODE_BITS.items()
    },
    **{
        d: f"d/2 per 256-element block (half a {d.name} step: q in -1..1 times the "
        "block's max |x|), plus the f16 rounding of d"
        for d in TERNARY
    },
}

#: the intermediate roundings ``--expect quantized`` accepts before a quantisation: the
#: quantiser saw the half-precision rounding h of x, so |x - q| <= |x - h| + |h - q|; the
#: second term is held to the quantisation's own bound of h (recomputed exactly, RNE)
INTERMEDIATES = (DType.F16, DType.BF16)


def round_through(values: np.ndarray, mid: DType) -> np.ndarray:
    """``values`` (float32) rounded to ``mid`` (F16 or BF16, round-to-nearest-even, as
    llama.cpp's converter and torch write them) and back to float32."""
    if mid is DType.F16:
        with np.errstate(over="ignore"):
            return values.astype(np.float16).astype(np.float32)
    bits = np.ascontiguousarray(values, dtype=np.float32).view(np.uint32)
    rounded = (bits + (np.uint32(0x7FFF) + ((bits >> np.uint32(16)) & np.uint32(1)))) & np.uint32(
        0xFFFF0000
    )
    rounded = np.where(np.isnan(values), bits, rounded)
    return rounded.view(np.float32)


def cosine_floor(low: DType) -> float | None:
    """The cosine a codebook type is held to, where no element-wise bound is known."""
    return COSINE_ONLY.get(low)


def has_bound(low: DType) -> bool:
    return low in BOUND_TEXT


def worst_share(
    low: DType,
    high: np.ndarray,
    err: np.ndarray,
    low_raw: np.ndarray,
    work: np.ndarray | None = None,
    sub_blocks: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None,
) -> float:
    """The largest ``err / bound`` over these elements (> 1: some element breaks the bound).

    ``high``: the higher-precision side's values (float32, flat, whole rows); ``err``:
    ``|high - low|`` for the same elements; ``low_raw``: the low side's bytes of exactly
    those elements (whole blocks, since pieces are whole rows); ``work``: a float32 scratch
    array of at least ``err.size`` (a fresh half-megabyte array per piece is page-faulted
    in every time, which cost as much as the arithmetic); ``sub_blocks``: Q4_K's
    ``q4_k_sub_blocks(low_raw)`` where the caller already has it from decoding.
    """
    if not err.size:
        return 0.0
    out = work[: err.size] if work is not None else np.empty_like(err)
    if low is DType.BF16 or low is DType.F16:
        bound = np.abs(high, out=out)
        bound *= np.float32(2.0**-8 if low is DType.BF16 else 2.0**-11)
        bound += TINY if low is DType.BF16 else np.float32(2.0**-25)
        bound *= SLACK
        np.divide(err, bound, out=bound)
        return float(bound.max())
    if low is DType.Q8_0:
        d = low_raw.view(Q8_0_BLOCK)["d"].astype(np.float32)
        # half a step, plus the f16 rounding of the stored scale over 127 steps
        per_block = d * np.float32(0.5) + np.float32(127 * 1.01) * np.maximum(
            d * np.float32(2.0**-11), np.float32(2.0**-25)
        )
        inverse = np.float32(1) / (per_block * SLACK + TINY)
        share = out.reshape(-1, 32)
        np.multiply(err.reshape(-1, 32), inverse[:, None], out=share)
        return float(share.max())
    if low is DType.Q4_K:
        return _q4_k_share(high, err, sub_blocks or q4_k_sub_blocks(low_raw), out)
    if low in TERNARY:
        return _ternary_share(low, err, low_raw)
    bits = CODE_BITS[low]
    groups = np.abs(high).reshape(-1, 32)
    step = groups.max(axis=1) * np.float32(2 / max(2**bits - 1, 1) * 1.25)
    bound = groups * np.float32(2.0**-10) + step[:, None]
    bound *= SLACK
    bound += TINY
    return float((err.reshape(-1, 32) / bound).max())


def _ternary_share(low: DType, err: np.ndarray, low_raw: np.ndarray) -> float:
    """d/2 per block (q = round(x / d), d = the block's max |x|), plus the f16 rounding of d
    over one step: d_16/2 + 2 half-ulps of d (|x| <= d may round to a code 1 step away
    only when d_16 < d, by at most half an ulp)."""
    width = low.info.block_bytes
    at = TERNARY[low]
    blocks = low_raw.reshape(-1, width)
    d = np.abs(blocks[:, at : at + 2].copy().view(np.float16).astype(np.float32).reshape(-1))
    per_block = d * np.float32(0.5) + np.maximum(d * np.float32(2.0**-10), np.float32(2.0**-24))
    share = err.reshape(-1, low.info.block_elements) / (per_block * SLACK + TINY)[:, None]
    return float(share.max())


def q4_k_sub_blocks(raw: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(step, minimum, clamp) of every 32-element sub-block of Q4_K bytes, float32: ggml's
    d*sc and dmin*m (a value decodes as step*q - minimum, q in 0..15), and how far outside
    [-minimum, 15*step - minimum] ggml's quantiser may leave a value (see ``q4_k_clamp``)."""
    from aprlib.formats.q4k import block_scales

    d, dmin, step, minimum = block_scales(raw)
    return step, minimum, q4_k_clamp(step, d, dmin)


def q4_k_clamp(step: np.ndarray, d: np.ndarray, dmin: np.ndarray) -> np.ndarray:
    """The farthest ggml's Q4_K quantiser leaves a value outside its sub-block's range.

    Its search keeps the scale within [14, 16]/15 of the value range (at most a step of
    clamping), rounds each sub-block's scale and min to six-bit multiples of d and dmin
    (at most 7.5 d over 15 steps, and 0.5 dmin), and d and dmin to f16 (at most 63 x 15
    half-ulps of d, 63 half-ulps of dmin). So: step + 8 d + dmin + 64 (8 ulp(d) + ulp(dmin)).
    Measured over 512k sub-blocks (normal, t2, Cauchy, spikes, scales 1e-4..10): at most
    0.88 of it. A weight farther out is no rounding: a corrupted value is not QUANT_NOISE.
    """
    d, dmin = np.abs(d), np.abs(dmin)
    ulp_d = np.maximum(d * np.float32(2.0**-10), np.float32(2.0**-24))
    ulp_dmin = np.maximum(dmin * np.float32(2.0**-10), np.float32(2.0**-24))
    per_block = np.float32(8) * d + dmin + np.float32(64) * (np.float32(8) * ulp_d + ulp_dmin)
    return step + per_block


def _q4_k_share(
    high: np.ndarray,
    err: np.ndarray,
    sub_blocks: tuple[np.ndarray, np.ndarray, np.ndarray],
    out: np.ndarray,
) -> float:
    """Half a step of each 32-element sub-block, plus how far a value lies outside the
    sub-block's representable range [-minimum, 15*step - minimum] (ggml clamps there):
    ``max(|x - mid|, half_range) - half_range + step/2``, in place in ``out``."""
    step, minimum, clamp = (v.reshape(-1) for v in sub_blocks)
    half_range = step * np.float32(7.5)
    mid = half_range - minimum
    # a per-sub-block stand-in for |x| 2^-20: within the range |x| <= its far end;
    # outside it the outside distance dwarfs it
    far = np.maximum(np.abs(minimum), np.abs(mid + half_range))
    floor = step * np.float32(0.5) + far * np.float32(2.0**-20) + TINY - half_range
    bound = out.reshape(-1, 32)
    np.subtract(high.reshape(-1, 32), mid[:, None], out=bound)
    np.abs(bound, out=bound)
    np.maximum(bound, half_range[:, None], out=bound)
    if (bound > (half_range + clamp)[:, None]).any():
        return math.inf  # farther outside its range than ggml ever clamps
    bound += floor[:, None]
    np.divide(err.reshape(-1, 32), bound, out=bound)
    return float(bound.max()) / float(SLACK)


#: rank of each dtype's precision (higher is finer): which side of a pair rounds the other
PRECISION = {DType.F32: 5, DType.F16: 4, DType.BF16: 3, DType.Q8_0: 2, DType.Q4_K: 1}


def precision(d: DType) -> float:
    return PRECISION.get(d, BITS.get(d, 1) / 8)
