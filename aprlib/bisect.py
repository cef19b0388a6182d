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
"""

from __future__ import annotations

import fnmatch
import json
import math
import queue
import threading
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from aprlib.model import Transformer, as_reference64, capture_graph


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
        m = (self.rmse_b - eps) / self.rmse_a if self.rmse_a > 0 else math.inf
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
        return next((p for p in self.points if p.nonfinite_b > p.nonfinite_a), None)

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


class _Stopped(Exception):
    pass


_DONE = object()


class _Stream(threading.Thread):
    """One forward in a thread, handing its capture points over one at a time."""

    def __init__(self, net: Transformer, tokens: torch.Tensor) -> None:
        super().__init__(daemon=True)
        self.net, self.tokens = net, tokens
        self.items: queue.Queue[Any] = queue.Queue(maxsize=1)
        self.stop = threading.Event()

    def run(self) -> None:
        try:
            with torch.no_grad(), self.net.capture(self._put):
                self.net(self.tokens)
            self._put_raw(_DONE)
        except _Stopped:
            pass
        except BaseException as exc:  # handed to the consumer, raised there
            self._put_raw(exc)

    def _put(self, name: str, x: torch.Tensor) -> None:
        self._put_raw((name, x))

    def _put_raw(self, item: Any) -> None:
        while True:
            if self.stop.is_set():
                raise _Stopped
            try:
                self.items.put(item, timeout=0.05)
                return
            except queue.Full:
                continue

    def next(self) -> tuple[str, torch.Tensor]:
        item = self.items.get()
        if isinstance(item, BaseException):
            raise item
        if item is _DONE:
            raise BisectError("one forward ended before the other: different capture points")
        return item

    def close(self) -> None:
        self.stop.set()
        self.join()


def _rmse(x: torch.Tensor, y: torch.Tensor) -> float:
    d = (x.to(torch.float64) - y.to(torch.float64))[torch.isfinite(x) & torch.isfinite(y)]
    return float(d.pow(2).mean().sqrt()) if d.numel() else 0.0


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
    streams = [_Stream(net_a, batch), _Stream(as_reference64(net_a), batch)]
    for s in streams:
        s.start()
    diverged: set[str] = set()

    def on_b(name: str, xb: torch.Tensor) -> None:
        (name_a, xa), (name_r, xr) = streams[0].next(), streams[1].next()
        if not name == name_a == name_r:
            raise BisectError(f"capture points out of step: A {name_a}, B {name}, ref {name_r}")
        tol = _tolerance_for(name, tolerance, overrides)
        if xa.shape != xb.shape:
            raise BisectError(f"{name}: A has shape {tuple(xa.shape)}, B {tuple(xb.shape)}")
        rmse_a, rmse_b = _rmse(xa, xr), _rmse(xb, xr)
        ref_rms = float(xr.pow(2).mean().sqrt())
        bound = tol.m * rmse_a + tol.atol + tol.rtol * ref_rms
        bad_a = int((~torch.isfinite(xa)).sum())
        bad_b = int((~torch.isfinite(xb)).sum())
        is_bad = rmse_b > bound or bad_b > bad_a
        inputs = graph[name]
        role = "agrees"
        if is_bad:
            diverged.add(name)
            role = "inherited" if any(i in diverged for i in inputs) else "introduced"
        report.points.append(
            PointResult(
                name,
                inputs,
                tuple(xb.shape),
                rmse_a,
                rmse_b,
                _rmse(xa, xb),
                ref_rms,
                bound,
                bad_a,
                bad_b,
                is_bad,
                role,
                tol.m,
            )
        )

    try:
        with torch.no_grad(), net_b.capture(on_b):
            net_b(batch)
    finally:
        for s in streams:
            s.close()
    return report


# --- building the two sides from files, backends and dtypes ------------------------------


def load_side(path: Path | str, backend: str = "reference", dtype: str = "float32") -> Transformer:
    from aprlib.backends import make_ops

    return Transformer.from_file(path, dtype=getattr(torch, dtype), ops=make_ops(backend))


def twin(net: Transformer, backend: str = "reference", dtype: str | None = None) -> Transformer:
    """A's weights under another backend or dtype (shared when the dtype is unchanged)."""
    from aprlib.backends import make_ops

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
