"""Bisect two forwards: name the first capture point where a divergence is *introduced*.

A and B run in lockstep on the same tokens (B may be another file, another backend or
another dtype of A), beside a float64 run of A's own weights (the reference). At each point
the activations themselves are compared and dropped, so memory holds one point per side,
never a whole forward. The bar is a noise floor, not a fixed atol (torch's accuracy-checker
rule): a point diverges when

    RMSE(B, ref64) > m · RMSE(A, ref64) + ε,   ε = atol + rtol · RMS(ref64)

A diverged point whose inputs (``capture_graph``) all agree *introduced* the divergence;
one with a diverged input only *inherits* it. The first NaN/Inf in B (where A is finite)
is its own finding.

Speed (the target: under 3x the time of A's and B's forwards) comes from doing the same
arithmetic with less waste, never from a cheaper reference, so no verdict can change:

* the reference is still a full float64 forward of A's weights from the tokens (not a
  per-point float64 replay of A's inputs, which would measure one op's rounding instead
  of A's accumulated error and flag every deep point of a clean twin on another backend);
* its float32 weights are widened into one reused buffer per thread (``widened_rows``)
  instead of a fresh copy per block; the widened values are the same exact numbers, only
  the float64 GEMM may block differently: a change near 1e-16 relative, nine orders below
  the float32 errors the floor is made of;
* each point's numbers come from one pass (``_errors``): the same float64 differences,
  summed by a dot product instead of ``sum`` (last-bit rounding only); NaN/Inf counted
  where a difference is non-finite (a finite difference has finite operands), and B's
  numbers taken from A's where B equals A value for value: both shortcuts are exact;
* the three forwards are generators (``Transformer.points``) stepped in turn on one thread
  instead of three threads at once: each does the same ops in the same order; they only
  stop contending for two cores and paying a thread switch at every point. A point is
  handed over without a copy: its forward is paused until it has been compared, nothing
  writes to it, and nothing keeps it;
* the statistics' memory is reused, not faulted in again: each chunk's differences from
  the reference go into one float64 scratch per thread (``_scratch``). Only where memory
  comes from changes, never a value; on the bench's VM this took ~30k page faults out of a
  24-layer bisect. (Keeping glibc's freed blocks for the next op took ~100k more, but it
  changes malloc's settings for the whole process, from inside a library call, for a gain
  inside this VM's noise: not done.)
"""

from __future__ import annotations

import fnmatch
import json
import math
import threading
from collections.abc import Generator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from aprlib.forward.model import Transformer, as_reference64, capture_graph


@dataclass(frozen=True)
class Tolerance:
    m: float = 2.0
    atol: float = 0.0
    rtol: float = 1e-6


@dataclass
class PointResult:
    name: str
    inputs: tuple[str, ...]
    shape: tuple[int, ...]
    rmse_a: float  # A vs ref64: the noise floor
    rmse_b: float  # B vs ref64
    rmse_ab: float
    ref_rms: float
    bound: float
    nonfinite_a: int
    nonfinite_b: int
    diverged: bool
    role: str = "agrees"  # "agrees" | "introduced" | "inherited"

    @property
    def needed(self) -> dict[str, float]:
        """The tolerance that would have let this point pass (m at this ε, or atol at this m)."""
        eps = self.bound - self._m * self.rmse_a
        if self.rmse_a > 0:
            m = (self.rmse_b - eps) / self.rmse_a
        else:  # a floor of 0: any m passes at this ε, or none does (raise atol)
            m = 0.0 if self.rmse_b <= eps else math.inf
        return {"m": m, "atol": max(self.rmse_b - self._m * self.rmse_a, 0.0)}

    _m: float = 2.0


@dataclass
class BisectReport:
    a: str
    b: str
    tokens: list[int]
    tolerance: Tolerance
    points: list[PointResult] = field(default_factory=list)

    @property
    def introduced(self) -> list[PointResult]:
        return [p for p in self.points if p.role == "introduced"]

    @property
    def first_nonfinite(self) -> PointResult | None:
        """The first point where one side holds NaN/Inf the other does not. Either side:
        A's own reference runs A's weights, so a NaN of A's is in the reference too and
        would otherwise pass for agreement."""
        return next((p for p in self.points if p.nonfinite_b != p.nonfinite_a), None)

    @property
    def clean(self) -> bool:
        return not self.introduced and self.first_nonfinite is None

    def before(self, point: PointResult) -> PointResult | None:
        i = self.points.index(point)
        return self.points[i - 1] if i else None

    def to_dict(self) -> dict[str, Any]:
        def row(p: PointResult | None) -> dict[str, Any] | None:
            if p is None:
                return None
            d = asdict(p)
            d.pop("_m")
            d["needed"] = p.needed
            return d

        first = self.introduced[0] if self.introduced else None
        return {
            "a": self.a,
            "b": self.b,
            "tokens": self.tokens,
            "tolerance": asdict(self.tolerance),
            "verdict": "CLEAN" if self.clean else "DIVERGED",
            "first_introduced": row(first),
            "point_before": row(self.before(first)) if first else None,
            "introduced": [p.name for p in self.introduced],
            "inherited": [p.name for p in self.points if p.role == "inherited"],
            "first_nonfinite": row(self.first_nonfinite),
            "points": [row(p) for p in self.points],
        }


class BisectError(ValueError):
    """Two forwards that cannot be compared point by point (different architectures)."""


RMSE_CHUNK = 1 << 18  # elements compared at once: float64 temporaries of 2 MB stay in cache


@dataclass(frozen=True)
class _Errors:
    """One point's numbers: RMSEs over the positions finite on both sides, in float64."""

    rmse_a: float  # A vs ref64
    rmse_b: float  # B vs ref64
    rmse_ab: float
    ref_rms: float
    nonfinite_a: int
    nonfinite_b: int


class _Rms:
    """Root mean square over chunks, each given as (Σd² over its finite entries, count)."""

    def __init__(self) -> None:
        self.total, self.count = 0.0, 0

    def add(self, part: tuple[float, int]) -> None:
        self.total, self.count = self.total + part[0], self.count + part[1]

    @property
    def value(self) -> float:
        return math.sqrt(self.total / self.count) if self.count else 0.0


def _sum_of_squares(d: torch.Tensor) -> tuple[float, int]:
    """Σd² over the finite entries of ``d`` (float64), and how many they are."""
    square = float(torch.dot(d, d))
    if math.isfinite(square):
        return square, d.numel()
    keep = torch.isfinite(d)
    return float(d[keep].pow(2).sum()), int(keep.sum())


def _nonfinite(x: torch.Tensor) -> int:
    return int((~torch.isfinite(x)).sum())


_scratches = threading.local()  # one reused float64 scratch per thread: see ``_scratch``


def _scratch(numel: int) -> torch.Tensor:
    """Two float64 rows of at least ``numel`` entries, the same memory on every call.

    ``_errors`` writes each chunk's differences from the reference here instead of into a
    fresh tensor per chunk: the values are the same (``torch.sub(a, r, out=...)`` is
    ``a - r``, widened by the same type promotion), but fresh memory for every point of
    every layer is page-faulted in each time (on a VM, microseconds a page), which cost
    about as much as the statistics themselves.
    """
    buffer: torch.Tensor | None = getattr(_scratches, "buffer", None)
    if buffer is None or buffer.shape[1] < numel:
        buffer = _scratches.buffer = torch.empty(2, max(numel, 1), dtype=torch.float64)
    return buffer


def _errors(xa: torch.Tensor, xb: torch.Tensor, xr: torch.Tensor) -> _Errors:
    """Every number of a point in one pass, a chunk at a time.

    A and B are widened inside the subtraction from the float64 reference (type promotion:
    no widened copy), and squares are summed by a float64 dot product. Two shortcuts, both
    exact: a side whose difference from the reference is finite everywhere in a chunk has no
    NaN/Inf there (a NaN/Inf operand makes the difference non-finite), so NaN/Inf are counted
    only in chunks where a difference is not; and a chunk where B equals A value for value
    (a NaN never does) gives B exactly A's numbers, so they are not computed twice.
    """
    a_ref, b_ref, a_b, ref = _Rms(), _Rms(), _Rms(), _Rms()
    bad_a = bad_b = 0
    scratch_a, scratch_b = _scratch(min(xr.numel(), RMSE_CHUNK)).unbind()
    chunks = (x.reshape(-1).split(RMSE_CHUNK) for x in (xa, xb, xr))
    for a, b, r in zip(*chunks, strict=True):
        r = r.to(torch.float64)
        ref.add(_sum_of_squares(r))
        d = torch.sub(a, r, out=scratch_a[: a.numel()])  # a - r, into reused memory
        part_a = _sum_of_squares(d)
        a_ref.add(part_a)
        chunk_bad_a = 0 if part_a[1] == d.numel() else _nonfinite(a)
        bad_a += chunk_bad_a
        if a.dtype == b.dtype and torch.equal(a, b):
            b_ref.add(part_a)
            a_b.add((0.0, a.numel() - chunk_bad_a))  # A - B: 0, NaN where both are the same Inf
            bad_b += chunk_bad_a
            continue
        part_b = _sum_of_squares(torch.sub(b, r, out=scratch_b[: b.numel()]))
        b_ref.add(part_b)
        bad_b += 0 if part_b[1] == b.numel() else _nonfinite(b)
        a_b.add(_sum_of_squares(d.copy_(a).sub_(b)))  # A - B exactly: A widened in place
    return _Errors(a_ref.value, b_ref.value, a_b.value, ref.value, bad_a, bad_b)


def _next(forward: Generator[tuple[str, torch.Tensor], None, Any], name: str) -> Any:
    try:
        return next(forward)
    except StopIteration:
        raise BisectError(f"a forward ended before {name}: different capture points") from None


def _finish(forward: Generator[tuple[str, torch.Tensor], None, Any]) -> None:
    try:
        extra, _ = next(forward)
    except StopIteration:
        return
    raise BisectError(f"a forward went on past the logits, to {extra!r}")


def _tolerance_for(name: str, default: Tolerance, overrides: dict[str, Tolerance]) -> Tolerance:
    for pattern, tol in overrides.items():
        if fnmatch.fnmatchcase(name, pattern):
            return tol
    return default


def bisect(
    net_a: Transformer,
    net_b: Transformer,
    tokens: list[int],
    tolerance: Tolerance | None = None,
    overrides: dict[str, Tolerance] | None = None,
    labels: tuple[str, str] = ("A", "B"),
) -> BisectReport:
    """Compare A and B at every capture point, streaming; roles from ``capture_graph``."""
    if net_a.config.num_hidden_layers != net_b.config.num_hidden_layers:
        raise BisectError(
            f"A has {net_a.config.num_hidden_layers} layers, B has "
            f"{net_b.config.num_hidden_layers}: their capture points do not pair"
        )
    tolerance, overrides = tolerance or Tolerance(), overrides or {}
    graph = capture_graph(net_a.config.num_hidden_layers)
    report = BisectReport(labels[0], labels[1], list(tokens), tolerance)
    batch = torch.tensor([tokens])
    # one thread steps the three forwards in turn: each pauses at its point until the point
    # is compared (so nothing is copied, and no two forwards contend for the cores)
    forwards = [net.points(batch) for net in (net_a, as_reference64(net_a), net_b)]
    sources = [n.source for n in (net_a, net_b) if n.source is not None]
    diverged: set[str] = set()
    with torch.no_grad():
        for name, inputs in graph.items():
            (name_a, xa), (name_r, xr), (name_b, xb) = (_next(f, name) for f in forwards)
            if not name == name_a == name_r == name_b:
                raise BisectError(
                    f"capture points out of step at {name}: A {name_a}, B {name_b}, ref {name_r}"
                )
            tol = _tolerance_for(name, tolerance, overrides)
            if xa.shape != xb.shape:
                raise BisectError(f"{name}: A has shape {tuple(xa.shape)}, B {tuple(xb.shape)}")
            e, shape = _errors(xa, xb, xr), tuple(xb.shape)
            del xa, xb, xr  # ours go now; the forwards drop theirs as they move on
            bound = tol.m * e.rmse_a + tol.atol + tol.rtol * e.ref_rms
            is_bad = e.rmse_b > bound or e.nonfinite_b != e.nonfinite_a
            role = "agrees"
            if is_bad:
                diverged.add(name)
                role = "inherited" if any(i in diverged for i in inputs) else "introduced"
            report.points.append(
                PointResult(
                    name,
                    inputs,
                    shape,
                    e.rmse_a,
                    e.rmse_b,
                    e.rmse_ab,
                    e.ref_rms,
                    bound,
                    e.nonfinite_a,
                    e.nonfinite_b,
                    is_bad,
                    role,
                    tol.m,
                )
            )
            if name.endswith("resid.mlp"):  # a layer done on every side: its pages may go
                for source in sources:
                    source.drop_pages()
        for f in forwards:
            _finish(f)
    return report


# --- building the two sides from files, backends and dtypes ------------------------------


def load_side(path: Path | str, backend: str = "reference", dtype: str = "float32") -> Transformer:
    from aprlib.forward.backends import make_ops

    return Transformer.from_file(
        path, dtype=getattr(torch, dtype), ops=make_ops(backend), zero_copy=True
    )


def twin(net: Transformer, backend: str = "reference", dtype: str | None = None) -> Transformer:
    """A's weights under another backend or dtype (shared when the dtype is unchanged)."""
    from aprlib.forward.backends import make_ops

    other = Transformer(net.config, make_ops(backend))
    state = net.state_dict()
    if dtype is not None:
        state = {k: v.to(getattr(torch, dtype)) for k, v in state.items()}
    other.load_state_dict(state, strict=True, assign=True)
    return other.eval()


def parse_override(text: str) -> tuple[str, Tolerance]:
    """``"layers.*.attn.scores=m:4,atol:1e-5"`` → (pattern, Tolerance)."""
    pattern, _, spec = text.partition("=")
    values: dict[str, float] = {}
    for part in filter(None, spec.split(",")):
        key, _, value = part.partition(":")
        if key not in ("m", "atol", "rtol"):
            raise ValueError(f"--override {text!r}: {key!r} is not m, atol or rtol")
        try:
            values[key] = float(value)
        except ValueError:
            raise ValueError(f"--override {text!r}: {value!r} is not a number") from None
    if not pattern or not values:
        raise ValueError(f"--override {text!r}: expected PATTERN=m:X[,atol:Y][,rtol:Z]")
    return pattern, Tolerance(**values)


def write_bundle(
    folder: Path, net_a: Transformer, net_b: Transformer, tokens: list[int], point: str
) -> list[Path]:
    """The tokens, both configs, and both sides' tensors at ``point`` and its inputs."""
    import numpy as np

    wanted = {point, *capture_graph(net_a.config.num_hidden_layers)[point]}
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for label, net in (("a", net_a), ("b", net_b)):
        kept: dict[str, torch.Tensor] = {}

        def keep(name: str, x: torch.Tensor, kept: dict = kept) -> None:
            if name in wanted:
                kept[name] = x

        with torch.no_grad(), net.capture(keep):
            net(torch.tensor([tokens]))
        for name, x in kept.items():
            path = folder / f"{label}.{name}.npy"
            np.save(path, x.float().numpy())
            written.append(path)
    meta = folder / "bundle.json"
    meta.write_text(
        json.dumps(
            {
                "tokens": tokens,
                "point": point,
                "inputs": sorted(wanted - {point}),
                "config_a": net_a.config.to_dict(),
                "config_b": net_b.config.to_dict(),
            },
            indent=2,
        )
    )
    return [*written, meta]
