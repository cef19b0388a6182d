"""Per-point statistics of a forward, each tagged with its capture point and scope.

An incident this prevents: an "18x divergence" that was one stack's statistics over all
tokens against the other's over the last token, and a pre-bias capture compared with a
post-bias one. Here every statistic carries its point name and its scope ("all" tokens or
the "last" token), and two traces are compared only where both name and scope match; a
point one side lacks is reported as missing, never paired with a neighbour.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from aprlib.forward.gates import MAX_ABSMAX_RATIO, MAX_STD_RATIO, Gated

SCOPES = ("all", "last")


@dataclass(frozen=True)
class PointStats:
    name: str
    scope: str  # "all" tokens or the "last" token
    shape: tuple[int, ...]
    dtype: str
    count: int
    mean: float
    std: float
    min: float
    max: float
    absmax: float
    l2: float
    nan: int
    inf: int


def stats_of(name: str, x: Any, scope: str) -> PointStats:
    """Statistics of ``x`` over its finite values (token axis -2).

    Three passes in the tensor's own dtype (sum, L2, min/max; torch reduces pairwise). A
    non-finite sum reveals NaN/Inf (or an overflow): only then are values counted and
    masked out, so a clean tensor never pays for it.
    """
    import torch

    shape, dtype = tuple(x.shape), str(x.dtype).removeprefix("torch.")
    if scope == "last":
        x = x[..., -1:, :]
    x = x.detach().reshape(-1)
    if x.dtype not in (torch.float32, torch.float64):
        x = x.float()
    count = x.numel()
    nan = inf = 0
    finite = x
    total = float(x.sum())
    if not math.isfinite(total):
        nan, inf = int(torch.isnan(x).sum()), int(torch.isinf(x).sum())
        finite = x[torch.isfinite(x)]
        total = float(finite.to(torch.float64).sum())
    if finite.numel() == 0:
        nil = math.nan
        return PointStats(name, scope, shape, dtype, count, nil, nil, nil, nil, nil, nil, nan, inf)
    n = finite.numel()
    square = float((finite * finite).sum())  # pairwise; vector_norm/dot lose ~1e-3 here
    lo, hi = (float(v) for v in torch.aminmax(finite))
    mean = total / n
    var = square / n - mean * mean
    if mean * mean > 1e3 * max(var, 0.0):  # cancellation: take the two-pass route
        var = float(torch.std_mean(finite.to(torch.float64), correction=0)[0]) ** 2
    std, l2 = math.sqrt(max(var, 0.0)), math.sqrt(square)
    return PointStats(
        name, scope, shape, dtype, count, mean, std, lo, hi, max(-lo, hi), l2, nan, inf
    )


@dataclass
class Trace:
    model: str
    backend: str
    dtype: str
    tokens: list[int]
    points: list[PointStats]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Trace:
        points = []
        for p in data["points"]:
            fields: dict[str, Any] = {k: math.nan if v is None else v for k, v in p.items()}
            fields["shape"] = tuple(p["shape"])  # a non-finite statistic is null in strict JSON
            points.append(PointStats(**fields))
        return cls(data["model"], data["backend"], data["dtype"], list(data["tokens"]), points)


def trace_forward(
    net: Any, tokens: list[int], model: str = "", backend: str = "reference"
) -> Trace:
    """Run one forward of ``net`` (a ``Transformer``) and keep only statistics per point."""
    import torch

    points: list[PointStats] = []

    def hook(name: str, x: torch.Tensor) -> None:
        points.extend(stats_of(name, x, scope) for scope in SCOPES)

    dtype = str(net.compute_dtype or net.weights_dtype).removeprefix("torch.")
    with torch.no_grad(), net.capture(hook):
        net(torch.tensor([tokens]))
    return Trace(model, backend, dtype, list(tokens), points)


def trace_file(
    path: Path | str,
    tokens: list[int],
    backend: str = "reference",
    dtype: str = "float32",
    stream: bool = False,
) -> Trace:
    import torch

    from aprlib.forward.backends import make_ops
    from aprlib.forward.model import Transformer
    from aprlib.forward.token_ids import check_token_ids

    net = Transformer.from_file(
        path, dtype=getattr(torch, dtype), ops=make_ops(backend), stream=stream
    )
    check_token_ids(tokens, net.config.vocab_size, path)
    return trace_forward(net, tokens, str(path), backend)


def save_trace(trace: Trace, path: Path, extra: dict[str, Any] | None = None) -> None:
    """The trace as JSON (``extra``: fields beside it, such as the run's peak memory)."""
    from aprlib.formats import jsonout
    from aprlib.formats.atomic import atomic_output

    data = {**trace.to_dict(), **(extra or {})}
    with atomic_output(Path(path)) as tmp, open(tmp, "w", encoding="utf-8") as fh:
        fh.write(jsonout.dumps(data, indent=1))  # NaN statistics as null


def load_trace(path: Path) -> Trace:
    from aprlib.errors import ModelFileError

    try:
        return Trace.from_dict(json.loads(Path(path).read_text(encoding="utf-8")))
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ModelFileError(path, f"not a trace file: {exc}") from None


@dataclass(frozen=True)
class PointComparison:
    name: str
    scope: str
    status: str  # "compared" | "missing in A" | "missing in B"
    a: PointStats | None
    b: PointStats | None

    def ratio(self, stat: str) -> float | None:
        """B's statistic over A's, for points compared under the same name and scope."""
        if self.a is None or self.b is None:
            return None
        x, y = getattr(self.a, stat), getattr(self.b, stat)
        return y / x if x not in (0, 0.0) else (math.inf if y else 1.0)


class TraceMismatchError(ValueError):
    """Traces of different token ids: their statistics describe different inputs."""


def compare_traces(a: Trace, b: Trace) -> list[PointComparison]:
    """Pair points by (name, scope) only, in A's order, then what only B has."""
    if a.tokens != b.tokens:
        raise TraceMismatchError(
            "the traces were taken over different token ids; their statistics are not comparable"
        )
    index_b = {(p.name, p.scope): p for p in b.points}
    seen = set()
    rows = []
    for p in a.points:
        key = (p.name, p.scope)
        seen.add(key)
        other = index_b.get(key)
        rows.append(
            PointComparison(p.name, p.scope, "compared" if other else "missing in B", p, other)
        )
    rows.extend(
        PointComparison(p.name, p.scope, "missing in A", None, p)
        for p in b.points
        if (p.name, p.scope) not in seen
    )
    return rows


@dataclass
class TraceVerdict(Gated):
    """Named gates over every compared point (both scopes), like ``apr logits --compare``:
    ``points`` (none missing on either side), ``finite`` (no NaN/Inf on one side only),
    ``std_ratio`` and ``absmax_ratio`` (the worst point's ratio within its bound)."""

    gates: dict[str, dict[str, Any]]

    def to_dict(self) -> dict[str, Any]:
        return {"gates": self.gates, "verdict": self.verdict, "failed": self.failed}

    def line(self) -> str:
        """``VERDICT: FAIL (std_ratio: 10 at layers.1.mlp.swiglu (all), bound 1.25)``"""
        why = []
        for name in self.failed:
            g = self.gates[name]
            at = f" at {g['worst']}" if g.get("worst") else ""
            value = g["value"]
            shown = f"{value:.3g}" if isinstance(value, float) else str(value)
            why.append(f"{name}: {shown}{at}, bound {g['bound']}")
        return f"VERDICT: {self.verdict}" + (f" ({'; '.join(why)})" if why else "")


def _fold(r: float | None) -> float:
    if r is None or math.isnan(r):
        return math.inf
    if r == 0:
        return math.inf
    r = abs(r)
    return max(r, 1.0 / r)


def trace_verdict(
    rows: list[PointComparison],
    max_std_ratio: float = MAX_STD_RATIO,
    max_absmax_ratio: float = MAX_ABSMAX_RATIO,
) -> TraceVerdict:
    """The gates of a trace comparison; the exit code of ``apr trace --compare`` is its
    verdict (0 PASS, 1 FAIL)."""
    missing = [f"{r.name} ({r.scope}) {r.status}" for r in rows if r.status != "compared"]
    both = [r for r in rows if r.a is not None and r.b is not None]
    gates: dict[str, dict[str, Any]] = {
        "points": {
            "value": len(missing),
            "bound": 0,
            "pass": not missing,
            "worst": missing[0] if missing else "",
        }
    }
    lone = [
        f"{r.name} ({r.scope})"
        for r in both
        if r.a is not None
        and r.b is not None
        and (r.a.nan + r.a.inf > 0) != (r.b.nan + r.b.inf > 0)
    ]
    gates["finite"] = {
        "value": len(lone),
        "bound": 0,
        "pass": not lone,
        "worst": lone[0] if lone else "",
    }
    for name, stat, bound in (
        ("std_ratio", "std", max_std_ratio),
        ("absmax_ratio", "absmax", max_absmax_ratio),
    ):
        worst, where = 1.0, ""
        for r in both:
            assert r.a is not None and r.b is not None
            x, y = getattr(r.a, stat), getattr(r.b, stat)
            if math.isnan(x) and math.isnan(y):
                continue  # an all-NaN point on both sides: the finite gate's business
            folded = 1.0 if x == y else _fold(r.ratio(stat))
            if folded > worst:
                worst, where = folded, f"{r.name} ({r.scope})"
        gates[name] = {"value": worst, "bound": bound, "pass": worst <= bound, "worst": where}
    return TraceVerdict(gates)
