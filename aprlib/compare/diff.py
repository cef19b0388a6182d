"""``apr diff``: compare two model files tensor by tensor and name the root cause.

Each pair of tensors (matched by canonical name) gets exactly one tag, tried from the most
specific explanation to the least: IDENTICAL, EQUIVALENT, DTYPE_MISLABEL, TRANSPOSED,
SCALED, SHIFTED, PERMUTED, QUANT_NOISE, VALUE_DRIFT (and SHAPE_MISMATCH, MISSING, EXTRA
when there is no pair to compare). Configs are compared field by field (CONFIG_MISMATCH).
The DIAGNOSIS folds the findings into one line: the dominant class, the tensor group it
hits (``mlp.{gate,up}_proj.weight in 24/24 layers``) and what it means.

Values are read in row chunks from the memory maps, so two full models are never held in
memory at once.
"""

from __future__ import annotations

import dataclasses
import os
import re
import zlib
from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np

from aprlib import consistency, layout, pairscan, swaps
from aprlib.config import yarn_meaning
from aprlib.dtypes import DType, element_count, nbytes, to_float32
from aprlib.io import LM_HEAD, Model, Tensor
from aprlib.quantnoise import BITS, BOUND_TEXT, INTERMEDIATES, cosine_floor
from aprlib.tokenizer import compare_tokenizers

CHUNK_ELEMENTS = 1 << 22  # per side per step: 16 MiB of float32
SAMPLE = 1 << 12  # elements a mislabel test decodes before committing to a full pass
FLOATS = (DType.F32, DType.F16, DType.BF16)
PRECISION = {DType.F32: 5, DType.F16: 4, DType.BF16: 3, DType.Q8_0: 2, DType.Q4_K: 1}


def _precision(d: DType) -> float:
    return PRECISION.get(d, BITS.get(d, 1) / 8)


IDENTICAL, EQUIVALENT = "IDENTICAL", "EQUIVALENT"
TRANSPOSED, DTYPE_MISLABEL = "TRANSPOSED", "DTYPE_MISLABEL"
SCALED, SHIFTED, PERMUTED = "SCALED", "SHIFTED", "PERMUTED"
QUANT_NOISE, VALUE_DRIFT = "QUANT_NOISE", "VALUE_DRIFT"
SHAPE_MISMATCH, MISSING, EXTRA = "SHAPE_MISMATCH", "MISSING", "EXTRA"
CONFIG_MISMATCH = "CONFIG_MISMATCH"
NAN, INF, SWAPPED = "NAN", "INF", "SWAPPED"
CONFIG_CONTRADICTS_WEIGHTS = "CONFIG_CONTRADICTS_WEIGHTS"
TOKENIZER_MISMATCH = "TOKENIZER_MISMATCH"
CLEAN = frozenset({IDENTICAL, EQUIVALENT})
#: ties in the ranking go to the class that breaks a model hardest
SEVERITY = (
    NAN,
    INF,
    SHAPE_MISMATCH,
    TRANSPOSED,
    DTYPE_MISLABEL,
    SWAPPED,
    CONFIG_CONTRADICTS_WEIGHTS,
    MISSING,
    EXTRA,
    TOKENIZER_MISMATCH,
    PERMUTED,
    SCALED,
    SHIFTED,
    VALUE_DRIFT,
    CONFIG_MISMATCH,
    QUANT_NOISE,
)
#: the diagnosis leads with a non-finite value before any other class, and with expected
#: quantisation noise only when nothing else was found (a count of many noisy tensors must
#: not bury one mislabelled tensor)
TIER = {NAN: 0, INF: 0, QUANT_NOISE: 2}


@dataclass
class Pair:
    name: str
    tag: str
    a: dict[str, Any] | None
    b: dict[str, Any] | None
    detail: str = ""
    stats: dict[str, float] = field(default_factory=dict)
    values: dict[str, list[float]] = field(default_factory=dict)
    #: a DTYPE_MISLABEL's reading of the bytes (see _settle_sides); not reported as such
    mislabel: Mislabel | None = field(default=None, repr=False)

    @property
    def score(self) -> float:
        """Worst first: by severity, then by size of the difference."""
        return (
            -SEVERITY.index(self.tag) * 1e9 + self.stats.get("max_abs", 0.0)
            if self.tag in SEVERITY
            else -1e18
        )

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "name": self.name,
            "tag": self.tag,
            "a": self.a,
            "b": self.b,
            "detail": self.detail,
        }
        if self.stats:
            out["stats"] = self.stats
        if self.values:
            out["values"] = self.values
        return out


@dataclass
class ConfigFinding:
    field: str
    a: Any
    b: Any


@dataclass
class Contradiction:
    """One side's config says one thing and its own weights another."""

    side: str  # "A" | "B"
    field: str
    message: str


@dataclass
class DiffReport:
    a: str
    b: str
    pairs: list[Pair]
    config: list[ConfigFinding]
    diagnosis: dict[str, Any]
    contradictions: list[Contradiction] = field(default_factory=list)
    tokenizer: list[str] = field(default_factory=list)

    @property
    def clean(self) -> bool:
        return self.passes()

    def passes(self, expect_quantized: bool = False) -> bool:
        """No finding, or (when quantisation is expected) none beyond QUANT_NOISE pairs that
        met their dtype's bound: the question CI asks, answered without parsing classes."""
        allowed = CLEAN | {QUANT_NOISE} if expect_quantized else CLEAN
        return (
            all(p.tag in allowed for p in self.pairs)
            and not self.config
            and not self.contradictions
            and not self.tokenizer
        )

    def as_dict(self) -> dict[str, Any]:
        counts: dict[str, int] = defaultdict(int)
        for p in self.pairs:
            counts[p.tag] += 1
        return {
            "a": self.a,
            "b": self.b,
            "clean": self.clean,
            "counts": dict(sorted(counts.items())),
            "config": [{"field": c.field, "a": c.a, "b": c.b} for c in self.config],
            "config_contradicts_weights": [
                {"side": c.side, "field": c.field, "message": c.message}
                for c in self.contradictions
            ],
            "tokenizer": self.tokenizer,
            "tensors": [p.as_dict() for p in self.pairs],
            "diagnosis": self.diagnosis,
        }


# --- reading in chunks -------------------------------------------------------------------


def _describe(t: Tensor) -> dict[str, Any]:
    d = {"dtype": t.dtype.name, "shape": list(t.shape)}
    if t.tied_to:
        d["tied_to"] = t.tied_to
    return d


def _rows_per_chunk(t: Tensor) -> int:
    row = element_count(t.shape[1:])
    if t.dtype.info.quantized and len(t.shape) < 2:
        return t.shape[0] if t.shape else 1
    return max(1, CHUNK_ELEMENTS // max(row, 1))


def _chunks(t: Tensor, rows: int | None = None) -> Iterator[tuple[int, np.ndarray]]:
    """(first row, float32 rows) over the tensor, a chunk at a time."""
    if not t.shape or (len(t.shape) == 1 and t.dtype.info.quantized):
        yield 0, t.to_float32().reshape(t.shape or (1,))
        return
    raw = t.raw()
    n = t.shape[0]
    row_bytes = raw.size // n if n else 0
    step = rows or _rows_per_chunk(t)
    by_row = raw.reshape(n, row_bytes) if n else raw.reshape(0, 0)
    for start in range(0, n, step):
        part = by_row[start : start + step]
        yield start, to_float32(part.reshape(-1), t.dtype, (part.shape[0], *t.shape[1:]))


def _chunk_pairs(ta: Tensor, tb: Tensor) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
    rows = min(_rows_per_chunk(ta), _rows_per_chunk(tb))
    for (start, a), (_, b) in zip(_chunks(ta, rows), _chunks(tb, rows), strict=True):
        yield start, a, b


# --- one pair ----------------------------------------------------------------------------


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
) -> Pair:
    """``dtype_counts``: how many tensors of each dtype A's and B's files hold, the file's
    own testimony on which tag of a mislabelled tensor is the odd one; ``config_dtypes``:
    each side's config ``torch_dtype``, its testimony on the same."""
    pair = Pair(ta.name, "", _describe(ta), _describe(tb))
    if ta.dtype == tb.dtype and ta.shape == tb.shape and pairscan.bytes_equal(ta, tb):
        pair.tag = IDENTICAL
        return pair
    if ta.shape != tb.shape:
        ta, tb = _read_once(ta), _read_once(tb)
        mislabel = _mislabel(ta, tb, dtype_counts, config_dtypes)
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
    low = _lower(ta, tb)
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
    ta, tb = _read_once(ta), _read_once(tb)
    mislabel = _mislabel(ta, tb, dtype_counts, config_dtypes)
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
    permutation = _permutation(ta, tb, heads, stats)
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


def _lower(ta: Tensor, tb: Tensor) -> Tensor | None:
    """The side whose dtype rounds the other's values, where one does (not F32: nothing
    is rounded to the wider side's precision there)."""
    low, high = (ta, tb) if _precision(ta.dtype) < _precision(tb.dtype) else (tb, ta)
    if low.dtype is high.dtype or low.dtype is DType.F32:
        return None
    return low


def _read_once(t: Tensor) -> Tensor:
    held: list[np.ndarray] = []

    def raw() -> np.ndarray:
        if not held:
            held.append(t.raw())
        return held[0]

    return dataclasses.replace(t, _raw=raw)


def _mislabel(
    ta: Tensor,
    tb: Tensor,
    dtype_counts: tuple[dict[DType, int], dict[DType, int]] = ({}, {}),
    config_dtypes: tuple[DType | None, DType | None] = (None, None),
) -> Mislabel | None:
    """One side's raw bytes, decoded as another float dtype, are the other side's values.

    When both sides hold the very same bytes under two tags, either could be the liar: the
    evidence is each file's other tensors, each config's ``torch_dtype`` and, for a 2-D
    weight, which reading of the bytes looks like trained weights (see ``_guilty``).
    ``decided`` is False when it does not tell; the file's other mislabels may then
    (``_settle_sides``), else the finding names both readings.
    """
    found = []  # (guilty side, true dtype, its tag)
    for x, y, side in ((ta, tb, "A"), (tb, ta, "B")):
        if x.dtype not in FLOATS:
            continue
        for d in dict.fromkeys([y.dtype, *FLOATS]):
            if d == x.dtype or d not in FLOATS:
                continue
            if x.raw().size != nbytes(d, y.shape):
                continue
            if _decoded_as_equals(x, d, y):
                found.append((side, d, x.dtype))
                break
    if not found:
        return None
    same = ta.raw().size == tb.raw().size and bool(np.array_equal(ta.raw(), tb.raw()))
    if len(found) == 1:
        side, true, tag = found[0]
        return Mislabel(side, true, tag, True, same)
    evidence = Evidence(dtype_counts[0], dtype_counts[1], config_dtypes)
    (side, true, tag), decided = _guilty(ta, found, evidence)
    return Mislabel(side, true, tag, decided, same, "" if decided else UNDECIDED)


@dataclass(frozen=True)
class Mislabel:
    """Side ``side`` holds ``true`` data tagged ``tag``; ``same_bytes``: both sides hold
    the very bytes (else the other side holds their values in a wider dtype); ``undecided``:
    why the evidence could not tell which side lies ('' when it could)."""

    side: str
    true: DType
    tag: DType
    decided: bool
    same_bytes: bool = True
    undecided: str = ""

    @property
    def short(self) -> str:
        """'BF16 data tagged F16 (in B)', or both readings where the side is unknown."""
        if self.decided or not self.undecided:
            return f"{self.true.name} data tagged {self.tag.name} (in {self.side})"
        other = "B" if self.side == "A" else "A"
        return (
            f"{self.true.name} data tagged {self.tag.name} in {self.side} or "
            f"{self.tag.name} data tagged {self.true.name} in {other}: cannot tell which "
            f"side ({self.undecided})"
        )

    @property
    def detail(self) -> str:
        if self.same_bytes:
            return f"bytes identical, dtype tag differs: {self.short}"
        other = "B" if self.side == "A" else "A"
        return (
            f"{self.side}'s bytes read as {self.true.name} are {other}'s values, dtype tag "
            f"differs: {self.short}"
        )

    def blamed_on(self, side: str) -> Mislabel:
        """The other reading of the same bytes: the other side lies, the tags swap."""
        if side == self.side:
            return dataclasses.replace(self, decided=True, undecided="")
        return Mislabel(side, self.tag, self.true, True, self.same_bytes)


def _settle_sides(pairs: list[Pair]) -> None:
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


class Evidence(NamedTuple):
    """What each file says of its own dtypes: how many tensors of each dtype A's and B's
    files hold, and each config's ``torch_dtype`` (indexable as the pair of counts)."""

    a: dict[DType, int]
    b: dict[DType, int]
    said: tuple[DType | None, DType | None] = (None, None)


#: why a mislabel's side is undecided, when the evidence is even
UNDECIDED = (
    "both files hold these dtypes alike, neither config's torch_dtype tells, and the "
    "bytes read as plausible values either way"
)


def _guilty(
    t: Tensor,
    found: list[tuple[str, DType, DType]],
    dtype_counts: tuple[dict[DType, int], dict[DType, int]] | Evidence,
) -> tuple[tuple[str, DType, DType], bool]:
    """Of 'A mislabelled' and 'B mislabelled' (same bytes, two tags), the likelier one, and
    whether the evidence decided it (else the first is a guess).

    Each claim '{side} holds {true} data tagged {tag}' scores a point for each witness
    that backs it and loses one for each that denies it: the side's file (do its other
    tensors hold ``true`` more often than ``tag``?), the side's config ``torch_dtype``
    (``dtype_counts`` may be an ``Evidence``), and for a 2-D weight the bytes themselves
    (read as ``true`` they look like trained weights, read as ``tag`` they do not). A 1-D
    tensor's reading is no witness: norm weights near 1 pass or fail the look of weights
    under either tag by their spread alone.
    """
    said = getattr(dtype_counts, "said", (None, None))
    scores = []
    for side, true, tag in found:
        i = 0 if side == "A" else 1
        counts = dtype_counts[0] if side == "A" else dtype_counts[1]
        score = int(counts.get(true, 0) > counts.get(tag, 0))
        score -= int(counts.get(tag, 0) > counts.get(true, 0))
        score += int(said[i] is true) - int(said[i] is tag)
        if len(t.shape) >= 2:
            looks_true, looks_tag = plausible_as(t.raw(), true), plausible_as(t.raw(), tag)
            score += int(looks_true and not looks_tag) - int(looks_tag and not looks_true)
        scores.append(score)
    best = max(range(len(found)), key=lambda k: scores[k])
    if scores.count(scores[best]) == 1:
        return found[best], True
    return found[0], False


def plausible_as(raw: np.ndarray, dtype: DType, sample: int = 1 << 16) -> bool:
    """Could these bytes, read as ``dtype``, be trained weights? Weights sit within a few
    powers of two of 2^-4 and spread over several binades. F16 bytes read as BF16 land near
    2^-40; BF16 bytes read as F16 keep only the top bits of the exponent and collapse into
    a binade or two around 1."""
    width = dtype.info.block_bytes
    count = min(raw.size // width, sample)
    values = to_float32(raw[: count * width], dtype, (count,)).astype(np.float64)
    values = np.abs(values[np.isfinite(values) & (values != 0)])
    if values.size < 16:
        return True
    log = np.log2(values)
    return bool(-20 <= np.median(log) <= 10 and np.std(log) >= 0.5)


def _decoded_as_equals(x: Tensor, d: DType, y: Tensor) -> bool:
    if y.dtype.info.quantized:
        return False
    raw = x.raw()
    ybytes = y.raw()
    count = element_count(y.shape)
    step = CHUNK_ELEMENTS
    width = d.info.block_bytes
    yw = y.dtype.info.block_bytes
    # a small first piece: most pairs that reach here are no mislabel, and say so at once
    starts = [0, *range(min(SAMPLE, count), count, step)] if count else []
    for i, end in zip(starts, [*starts[1:], count], strict=True):
        n = end - i
        mine = to_float32(raw[i * width : (i + n) * width], d, (n,))
        theirs = to_float32(ybytes[i * yw : (i + n) * yw], y.dtype, (n,))
        if np.array_equal(mine, theirs, equal_nan=True):
            continue
        # the other side may be the wider original: then the bytes are its rounding
        if _precision(d) >= _precision(y.dtype):
            return False
        t64 = theirs.astype(np.float64)
        bound = np.abs(t64) * (2.0**-8 if d is DType.BF16 else 2.0**-11) + 2.0**-25
        if not (np.abs(mine - t64) <= bound).all():
            return False
    return True


def _transposed(ta: Tensor, tb: Tensor) -> bool:
    if tb.dtype not in FLOATS:
        return False
    typed = _typed_view(tb)
    for start, a in _chunks(ta):
        cols = typed[:, start : start + a.shape[0]]
        b = to_float32(
            np.ascontiguousarray(cols.T).view(np.uint8).reshape(-1),
            tb.dtype,
            (a.shape[0], tb.shape[0]),
        )
        if not np.array_equal(a, b, equal_nan=True):
            return False
    return True


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
    for _, a, b in _chunk_pairs(ta, tb):
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
    for _, a, b in _chunk_pairs(ta, tb):
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
    for _, rows in _chunks(t):
        flat = np.ascontiguousarray(rows.reshape(rows.shape[0], -1))
        keys += [zlib.crc32(r.tobytes()) for r in flat]
    return keys


def _permutation(
    ta: Tensor, tb: Tensor, heads: tuple[int, ...], stats: dict[str, Any] | None = None
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
    return f"rows reordered: {moved} of {len(order)} rows moved"


# --- whole models ------------------------------------------------------------------------

CONFIG_FIELDS = (
    "architecture",
    "vocab_size",
    "hidden_size",
    "intermediate_size",
    "num_hidden_layers",
    "num_attention_heads",
    "num_key_value_heads",
    "head_dim",
    "rms_norm_eps",
    "rope_theta",
    "tie_word_embeddings",
    "rope_type",
    "hidden_act",
    "attention_bias",
    "mlp_bias",
    "sliding_window",
    "rope_scaling",
)


def _meaning(cfg: Any, name: str) -> Any:
    """A field as the forward pass sees it: defaults filled in, spellings normalised, so
    two configs that say the same thing in different words compare equal."""
    if name == "head_dim":
        return cfg.attention_head_dim
    if name == "attention_bias":
        return cfg.qkv_bias
    value = getattr(cfg, name, None)
    if name == "hidden_act":
        return {"swish": "silu"}.get(value or "silu", value or "silu")
    if name == "mlp_bias":
        return bool(value)
    if name == "rope_scaling":
        if not value or value.get("rope_type", value.get("type")) in (None, "default"):
            return None
        scaling = {k: v for k, v in value.items() if v is not None}
        if "type" in scaling:
            scaling.setdefault("rope_type", scaling.pop("type"))
        if scaling["rope_type"] == "yarn":
            scaling = yarn_meaning(scaling, cfg.max_position_embeddings)
        return {
            k: float(v) if isinstance(v, int | float) and not isinstance(v, bool) else v
            for k, v in sorted(scaling.items())
        }
    return value


def _same(va: Any, vb: Any) -> bool:
    if isinstance(va, float) and isinstance(vb, float):
        return bool(np.isclose(va, vb, rtol=1e-6))
    if isinstance(va, dict) and isinstance(vb, dict):
        return va.keys() == vb.keys() and all(_same(va[k], vb[k]) for k in va)
    return bool(va == vb)


def compare_configs(a: Model, b: Model) -> list[ConfigFinding]:
    if a.config is None or b.config is None:
        return []
    out = []
    for name in CONFIG_FIELDS:
        va, vb = _meaning(a.config, name), _meaning(b.config, name)
        if not _same(va, vb):
            out.append(ConfigFinding(name, va, vb))
    return out


def check_config_against_weights(
    a: Model, b: Model, pairs: list[Pair] | tuple[()] = ()
) -> list[Contradiction]:
    """Each side's config against its own weights. A tensor already tagged TRANSPOSED is
    explained by its layout, one tagged SWAPPED by the move: its shape contradicting the
    config is that finding again."""
    transposed = {p.name for p in pairs if p.tag in (TRANSPOSED, SWAPPED)}
    return [
        Contradiction(side, name, message)
        for side, model in (("A", a), ("B", b))
        for name, tensor, message in consistency.contradictions(model)
        if tensor not in transposed
    ]


def _pair_names(a: Model, b: Model) -> list[str]:
    names = list(dict.fromkeys([*a.tensors, *b.tensors]))
    return sorted(names, key=_natural)


def _natural(name: str) -> list[Any]:
    return [int(p) if p.isdigit() else p for p in re.split(r"(\d+)", name)]


def _dtype_counts(model: Model) -> dict[DType, int]:
    counts: dict[DType, int] = defaultdict(int)
    for t in model.tensors.values():
        counts[t.dtype] += 1
    return counts


#: tags a swap can hide behind: the pair differs by name, the values may sit elsewhere
_SWAP_CANDIDATES = frozenset({VALUE_DRIFT, SHAPE_MISMATCH, PERMUTED, SCALED, SHIFTED})


def diff_models(
    a: Model,
    b: Model,
    tol: Tolerance | None = None,
    values: bool = False,
    workers: int | None = None,
) -> DiffReport:
    """``workers``: threads comparing pairs at once (default: the CPUs this process may
    use, at most 4). numpy, pread, memcmp and zlib drop the GIL, so pairs overlap; the
    report is the same for any number (pairs are classified independently, in order)."""
    tol = tol or Tolerance()
    heads = tuple(
        sorted(
            {
                h
                for m in (a, b)
                if m.config
                for h in (m.config.num_attention_heads, m.config.num_key_value_heads)
            }
        )
    )
    counts = (_dtype_counts(a), _dtype_counts(b))
    said = (consistency.config_dtype(a), consistency.config_dtype(b))

    def compare(name: str) -> Pair:
        ta = _lookup(a, name)
        tb = _lookup(b, name)
        if ta is None:
            # the names are the two models' own tensors, so B holds this one
            assert tb is not None, name
            return Pair(name, EXTRA, None, _describe(tb), "only in B")
        if tb is None:
            return Pair(name, MISSING, _describe(ta), None, "only in A")
        with np.errstate(invalid="ignore", over="ignore"):  # NaN/Inf are findings, not noise
            pair = classify(ta, tb, tol, heads, counts, said)
        if values and pair.tag not in CLEAN:
            pair.values = {"a": _first(ta), "b": _first(tb)}
        a.drop_pages()
        b.drop_pages()
        return pair

    pairs = _in_order(compare, _pair_names(a, b), workers or default_workers())
    _settle_sides(pairs)
    moves = _mark_swaps(a, b, pairs)
    config = compare_configs(a, b)
    contradicts = check_config_against_weights(a, b, pairs)
    tokenizer = compare_tokenizers(a.tokenizer, b.tokenizer)
    return DiffReport(
        str(a.path),
        str(b.path),
        pairs,
        config,
        diagnose(pairs, config, contradicts, tokenizer, moves),
        contradicts,
        tokenizer,
    )


def default_workers() -> int:
    """Threads ``diff_models`` uses unless told: the CPUs this process may use, at most 4
    (each holds two 16 MiB read buffers and its pieces; measured only up to 2 here)."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - platforms without affinity
        cpus = os.cpu_count() or 1
    return max(1, min(cpus, 4))


def _in_order(work: Callable[[str], Pair], names: list[str], workers: int) -> list[Pair]:
    """``[work(n) for n in names]`` on ``workers`` threads; the first error stops the rest
    (a damaged tensor ends the diff with its own error, not after every other pair)."""
    if workers <= 1 or len(names) < 2:
        return [work(n) for n in names]
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(workers, thread_name_prefix="apr-diff") as pool:
        futures = [pool.submit(work, n) for n in names]
        try:
            return [f.result() for f in futures]
        except BaseException:
            for f in futures:
                f.cancel()
            raise


def _mark_swaps(a: Model, b: Model, pairs: list[Pair]) -> list[str]:
    """Retag as SWAPPED the pairs whose B values are another name's A values; returns the
    moves in words (``model.layers.1.* <-> model.layers.2.*``)."""
    suspects = [p for p in pairs if p.tag in _SWAP_CANDIDATES]
    if len(suspects) < 2:
        return []
    names = [p.name for p in suspects]
    moves = swaps.find_moves(
        {n: t for n in names if (t := _lookup(a, n)) is not None},
        {n: t for n in names if (t := _lookup(b, n)) is not None},
    )
    if not moves:
        return []
    for p in suspects:
        if p.name in moves:
            p.tag, p.detail = SWAPPED, f"B's {p.name} holds A's {moves[p.name]}"
            p.stats = {}
    sizes: dict[int, int] = defaultdict(int)
    for p in pairs:
        if m := re.match(r"^model\.layers\.(\d+)\.", p.name):
            sizes[int(m.group(1))] += 1
    return swaps.describe(moves, dict(sizes))


def _lookup(model: Model, name: str) -> Tensor | None:
    try:
        return model.get(name) if name == LM_HEAD else model.tensors.get(name)
    except KeyError:
        return None


def _first(t: Tensor, n: int = 6) -> list[float]:
    _, rows = next(_chunks(t, 1))
    return [float(v) for v in rows.reshape(-1)[:n]]


# --- diagnosis ---------------------------------------------------------------------------

MEANING = {
    IDENTICAL: "Files identical tensor for tensor",
    EQUIVALENT: "Same values in another encoding (lossless)",
    TRANSPOSED: "Values identical, stored transposed ([in, out] where [out, in] belongs): a "
    "layout defect",
    DTYPE_MISLABEL: "Same values under the wrong dtype tag",
    SCALED: "Values scaled by a constant",
    SHIFTED: "Values offset by a constant",
    PERMUTED: "Same rows in another order",
    QUANT_NOISE: "Differences within the quantisation bound (expected from the dtype)",
    VALUE_DRIFT: "Values differ with no layout, dtype, scale or order explanation",
    SHAPE_MISMATCH: "Shapes differ",
    MISSING: "Tensors present in A only",
    EXTRA: "Tensors present in B only",
    CONFIG_MISMATCH: "Architecture config differs",
    NAN: "NaN where the other side holds numbers",
    INF: "Inf where the other side holds numbers",
    SWAPPED: "B holds under one name the values A holds under another",
    CONFIG_CONTRADICTS_WEIGHTS: "A config disagrees with its own weights",
    TOKENIZER_MISMATCH: "Tokenizers differ",
}


def fold(names: list[str], total_layers: int = 0) -> str:
    """``model.layers.{0..23}.mlp.up_proj.weight`` ... → ``mlp.{gate,up}_proj.weight in 24/24
    layers``; names outside layers are listed as they are."""
    layer_re = re.compile(r"^model\.layers\.(\d+)\.(.+)$")
    by_suffix: dict[str, set[int]] = defaultdict(set)
    others = []
    for name in names:
        m = layer_re.match(name)
        if m:
            by_suffix[m.group(2)].add(int(m.group(1)))
        else:
            others.append(name)
    return ", ".join([*_fold_suffixes(by_suffix, total_layers), *others])


def _fold_suffixes(by_suffix: dict[str, set[int]], total: int) -> list[str]:
    groups: dict[tuple[str, str, frozenset[int]], list[str]] = defaultdict(list)
    for suffix, layers in by_suffix.items():
        m = re.match(r"^(.*\.)?([a-z]+)(_[a-z_]+\.(?:weight|bias))$", suffix)
        if m:
            groups[(m.group(1) or "", m.group(3), frozenset(layers))].append(m.group(2))
        else:
            groups[(suffix, "", frozenset(layers))].append("")
    out = []
    for (prefix, tail, in_layers), stems in sorted(groups.items(), key=lambda g: g[0][0]):
        stem = stems[0] if len(stems) == 1 else "{" + ",".join(sorted(stems)) + "}"
        count = len(in_layers)
        where = f"{count}/{total} layers" if total else f"{count} layers"
        out.append(f"{prefix}{stem}{tail} in {where}")
    return out


def diagnose(
    pairs: list[Pair],
    config: list[ConfigFinding],
    contradicts: list[Contradiction] | tuple[()] = (),
    tokenizer: list[str] | tuple[()] = (),
    moves: list[str] | tuple[()] = (),
) -> dict[str, Any]:
    layers = {int(m.group(1)) for p in pairs if (m := re.match(r"^model\.layers\.(\d+)\.", p.name))}
    total_layers = max(layers) + 1 if layers else 0
    groups: dict[str, list[Pair]] = defaultdict(list)
    for p in pairs:
        if p.tag not in CLEAN:
            groups[p.tag].append(p)
    found = [_explain(t, groups[t], total_layers, len(pairs), moves) for t in groups]
    if contradicts:
        found.append(
            {
                "class": CONFIG_CONTRADICTS_WEIGHTS,
                "tensors": [],
                "count": len(contradicts),
                "summary": "; ".join(f"{c.message} (in {c.side})" for c in contradicts),
            }
        )
    if config:
        fields = ", ".join(f"{c.field} {c.a!r} vs {c.b!r}" for c in config)
        found.append(
            {
                "class": CONFIG_MISMATCH,
                "tensors": [],
                "count": len(config),
                "summary": f"{MEANING[CONFIG_MISMATCH]}: {fields}",
            }
        )
    if tokenizer:
        found.append(
            {
                "class": TOKENIZER_MISMATCH,
                "tensors": [],
                "count": len(tokenizer),
                "summary": f"{MEANING[TOKENIZER_MISMATCH]}: {'; '.join(tokenizer)}",
            }
        )
    found.sort(key=lambda f: (TIER.get(f["class"], 1), -f["count"], SEVERITY.index(f["class"])))
    if not found:
        equivalent = any(p.tag == EQUIVALENT for p in pairs)
        cls = EQUIVALENT if equivalent else IDENTICAL
        return {"class": cls, "tensors": [], "line": f"DIAGNOSIS: {MEANING[cls]}", "also": []}
    head, rest = found[0], found[1:]
    line = (
        f"DIAGNOSIS: {head['class']} {head['where']}: {head['summary']}"
        if head.get("where")
        else f"DIAGNOSIS: {head['class']}: {head['summary']}"
    )
    if rest:
        line += "; also " + "; ".join(
            f"{r['class']} {r['where']} ({_short(r)})"
            if r.get("where")
            else f"{r['class']} ({r['summary']})"
            for r in rest
        )
    return {
        "class": head["class"],
        "tensors": head["tensors"],
        "line": line,
        "summary": head["summary"],
        "also": rest,
    }


def _short(found: dict[str, Any]) -> str:
    """The specific part of a summary: 'BF16 data tagged F16 (in B)', 'B = 2 x A'."""
    summary = found["summary"]
    return summary.split(": ", 1)[1] if ": " in summary else summary


def _explain(
    tag: str,
    pairs: list[Pair],
    total_layers: int,
    total: int,
    moves: list[str] | tuple[()] = (),
) -> dict[str, Any]:
    names = [p.name for p in pairs]
    details = {p.detail for p in pairs if p.detail}
    summary = MEANING[tag]
    where = f"all {total} tensors" if len(names) == total > 1 else fold(names, total_layers)
    if tag == DTYPE_MISLABEL and details:
        shorts = sorted(p.mislabel.short if p.mislabel else p.detail for p in pairs)
        summary += ": " + shorts[0].split("differs: ", 1)[-1]
    elif tag == TRANSPOSED and any("a layout defect" in d for d in details):
        summary = sorted(d for d in details if "a layout defect" in d)[0]
    elif tag in (SCALED, SHIFTED, PERMUTED) and len(details) == 1:
        summary += f": {next(iter(details))}"
    elif tag == QUANT_NOISE and details:
        worst = max(pairs, key=lambda p: p.stats.get("of_bound", 0.0))
        summary += f" ({worst.detail}; worst pair {worst.name})"
        unbound = [p for p in pairs if p.stats.get("cosine_only")]
        if unbound:
            least = min(unbound, key=lambda p: p.stats.get("cosine", 1.0))
            summary += (
                f"; {len(unbound)} tensors with {least.detail.split(': cosine ', 1)[0]} "
                f"(least cosine {least.stats.get('cosine', 1.0):.6f}: {least.name})"
            )
    elif tag == VALUE_DRIFT:
        worst = max(pairs, key=lambda p: p.stats.get("max_abs", 0))
        summary += f" (worst {worst.name}: {worst.detail})"
    elif tag in (NAN, INF):
        first = pairs[0]
        summary = f"{first.detail}" + (
            f" ({MEANING[tag]}; {len(pairs)} tensors)" if len(pairs) > 1 else ""
        )
        where = first.name if len(pairs) == 1 else where
    elif tag == SWAPPED and moves:
        where = ", ".join(moves)
    return {"class": tag, "tensors": names, "count": len(names), "where": where, "summary": summary}
