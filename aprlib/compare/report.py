"""What a diff reports: the tags a tensor pair can get, their ranking, and the report objects."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

from aprlib.compare.mislabel import Mislabel
from aprlib.formats.io import Tensor

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
    #: a DTYPE_MISLABEL's reading of the bytes (see settle_sides); not reported as such
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


def describe(t: Tensor) -> dict[str, Any]:
    d = {"dtype": t.dtype.name, "shape": list(t.shape)}
    if t.tied_to:
        d["tied_to"] = t.tied_to
    return d
