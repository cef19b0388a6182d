"""DTYPE_MISLABEL: one side's bytes, decoded as another float dtype, are the other side's
values; and which side lies.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from aprlib.compare.chunks import CHUNK_ELEMENTS
from aprlib.compare.quantnoise import precision
from aprlib.formats.dtypes import DType, element_count, nbytes, to_float32
from aprlib.formats.io import Tensor

SAMPLE = 1 << 12  # elements a mislabel test decodes before committing to a full pass


FLOATS = (DType.F32, DType.F16, DType.BF16)


def find_mislabel(
    ta: Tensor,
    tb: Tensor,
    dtype_counts: tuple[dict[DType, int], dict[DType, int]] = ({}, {}),
    config_dtypes: tuple[DType | None, DType | None] = (None, None),
) -> Mislabel | None:
    """One side's raw bytes, decoded as another float dtype, are the other side's values.

    When both sides hold the very same bytes under two tags, either could be the liar: the
    evidence is each file's other tensors, each config's ``torch_dtype`` and, for a 2-D
    weight, which reading of the bytes looks like trained weights (see ``guilty``).
    ``decided`` is False when it does not tell; the file's other mislabels may then
    (``settle_sides``), else the finding names both readings.
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
            if decoded_as_equals(x, d, y):
                found.append((side, d, x.dtype))
                break
    if not found:
        return None
    same = ta.raw().size == tb.raw().size and bool(np.array_equal(ta.raw(), tb.raw()))
    if len(found) == 1:
        side, true, tag = found[0]
        return Mislabel(side, true, tag, True, same)
    evidence = Evidence(dtype_counts[0], dtype_counts[1], config_dtypes)
    (side, true, tag), decided = guilty(ta, found, evidence)
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


def guilty(
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


def decoded_as_equals(x: Tensor, d: DType, y: Tensor) -> bool:
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
        if precision(d) >= precision(y.dtype):
            return False
        t64 = theirs.astype(np.float64)
        bound = np.abs(t64) * (2.0**-8 if d is DType.BF16 else 2.0**-11) + 2.0**-25
        if not (np.abs(mine - t64) <= bound).all():
            return False
    return True
