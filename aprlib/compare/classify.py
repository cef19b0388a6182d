"""One pair of tensors, one tag: the detectors tried from the most specific explanation to the
least.
"""

from __future__ import annotations

import dataclasses
import zlib
from dataclasses import dataclass
from typing import Any

import numpy as np

from aprlib.compare import pairscan
from aprlib.compare.chunks import chunk_pairs, chunks
from aprlib.compare.mislabel import FLOATS, find_mislabel
from aprlib.compare.quantnoise import BOUND_TEXT, INTERMEDIATES, cosine_floor, precision
from aprlib.compare.report import (
    DTYPE_MISLABEL,
    EQUIVALENT,
    IDENTICAL,
    INF,
    NAN,
    PERMUTED,
    QUANT_NOISE,
    SCALED,
    SHAPE_MISMATCH,
    SHIFTED,
    TRANSPOSED,
    VALUE_DRIFT,
    Pair,
    describe,
)
from aprlib.config.families import GATE_UP_ORDER, GATE_UP_PROJ, QKV_ORDER, QKV_PROJ
from aprlib.formats import layout
from aprlib.formats.dtypes import DType, to_float32
from aprlib.formats.io import Tensor


@dataclass
class Tolerance:
    atol: float = 1e-6
    rtol: float = 1e-5


def classify(
    ta: Tensor,
    tb: Tensor,
    tol: Tolerance,
    heads: tuple[int, ...] = (),
    dtype_counts: tuple[dict[DType, int], dict[DType, int]] = ({}, {}),
    config_dtypes: tuple[DType | None, DType | None] = (None, None),
    fused_rows: tuple[int, ...] = (),
) -> Pair:
    """``dtype_counts``: how many tensors of each dtype A's and B's files hold, the file's
    own testimony on which tag of a mislabelled tensor is the odd one; ``config_dtypes``:
    each side's config ``torch_dtype``, its testimony on the same; ``fused_rows``: where
    the tensor is a fused projection, the rows of each of its parts as the config says
    (``qkv_proj``: q, k, v; ``gate_up_proj``: gate, up), so rows that moved as exactly
    those parts are named by them."""
    pair = Pair(ta.name, "", describe(ta), describe(tb))
    if ta.dtype == tb.dtype and ta.shape == tb.shape and pairscan.bytes_equal(ta, tb):
        pair.tag = IDENTICAL
        return pair
    if ta.shape != tb.shape:
        ta, tb = read_once(ta), read_once(tb)
        mislabel = find_mislabel(ta, tb, dtype_counts, config_dtypes)
        if mislabel is not None:
            pair.tag, pair.detail, pair.mislabel = DTYPE_MISLABEL, mislabel.detail, mislabel
        elif len(ta.shape) == 2 and tuple(reversed(ta.shape)) == tb.shape and _transposed(ta, tb):
            pair.tag = TRANSPOSED
            pair.detail = f"B holds A transposed: {list(ta.shape)} vs {list(tb.shape)}"
        else:
            pair.tag = SHAPE_MISMATCH
            pair.detail = f"{list(ta.shape)} vs {list(tb.shape)}"
        return pair
    # one pass decides the common cases (a lossless re-encoding, a quantised copy within
    # its dtype's bound) and gathers the statistics every other detector starts from
    low = lower_side(ta, tb)
    stats = pairscan.scan(ta, tb, low)
    pair.stats = {k: v for k, v in stats.items() if not k.startswith("_")}
    if stats["_equal"]:
        pair.tag = EQUIVALENT
        pair.detail = f"same values, {ta.dtype.name} vs {tb.dtype.name}"
        return pair
    noise = _quant_noise(ta, tb, low, stats, dtype_counts)
    if noise is not None:
        pair.tag, pair.detail, of_bound = QUANT_NOISE, *noise
        if of_bound is not None:
            pair.stats["of_bound"] = of_bound
        else:
            pair.stats["cosine_only"] = 1.0
        return pair
    # the rare cases: each detector below reads both tensors again, so read each once
    # (a reader copies the bytes out of the file on every raw() call)
    ta, tb = read_once(ta), read_once(tb)
    mislabel = find_mislabel(ta, tb, dtype_counts, config_dtypes)
    if mislabel is not None:  # before NaN: F16 bytes read as BF16 may decode to Inf/NaN
        pair.tag, pair.detail, pair.mislabel = DTYPE_MISLABEL, mislabel.detail, mislabel
        pair.stats = {}
        return pair
    if stats["_first_bad"] is not None:
        where = [int(i) for i in np.unravel_index(stats["_first_bad"], ta.shape or (1,))]
        pair.tag, pair.detail = _nonfinite_finding(stats["_counts"], where)
        return pair
    in_place = _transposed_in_place(ta, tb)
    if in_place:
        pair.tag, pair.detail = TRANSPOSED, in_place
        pair.stats = {}
        return pair
    zeroed = _zeroed(stats)
    if zeroed:
        pair.tag, pair.detail = VALUE_DRIFT, zeroed
        return pair
    explained = _affine(ta, tb, stats, tol)
    if explained:
        pair.tag, pair.detail = explained
        return pair
    permutation = _permutation(ta, tb, heads, stats, fused_rows)
    if permutation:
        pair.tag, pair.detail = PERMUTED, permutation
        return pair
    pair.tag = VALUE_DRIFT
    pair.detail = (
        f"max abs {stats['max_abs']:.3g}, RMS {stats['rms']:.3g}, relative "
        f"{stats['relative']:.3g}, cosine {stats['cosine']:.6f}"
    )
    hint = _drift_hint(ta, tb, low, stats)
    if hint:
        pair.detail += f"; {hint}"
    return pair


def _quant_noise(
    ta: Tensor,
    tb: Tensor,
    low: Tensor | None,
    stats: dict[str, Any],
    dtype_counts: tuple[dict[DType, int], dict[DType, int]],
) -> tuple[str, float | None] | None:
    """(detail, share of the bound) when the pair is its lower side's rounding of the
    higher: directly, or through one intermediate F16/BF16 rounding (an F32 checkpoint
    converted to an F16 or BF16 GGUF, then quantised); for a codebook type with no
    element-wise bound, (detail, None) when its cosine and norm pass the type's floor."""
    if low is None:
        return None
    side = "A" if low is ta else "B"
    if stats["_noise"] is not None:
        return (
            f"within the rounding bound of {low.dtype.name} (the lower-precision side, "
            f"{side}): bound {BOUND_TEXT.get(low.dtype, '?')}, "
            f"worst error {stats['_noise']:.2f} of it"
        ), stats["_noise"]
    if stats["_first_bad"] is not None:
        return None
    floor = cosine_floor(low.dtype)
    if floor is not None:
        norm = (stats["_sum_bb"] / stats["_sum_aa"]) ** 0.5 if stats["_sum_aa"] else 0.0
        if stats["cosine"] >= floor and floor <= norm <= 1 / floor:
            return (
                f"no bound known for {low.dtype.name}: compared by cosine >= {floor} only "
                f"(and norms within {1 - floor:.0%}): cosine {stats['cosine']:.6f}, norm "
                f"ratio {norm:.4f} ({side} is the {low.dtype.name} side)"
            ), None
        return None
    for mid in _intermediates(ta, tb, low, dtype_counts):
        again = pairscan.scan(ta, tb, low, mid)
        if again["_noise"] is not None:
            return (
                f"within the rounding bound of {low.dtype.name} (the lower-precision side, "
                f"{side}) after one {mid.name} rounding: {low.dtype.name} was made from "
                f"{mid.name} values, so |x - q| <= |x - h| + |h - q|, h = x rounded to "
                f"{mid.name} (half a {mid.name} ulp) and |h - q| within bound "
                f"{BOUND_TEXT.get(low.dtype, '?')}; worst error {again['_noise']:.2f} of it"
            ), again["_noise"]
    return None


def _intermediates(
    ta: Tensor,
    tb: Tensor,
    low: Tensor,
    dtype_counts: tuple[dict[DType, int], dict[DType, int]],
) -> tuple[DType, ...]:
    """The half-precision roundings a quantised side may have been made through: only
    below an F32 side, and the one the quantised file's own unquantised tensors use where
    it holds some (else either)."""
    high = tb if low is ta else ta
    if not low.dtype.info.quantized or high.dtype is not DType.F32:
        return ()
    counts = dtype_counts[0 if low is ta else 1]
    said = tuple(d for d in INTERMEDIATES if counts.get(d, 0))
    return said or INTERMEDIATES


def _drift_hint(ta: Tensor, tb: Tensor, low: Tensor | None, stats: dict[str, Any]) -> str:
    """A drift with a known cause: a BF16 side made by truncating the F32 other side
    (round toward zero) instead of rounding to nearest."""
    if low is None or low.dtype is not DType.BF16 or stats["_first_bad"] is not None:
        return ""
    high = tb if low is ta else ta
    if high.dtype is not DType.F32:
        return ""
    truncated = high.raw().view("<u4") >> np.uint32(16)
    if np.array_equal(truncated.astype("<u2"), low.raw().view("<u2")):
        side = "A" if low is ta else "B"
        return (
            f"{side} is the other side's F32 values rounded to BF16 by truncation (round "
            "toward zero), not round-to-nearest-even: every element within one BF16 ulp, "
            "twice the round-to-nearest bound and biased toward zero (a converter's "
            "rounding mode)"
        )
    return ""


def lower_side(ta: Tensor, tb: Tensor) -> Tensor | None:
    """The side whose dtype rounds the other's values, where one does (not F32: nothing
    is rounded to the wider side's precision there)."""
    low, high = (ta, tb) if precision(ta.dtype) < precision(tb.dtype) else (tb, ta)
    if low.dtype is high.dtype or low.dtype is DType.F32:
        return None
    return low


def read_once(t: Tensor) -> Tensor:
    held: list[np.ndarray] = []

    def raw() -> np.ndarray:
        if not held:
            held.append(t.raw())
        return held[0]

    return dataclasses.replace(t, _raw=raw)


def settle_sides(pairs: list[Pair]) -> None:
    """Give undecided mislabels the side the decided ones agree on.

    A norm weight near 1 reads as plausible weights under either tag (F16 bytes read as
    BF16 land near 2^-7), so that tensor alone cannot say which file lies; the 2-D weights
    of the same files can, and one file mislabels all its tensors the same way.
    """
    votes = {"A": 0, "B": 0}
    for p in pairs:
        if p.mislabel is not None and p.mislabel.decided:
            votes[p.mislabel.side] += 1
    if votes["A"] == votes["B"]:
        return
    side = "A" if votes["A"] > votes["B"] else "B"
    for p in pairs:
        if p.mislabel is not None and not p.mislabel.decided:
            p.mislabel = p.mislabel.blamed_on(side)
            p.detail = p.mislabel.detail


def _transposed(ta: Tensor, tb: Tensor) -> bool:
    if tb.dtype not in FLOATS:
        return False
    typed = _typed_view(tb)
    # A's first row against B's first column first: a drifted pair (the common caller)
    # fails here, where decoding and transposing whole chunks of both cost ~0.15 s on a
    # 4864 x 896 matrix; a pass goes on to check every row, the first again
    head = next(chunks(ta, 1), None)
    if head is not None and not _columns_equal(head[1], typed, 0, tb.dtype):
        return False
    return all(_columns_equal(a, typed, start, tb.dtype) for start, a in chunks(ta))


def _columns_equal(a: np.ndarray, typed: np.ndarray, start: int, dtype: DType) -> bool:
    """Whether the rows ``a`` (float32, from row ``start`` of one side) are the columns of
    ``typed`` (the other side's raw elements, flipped shape) from column ``start`` on."""
    cols = typed[:, start : start + a.shape[0]]
    b = to_float32(
        np.ascontiguousarray(cols.T).view(np.uint8).reshape(-1),
        dtype,
        (a.shape[0], typed.shape[0]),
    )
    return bool(np.array_equal(a, b, equal_nan=True))


def _transposed_in_place(ta: Tensor, tb: Tensor) -> str:
    """One side's bytes are the other's matrix transposed while its shape label stayed
    the row-major one: ``B.reshape(shape[::-1]).T == A`` (the row-major/column-major bug;
    a square matrix is the special case). Returns the finding's detail, or ''."""
    if len(ta.shape) != 2 or ta.shape != tb.shape:
        return ""
    flipped = tuple(reversed(ta.shape))
    for x, y, side in ((ta, tb, "B"), (tb, ta, "A")):
        if y.dtype in FLOATS and _transposed(x, dataclasses.replace(y, shape=flipped)):
            return (
                f"{side} stored transposed (column-major) under a row-major shape: a layout "
                f"defect ({side}'s bytes hold the matrix transposed, {list(flipped)} row-major, "
                f"under the label {list(ta.shape)})"
            )
    return ""


def _typed_view(t: Tensor) -> np.ndarray:
    kinds = {DType.F32: "<u4", DType.F16: "<u2", DType.BF16: "<u2"}
    return t.raw().view(kinds[t.dtype]).reshape(t.shape)


def _nonfinite_finding(counts: dict[str, int], where: list[int]) -> tuple[str, str]:
    """``(NAN, "1 NaN in B only, first at [3, 5]")``: the kind, how many, where first."""
    parts = []
    for kind, label in (("nan", "NaN"), ("inf", "Inf")):
        na, nb = counts[f"{kind}_a"], counts[f"{kind}_b"]
        if na and not nb:
            parts.append(f"{na} {label} in A only")
        elif nb and not na:
            parts.append(f"{nb} {label} in B only")
        elif na or nb:
            parts.append(f"{label}: {na} in A, {nb} in B, not at the same places")
    tag = NAN if counts["nan_a"] or counts["nan_b"] else INF
    return tag, f"{', '.join(parts)}, first at {where}"


def _zeroed(stats: dict[str, Any]) -> str:
    """'B is all zeros where A is not': a zeroed tensor is no scaling by 0."""
    for mine, theirs, side, other in (
        ("_sum_bb", "_sum_aa", "B", "A"),
        ("_sum_aa", "_sum_bb", "A", "B"),
    ):
        if stats[mine] == 0 and stats[theirs] > 0 and stats["_first_bad"] is None:
            return f"{side} is all zeros where {other} is not (a zeroed tensor)"
    return ""


def _affine(
    ta: Tensor, tb: Tensor, stats: dict[str, Any], tol: Tolerance
) -> tuple[str, str] | None:
    """SCALED (b = c a) or SHIFTED (b = a + k), checked element by element."""
    c, k = stats["_ratio"], stats["_offset"]
    scaled = np.isfinite(c) and abs(c - 1) > 1e-3
    shifted = abs(k) > tol.atol * 10
    if not scaled and not shifted:
        return None  # the statistics rule both out: no element-wise pass
    c, k = _exact_ratio_and_offset(ta, tb)  # the scan's float32 sums only chose candidates
    for _, a, b in chunk_pairs(ta, tb):
        a64, b64 = a.astype(np.float64), b.astype(np.float64)
        limit = tol.atol + tol.rtol * np.abs(b64)
        if scaled and not (np.abs(b64 - c * a64) <= limit).all():
            scaled = False
        if shifted and not (np.abs(b64 - a64 - k) <= limit).all():
            shifted = False
        if not scaled and not shifted:
            return None
    if scaled:
        return SCALED, f"B = {c:.6g} x A"
    if shifted:
        hint = " (the 1 + w norm convention)" if abs(k - 1) < 1e-6 or abs(k + 1) < 1e-6 else ""
        return SHIFTED, f"B = A {k:+.6g}{hint}"
    return None


def _exact_ratio_and_offset(ta: Tensor, tb: Tensor) -> tuple[float, float]:
    """c = a.b / a.a and k = mean(b - a), summed in float64 (the element-wise test that
    follows holds b to them within atol + rtol |b|, tighter than float32 sums can be)."""
    ab = aa = shift = 0.0
    n = 0
    for _, a, b in chunk_pairs(ta, tb):
        a64, b64 = a.astype(np.float64).reshape(-1), b.astype(np.float64).reshape(-1)
        ab += float(a64 @ b64)
        aa += float(a64 @ a64)
        shift += float((b64 - a64).sum())
        n += a64.size
    return (ab / aa if aa else float("nan")), (shift / n if n else 0.0)


def _row_keys(t: Tensor, raw_bytes: bool = False) -> list[int]:
    """A CRC per row: of the raw bytes where both sides share a dtype (equal bytes, equal
    values), else of the decoded float32 row."""
    if raw_bytes and t.shape:
        raw = t.raw().reshape(t.shape[0], -1)
        return [zlib.crc32(r.data) for r in raw]
    keys = []
    for _, rows in chunks(t):
        flat = np.ascontiguousarray(rows.reshape(rows.shape[0], -1))
        keys += [zlib.crc32(r.tobytes()) for r in flat]
    return keys


def _permutation(
    ta: Tensor,
    tb: Tensor,
    heads: tuple[int, ...],
    stats: dict[str, Any] | None = None,
    fused_rows: tuple[int, ...] = (),
) -> str:
    if not ta.shape or ta.shape[0] < 2:
        return ""
    if stats and not np.isclose(stats["_sum_aa"], stats["_sum_bb"], rtol=1e-4, atol=0.0):
        return ""  # reordered rows keep the sum of squares: no need to hash every row
    same = ta.dtype == tb.dtype and not ta.dtype.info.quantized
    ka, kb = _row_keys(ta, same), _row_keys(tb, same)
    if sorted(ka) != sorted(kb) or len(set(ka)) != len(ka):
        return ""
    index = {k: i for i, k in enumerate(ka)}
    order = np.array([index[k] for k in kb])  # B row r is A row order[r]
    identity = np.arange(len(order))
    for h in heads:
        if h and len(order) % (2 * h) == 0:
            if np.array_equal(order, layout.permute_qk(identity, h)):
                return (
                    f"rotary interleave: B has llama.cpp's pairwise q/k row order "
                    f"(n_head={h}); A has HF's half-rotation order"
                )
            if np.array_equal(order, layout.unpermute_qk(identity, h)):
                return (
                    f"rotary interleave: A has llama.cpp's pairwise q/k row order "
                    f"(n_head={h}); B has HF's half-rotation order"
                )
    moved = int((order != identity).sum())
    blocks = exchanged_blocks(ta.name, order, fused_rows)
    return blocks or f"rows reordered: {moved} of {len(order)} rows moved"


#: a fused projection's parts (``families.QKV_ORDER``/``GATE_UP_ORDER``) by tensor name
_FUSED_PARTS = {QKV_PROJ + ".weight": QKV_ORDER, GATE_UP_PROJ + ".weight": GATE_UP_ORDER}


def exchanged_blocks(name: str, order: np.ndarray, fused_rows: tuple[int, ...] = ()) -> str:
    """Whole blocks of rows in another order (B row r is A row ``order[r]``), said in
    words: the parts of a fused projection by name where every block is exactly a run of
    its parts (``fused_rows``: each part's rows, from the config), else the row ranges
    where every block is more than one row. "" where a row moved singly, or the rows moved
    in more than four blocks."""
    starts = [0, *(np.flatnonzero(np.diff(order) != 1) + 1).tolist()]
    runs = [
        (int(order[s]), int(e - s)) for s, e in zip(starts, [*starts[1:], len(order)], strict=True)
    ]
    parts = next((p for key, p in _FUSED_PARTS.items() if name.endswith("." + key)), None)
    if parts and len(fused_rows) == len(parts) and sum(fused_rows) == len(order):
        bounds = np.cumsum([0, *fused_rows]).tolist()  # where each part starts in A, and the end
        held: list[str] = []
        for start, n in runs:  # each block a whole number of parts, from a part's first row
            if start not in bounds or start + n not in bounds:
                held = []
                break
            held += [parts[i] for i in range(bounds.index(start), bounds.index(start + n))]
        if held and len(runs) > 1:
            said = ", ".join(held)
            return f"fused parts in another order: B holds {said} where A holds {', '.join(parts)}"
    if not 2 <= len(runs) <= 4 or any(n < 2 for _, n in runs):
        return ""
    said = ", ".join(f"A's rows {start}-{start + n - 1}" for start, n in runs)
    return f"blocks of rows in another order: B holds {said}"
