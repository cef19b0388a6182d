"""Bisect two forwards: name the first capture point where a divergence is *introduced*,
and in which side.

Two sides run in lockstep on the same tokens. A side is an engine over some weights: the
reference ``Ops`` over a file, another ``Ops`` backend (Triton, a user's), another compute
dtype, or activations an engine wrote elsewhere (an activation dump, llama.cpp's graph,
a transformers model's modules). At each point the activations are compared and dropped,
so memory holds one point per run, never a whole forward.

**The rule trusts neither side.** A side's activations are judged against a float64 run
of the reference ``Ops`` on that side's *own* weights (``ref64``), and the bar is the noise
floor of a run known to be correct: the reference ``Ops`` in the side's own compute dtype
(its ``--expect``) on the same weights. A point of side S diverges when

    RMSE(S, ref64_S) > m · RMSE(clean_S, ref64_S) + ε,   ε = atol + rtol · RMS(ref64_S)

The floor never comes from the side under test: a floor measured on a broken side grows
with its own error and passes it (a GQA head mapping ``h % n_kv`` on side A once bisected
CLEAN). Where a side *is* the reference ``Ops`` in its dtype it is its own clean run, is
trusted, and costs no extra forward.

Two different files also differ in their weights or configs: a third check (``weights``)
runs B's weights on the reference ``Ops`` against the float64 run of A's, with A's own
float32 error as the floor, or, with ``--expect`` for B, the error of A's weights rounded
as B's dtype stores them (bf16, f16, Q8_0, Q4_K: the rounding a faithful conversion makes).
Differences between the two configs are named before any point.

``--expect`` sets each side's floor from its dtype's rounding, not from a tuned constant:

* ``f32``: the reference ``Ops`` in float32;
* ``bf16`` / ``f16``: the reference ``Ops`` computing in that dtype throughout;
* ``q8_0`` / ``q4_k``: float32, every matmul's input rounded to the blocks llama.cpp's
  CPU kernels quantise it to for those weights (Q8_0 blocks of 32; Q8_K blocks of 256).

A diverged point whose inputs (``capture_graph``; for a point a dump does not hold, the
nearest held points upstream) all agree *introduced* the divergence; one with a diverged
input only *inherits* it. The first NaN/Inf where the floor run is finite is its own
finding.

Speed (the target: under 3x the time of A's and B's forwards) comes from doing the same
arithmetic with less waste, never from a cheaper reference, so no verdict can change:

* runs are shared by what they compute: two sides over the same weights share one ref64,
  and a trusted side is the other side's clean run, so ``apr bisect a b`` and
  ``--backend-b`` each run three forwards, as before the rule judged both sides;
* the reference is a full float64 forward from the tokens (not a per-point float64 replay
  of a side's inputs, which would measure one op's rounding instead of the accumulated
  error and flag every deep point of a clean twin on another backend);
* float32 weights are widened into one reused buffer per thread (``widened_rows``)
  instead of a fresh copy per block: the same exact numbers;
* each point's numbers come from one pass (``_errors``): the same float64 differences,
  summed by a dot product instead of ``sum`` (last-bit rounding only); NaN/Inf counted
  where a difference is non-finite (a finite difference has finite operands), and the
  subject's numbers taken from the floor's where they are equal value for value: both
  shortcuts are exact;
* the forwards are generators (``Transformer.points``) stepped in turn on one thread:
  each does the same ops in the same order; a point is handed over without a copy: its
  forward is paused until it has been compared, nothing writes to it, nothing keeps it;
* the statistics' memory is reused (``_scratch``), not faulted in again per point.
"""

from __future__ import annotations

import fnmatch
import json
import math
import threading
from collections.abc import Generator, Iterator, Mapping
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from aprlib.forward.gates import EXPECT
from aprlib.forward.model import ACTIVATIONS, Ops, Transformer, as_reference64, points_of

#: per --expect: (compute dtype of the clean run or None for the side's own, matmul-input blocks)
ARITHMETIC: dict[str, tuple[torch.dtype | None, str | None]] = {
    "f32": (torch.float32, None),
    "bf16": (torch.bfloat16, None),
    "f16": (torch.float16, None),
    "q8_0": (torch.float32, "q8_0"),
    "q4_k": (torch.float32, "q8_K"),
}
ACTIVATION_BLOCK = {"q8_0": 32, "q8_K": 256}


@dataclass(frozen=True)
class Tolerance:
    m: float = 2.0
    atol: float = 0.0
    rtol: float = 1e-6

    def __post_init__(self) -> None:
        for name in ("m", "atol", "rtol"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):  # a NaN bound passes everything
                raise ValueError(f"tolerance {name} = {value!r} is not a finite number >= 0")


@dataclass
class PointResult:
    name: str
    inputs: tuple[str, ...]
    shape: tuple[int, ...]
    rmse_a: float  # the clean run vs ref64: the noise floor
    rmse_b: float  # the side judged vs ref64
    rmse_ab: float
    ref_rms: float
    bound: float
    nonfinite_a: int  # in the clean run
    nonfinite_b: int  # in the side judged
    diverged: bool
    role: str = "agrees"  # "agrees" | "introduced" | "inherited" | "absent"
    scope: str = "all"  # "last": only the last token was compared (the side held no more)
    engine_name: str = ""  # what the side's engine calls this point (llama.cpp's "Kcur-1")

    @property
    def needed(self) -> dict[str, float]:
        """The tolerance that would have let this point pass (m at this ε, or atol at this m)."""
        eps = self.bound - self._m * self.rmse_a
        if self.rmse_a > 0:
            m = max((self.rmse_b - eps) / self.rmse_a, 0.0)
        else:  # a floor of 0: any m passes at this ε, or none does (raise atol)
            m = 0.0 if self.rmse_b <= eps else math.inf
        # atol at this m: the bound's other terms (m·floor and rtol·RMS(ref64)) kept
        atol_now = eps - self._rtol * self.ref_rms
        return {"m": m, "atol": max(self.rmse_b - (self.bound - atol_now), 0.0)}

    _m: float = 2.0
    _rtol: float = 1e-6


@dataclass
class Check:
    """One judgement: a side's engine on its own weights, or B's weights against A's."""

    kind: str  # "engine" | "weights"
    side: str  # "A" | "B"
    subject: str  # what is judged, in words
    floor: str  # the clean run the floor comes from, in words
    points: list[PointResult] = field(default_factory=list)

    @property
    def introduced(self) -> list[PointResult]:
        return [p for p in self.points if p.role == "introduced"]

    @property
    def first_nonfinite(self) -> PointResult | None:
        """The first point where the judged side holds NaN/Inf the clean run does not. For
        the weights check, also the other way round: a NaN in A's weights is in ref64 too,
        and would otherwise pass for agreement. For an engine, NaN/Inf only in the clean run
        (a float16 floor overflowing) is no verdict on the engine: ``floor_not_finite``."""
        if self.kind == "weights":
            return next((p for p in self.points if p.nonfinite_b != p.nonfinite_a), None)
        return next((p for p in self.points if p.nonfinite_b > p.nonfinite_a), None)

    @property
    def floor_not_finite(self) -> PointResult | None:
        """The first point where the clean run, not the side, holds NaN/Inf: its floor
        there is unusable (only the finite positions are compared)."""
        if self.kind == "weights":
            return None
        return next((p for p in self.points if p.nonfinite_a > p.nonfinite_b), None)

    @property
    def clean(self) -> bool:
        return not self.introduced and self.first_nonfinite is None

    @property
    def title(self) -> str:
        return f"{self.side}'s {'engine' if self.kind == 'engine' else 'weights'}"

    def finding(self) -> str | None:
        """One line: where this check's divergence is introduced, or None."""
        nonfinite = self.first_nonfinite
        first = self.introduced[0] if self.introduced else None
        if first is None and nonfinite is None:
            return None
        where = "in" if self.kind == "engine" else "by"
        if nonfinite is not None and (first is None or self._before(nonfinite, first)):
            return f"first NaN/Inf {where} {self.title} at {_called(nonfinite)}"
        assert first is not None
        return f"introduced {where} {self.title} at {_called(first)}"

    def _before(self, p: PointResult, q: PointResult) -> bool:
        return self.points.index(p) <= self.points.index(q)

    def to_dict(self) -> dict[str, Any]:
        first = self.introduced[0] if self.introduced else None
        return {
            "kind": self.kind,
            "side": self.side,
            "subject": self.subject,
            "floor": self.floor,
            "finding": self.finding(),
            "first_introduced": _row(first),
            "point_before": _row(self.before(first)) if first else None,
            "introduced": [p.name for p in self.introduced],
            "inherited": [p.name for p in self.points if p.role == "inherited"],
            "absent": [p.name for p in self.points if p.role == "absent"],
            "first_nonfinite": _row(self.first_nonfinite),
            "points": [_row(p) for p in self.points],
        }

    def before(self, point: PointResult) -> PointResult | None:
        held = [p for p in self.points if p.role != "absent"]
        i = held.index(point)
        return held[i - 1] if i else None


def _called(p: PointResult) -> str:
    """A point's name, with the engine's own name for it where the side has one."""
    return f"{p.name} ({p.engine_name})" if p.engine_name else p.name


def _row(p: PointResult | None) -> dict[str, Any] | None:
    if p is None:
        return None
    d = asdict(p)
    d.pop("_m")
    d.pop("_rtol")
    d["needed"] = p.needed
    return d


@dataclass
class BisectReport:
    a: str
    b: str
    tokens: list[int]
    tolerance: Tolerance
    checks: list[Check] = field(default_factory=list)
    config_differences: list[tuple[str, Any, Any]] = field(default_factory=list)
    trusted: list[str] = field(default_factory=list)  # sides that are their own clean run
    same_weights: bool = False  # two files holding one model, value for value
    weights_differ: list[str] = field(default_factory=list)  # tensor names, two files
    ignored: dict[str, list[str]] = field(default_factory=dict)  # side -> unplaced tensors

    @property
    def primary(self) -> Check | None:
        """The check a one-line verdict is about: the first with a finding, else the first."""
        return next(
            (c for c in self.checks if not c.clean), self.checks[0] if self.checks else None
        )

    @property
    def points(self) -> list[PointResult]:
        return self.primary.points if self.primary else []

    @property
    def introduced(self) -> list[PointResult]:
        return [p for c in self.checks for p in c.introduced]

    @property
    def first_nonfinite(self) -> PointResult | None:
        return next((c.first_nonfinite for c in self.checks if c.first_nonfinite), None)

    @property
    def clean(self) -> bool:
        return all(c.clean for c in self.checks)

    def findings(self) -> list[str]:
        return [f for c in self.checks if (f := c.finding()) is not None]

    def config_note(self) -> str | None:
        """Config differences, named before any point: they explain the weights check."""
        if not self.config_differences:
            return None
        fields = ", ".join(f"{n} {_show(a)} vs {_show(b)}" for n, a, b in self.config_differences)
        weights = next((c for c in self.checks if c.kind == "weights"), None)
        tail = ""
        if weights is not None and weights.introduced:
            first = weights.introduced[0].name
            fed = [n for n, _, _ in self.config_differences if _feeds(n, first)]
            if fed:
                tail = f" — the divergence at {first} follows from it"
            else:
                tail = f" (none of them feeds {first}, where the divergence is introduced)"
        return f"configs differ: {fields}{tail}"

    def before(self, point: PointResult) -> PointResult | None:
        check = next(c for c in self.checks if point in c.points)
        return check.before(point)

    def to_dict(self) -> dict[str, Any]:
        primary = self.primary
        body = primary.to_dict() if primary else {}
        for key in ("kind", "side", "subject", "floor", "finding"):
            body.pop(key, None)
        return {
            "a": self.a,
            "b": self.b,
            "tokens": self.tokens,
            "tolerance": asdict(self.tolerance),
            "verdict": "CLEAN" if self.clean else "DIVERGED",
            "configs_differ": [{"field": n, "a": a, "b": b} for n, a, b in self.config_differences],
            "config_note": self.config_note(),
            "findings": self.findings(),
            "trusted": self.trusted,
            "same_weights": self.same_weights,
            "weights_differ": self.weights_differ,
            "ignored": self.ignored,
            **body,
            "checks": [c.to_dict() for c in self.checks],
        }


#: config fields and the capture points whose op reads them (a field not listed shapes the
#: tensors: any point may follow from it)
FIELD_FEEDS: dict[str, tuple[str, ...]] = {
    "rope_theta": ("attn.q.rope", "attn.k.rope"),
    "rope_scaling": ("attn.q.rope", "attn.k.rope"),
    "rope_type": ("attn.q.rope", "attn.k.rope"),
    "rms_norm_eps": ("attn_norm", "ffn_norm", "final_norm"),
    "hidden_act": ("mlp.swiglu",),
    "tie_word_embeddings": ("logits",),
    "sliding_window": ("attn.out",),  # the mask: attn.scores is taken before it
    "layer_types": ("attn.out",),
}


def _feeds(field_name: str, point: str) -> bool:
    """Whether a config field can have introduced a divergence at ``point``."""
    feeds = FIELD_FEEDS.get(field_name)
    return feeds is None or point.endswith(feeds)


def _show(value: Any) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


DROP_PAGES_BYTES = 256 << 20  # weights compared between handing mapped pages back
RMSE_CHUNK = 1 << 18  # elements compared at once: float64 temporaries of 2 MB stay in cache


class BisectError(ValueError):
    """Two forwards that cannot be compared point by point (different architectures)."""


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


def _tolerance_for(name: str, default: Tolerance, overrides: dict[str, Tolerance]) -> Tolerance:
    for pattern, tol in overrides.items():
        if fnmatch.fnmatchcase(name, pattern):
            return tol
    return default


# --- sides, runs and the plan ----------------------------------------------------------------


class RoundedOps(Ops):
    """The reference arithmetic with every matmul's input rounded to int8 blocks, as
    llama.cpp's CPU kernels quantise activations for Q8_0 (``q8_0``: blocks of 32, an f16
    scale) and K-quant weights (``q8_K``: blocks of 256, an f32 scale): the clean run an
    engine over quantised weights is expected to stay near. ``gelu="f16_table"``: GELU
    read from llama.cpp's F16 table (``gelu_f16_table``)."""

    def __init__(self, blocks: str | None, gelu: str | None = None) -> None:
        self.blocks = blocks
        self.gelu = gelu

    def linear(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None):
        if self.blocks is not None:
            x = round_blocks(x, self.blocks)
        return super().linear(x, weight, bias)

    def geglu(self, gate: torch.Tensor, up: torch.Tensor, approximate: str = "tanh"):
        if self.gelu is None:
            return super().geglu(gate, up, approximate)
        return gelu_f16_table(gate, approximate) * up


def gelu_f16_table(gate: torch.Tensor, approximate: str = "tanh") -> torch.Tensor:
    """GELU as llama.cpp's CPU backend computes it: the F16 table entry (the float32 GELU
    of each F16 value, rounded to F16) at the F16-rounded input; inputs at or beyond ±10
    taken as 0 or themselves (``ggml_vec_geglu_f32``)."""
    at = gate.to(torch.float16).to(torch.float32)
    table = torch.nn.functional.gelu(at, approximate=approximate).to(torch.float16)
    out = torch.where(gate >= 10, gate, torch.where(gate <= -10, 0.0, table.to(gate.dtype)))
    return out.to(gate.dtype)


def round_blocks(x: torch.Tensor, blocks: str) -> torch.Tensor:
    """``x`` quantised to signed int8 per block of its last axis and back (round to nearest;
    scale absmax/127). A last axis not a multiple of the block is left as it is, as llama.cpp
    keeps such a matmul in float."""
    size = ACTIVATION_BLOCK[blocks]
    if x.shape[-1] % size:
        return x
    b = x.reshape(*x.shape[:-1], -1, size)
    scale = b.abs().amax(-1, keepdim=True) / 127
    if blocks == "q8_0":
        scale = scale.to(torch.float16).to(x.dtype)
    safe = torch.where(scale == 0, torch.ones_like(scale), scale)
    return (torch.round(b / safe).clamp(-127, 127) * scale).reshape(x.shape)


def round_weights(net: Transformer, expect: str) -> Transformer:
    """A's weights as a faithful conversion to ``expect`` stores them (2-D weights whose
    rows are whole blocks quantised; norms and biases kept), on the reference ``Ops``."""
    return net.with_weights(lambda _, w: round_weight(w, expect), Ops())


def round_weight(w: torch.Tensor, expect: str) -> torch.Tensor:
    """One weight as ``expect`` stores it (a 2-D weight whose rows are whole blocks; any
    other kept): a row block of one rounds as the whole does, so a streamed head may."""
    from aprlib.formats.dtypes import DType, from_float32, to_float32

    dtype = {"f32": DType.F32, "bf16": DType.BF16, "f16": DType.F16}.get(expect)
    dtype = dtype or {"q8_0": DType.Q8_0, "q4_k": DType.Q4_K}[expect]
    if w.dim() != 2 or w.shape[-1] % dtype.info.block_elements or dtype is DType.F32:
        return w
    values = w.detach().float().numpy()
    decoded = to_float32(from_float32(values, dtype), dtype, tuple(values.shape))
    return torch.from_numpy(decoded.copy()).to(w.dtype)


@dataclass
class Side:
    """One side of a bisect: an engine over some weights.

    ``net`` holds the weights; it is also the engine unless ``points`` is given (an
    activation dump, llama.cpp's graph, a transformers model: already computed, in the
    forward's own layout, batch 1; a point missing is absent, never an error).
    ``weights`` names the weights (a resolved path) so two sides over one file share their
    reference; without it, sides share only when their tensors are the same memory.
    """

    label: str
    net: Transformer
    points: Mapping[str, torch.Tensor] | None = None
    scopes: Mapping[str, str] = field(default_factory=dict)
    weights: str | None = None
    expect: str | None = None
    engine: str = ""  # what computed ``points``, in words
    engine_names: Mapping[str, str] = field(default_factory=dict)  # point -> engine's name
    ignored: list[str] = field(default_factory=list)  # engine tensors placed at no point

    def __post_init__(self) -> None:
        if self.expect is not None and self.expect not in EXPECT:
            raise ValueError(f"expect {self.expect!r} is not one of {', '.join(EXPECT)}")

    @property
    def trusted(self) -> bool:
        """The reference ``Ops`` itself: its own clean run, nothing to judge."""
        return self.points is None and type(self.net.ops) is Ops

    @property
    def dtype(self) -> torch.dtype:
        """The compute dtype of this side's engine (its ``--expect`` for outside engines)."""
        if self.points is not None:
            return ARITHMETIC[self.expect or "f32"][0] or torch.float32
        return self.net.compute_dtype or self.net.weights_dtype

    def weights_key(self) -> str:
        if self.weights is not None:
            return self.weights
        if self.net.streamed is not None:  # a file's weights in the net's dtype
            from aprlib.forward.weights import DerivedWeights

            base = self.net.streamed
            if isinstance(base, DerivedWeights):
                base = base.base
            return f"{base.model.path.resolve()}:{self.net.weights_dtype}"
        tensors = self.net.state_dict().values()
        return "memory:" + ",".join(f"{t.data_ptr()}:{t.dtype}" for t in tensors)


@dataclass(frozen=True)
class Run:
    """A forward to step: a side's own engine, a float64 reference, or a clean run."""

    kind: str  # "side" | "ref64" | "clean"
    weights: str  # weights key (or the side's label, for kind "side")
    dtype: str = ""  # clean runs: compute dtype
    blocks: str | None = None  # clean runs: matmul inputs rounded to these blocks
    rounded: str | None = None  # clean runs: weights rounded as this --expect stores them
    gelu: str | None = None  # clean runs: "f16_table", GELU as llama.cpp's CPU computes it


@dataclass(frozen=True)
class PlannedCheck:
    kind: str
    side: str
    subject: Run
    reference: Run
    floor: Run


def _clean(side: Side, weights: str, rounded: str | None = None) -> Run:
    """The clean run a side is judged against: its ``--expect`` arithmetic (or its own
    compute dtype) on the reference ``Ops`` over ``weights``."""
    dtype, blocks = ARITHMETIC[side.expect] if side.expect else (side.dtype, None)
    gelu = "f16_table" if _gelu_table(side) else None
    return Run("clean", weights, str(dtype).removeprefix("torch."), blocks, rounded, gelu)


def _gelu_table(side: Side) -> bool:
    """llama.cpp's CPU GELU reads an F16 table at the F16-rounded gate
    (``ggml_vec_geglu_f32`` under ``GGML_GELU_FP16``): ~3e-4 relative at a GELU-gated
    MLP's output, far above float32 rounding, so its side's clean run computes GELU the
    same way (a GELU family only: a SiLU side keeps sharing the trusted run)."""
    act = ACTIVATIONS.get(side.net.config.hidden_act, ("", ""))[0]
    return side.engine == "llama.cpp" and act == "geglu"


def _rounding(side: Side) -> str | None:
    """The storage rounding a side's ``--expect`` declares for its weights (f32: none)."""
    return side.expect if side.expect not in (None, "f32") else None


def _trusted_run(side: Side) -> Run:
    """What a trusted side computes: the reference ``Ops`` in its own dtype on its weights."""
    return Run("clean", side.weights_key(), str(side.dtype).removeprefix("torch."))


def plan(side_a: Side, side_b: Side) -> list[PlannedCheck]:
    """Which checks a bisect makes, and on which runs (pure: the engine's decision)."""
    checks = []
    keys = {"A": side_a.weights_key(), "B": side_b.weights_key()}
    for label, side in (("A", side_a), ("B", side_b)):
        if side.trusted:
            continue
        w = keys[label]
        checks.append(
            PlannedCheck("engine", label, Run("side", label), Run("ref64", w), _clean(side, w))
        )
    if keys["A"] != keys["B"]:
        # the rounded side's weights on the reference Ops, against the other's in float64;
        # the floor: the other's weights rounded as the --expect says they are stored, in
        # the judged side's compute dtype. B is judged unless only A says it is rounded.
        judged = "A" if _rounding(side_a) and not _rounding(side_b) else "B"
        base = "B" if judged == "A" else "A"
        side = side_a if judged == "A" else side_b
        subject = Run("clean", keys[judged], str(side.dtype).removeprefix("torch."))
        floor = Run("clean", keys[base], subject.dtype, None, _rounding(side))
        checks.append(PlannedCheck("weights", judged, subject, Run("ref64", keys[base]), floor))
    return checks


def _build(run: Run, nets: dict[str, Transformer]) -> Transformer:
    net = nets[run.weights]
    if run.kind == "ref64":
        return as_reference64(net)
    if run.rounded:
        net = round_weights(net, run.rounded)
    dtype = getattr(torch, run.dtype)
    plain = run.blocks is None and run.gelu is None
    if plain and type(net.ops) is Ops and _weights_dtype(net) == dtype:
        return net
    ops = Ops() if plain else RoundedOps(run.blocks, run.gelu)
    return net.with_weights(lambda _, w: w.to(dtype), ops)


def _precision(net: Transformer) -> float:
    """How exactly a net's weights hold their file's values (the machine epsilon, smaller
    is more exact, negated): which of two nets over one file to build the runs from."""
    return -torch.finfo(_weights_dtype(net)).eps


def _weights_dtype(net: Transformer) -> torch.dtype:
    return net.compute_dtype or net.weights_dtype


def _held(side: Side) -> Generator[tuple[str, torch.Tensor | None], None, Any]:
    """An outside engine's points in firing order (None where it holds none)."""
    assert side.points is not None
    for name in points_of(side.net.config):
        yield name, side.points.get(name)


def last_token(name: str, x: torch.Tensor) -> torch.Tensor:
    """The last position of a point in the forward's own layout."""
    if name.endswith(("attn.q.rope", "attn.k.rope", "attn.scores")):
        return x[:, :, -1:]
    return x[:, -1:]


def internal_layout(point: str, canonical: torch.Tensor) -> torch.Tensor:
    """A dump's canonical tensor (tokens first, no batch) in the forward's own layout."""
    if point.endswith(("attn.q.rope", "attn.k.rope")):
        return canonical.transpose(0, 1).unsqueeze(0).contiguous()
    if point.endswith("attn.scores"):
        return canonical.unsqueeze(0)
    if canonical.dim() == 3:  # [tokens, heads, head_dim] -> [1, tokens, heads*head_dim]
        return canonical.reshape(1, canonical.shape[0], -1)
    return canonical.unsqueeze(0)


def _next(forward: Iterator[tuple[str, Any]], name: str) -> Any:
    try:
        return next(forward)
    except StopIteration:
        raise BisectError(f"a forward ended before {name}: different capture points") from None


def _finish(forward: Iterator[tuple[str, Any]]) -> None:
    try:
        extra, _ = next(forward)
    except StopIteration:
        return
    raise BisectError(f"a forward went on past the logits, to {extra!r}")


def weight_differences(a: Transformer, b: Transformer) -> list[str]:
    """The tensors two nets do not hold equal, value for value. None at all (and no config
    difference) is one model in two files, a copy or a lossless conversion: the sides then
    share one float64 reference and have no weights to compare, which saves two forwards
    for a llama.cpp side over an F32 GGUF."""
    if a.streamed is not None or b.streamed is not None:
        return _streamed_differences(a, b)
    state_a, state_b = a.state_dict(), b.state_dict()
    if state_a.keys() != state_b.keys():
        return sorted(state_a.keys() ^ state_b.keys())
    sources = [n.source for n in (a, b) if n.source is not None]
    differ, read = [], 0
    for k in state_a:
        x, y = state_a[k], state_b[k]
        if x.shape != y.shape or x.dtype != y.dtype or not torch.equal(x, y):
            differ.append(k)
        read += x.numel() * x.element_size()
        if read >= DROP_PAGES_BYTES:  # zero-copy weights: the pages compared may go, so
            for source in sources:  # the compare never holds both files resident at once
                source.drop_pages()
            read = 0
    for source in sources:
        source.drop_pages()
    return differ


def _streamed_differences(
    a: Transformer, b: Transformer, skip: set[str] | frozenset[str] = frozenset()
) -> list[str]:
    """``weight_differences`` where a side streams: one tensor at a time, each as its net
    holds it (its dtype, its transform), as a held comparison sees them; stored bytes
    against stored bytes where both files store one dtype their nets hold exactly (equal
    bytes are equal values then, and the compare never holds a tensor whole)."""
    names_a, names_b = _weight_names(a), _weight_names(b)
    if set(names_a) != set(names_b):
        return sorted(set(names_a) ^ set(names_b))
    differ = []
    for k in names_a:
        if k in skip:
            continue
        x, y = _stored_exactly(a, k), _stored_exactly(b, k)
        if x is not None and y is not None and x.dtype == y.dtype:
            same = x.shape == y.shape and _same_stored(x, y)
        else:
            tx, ty = _weight(a, k), _weight(b, k)
            same = tx.shape == ty.shape and tx.dtype == ty.dtype and torch.equal(tx, ty)
        if not same:
            differ.append(k)
    return differ


def _weight_names(net: Transformer) -> list[str]:
    """A net's weight names in module order (a held net's ``state_dict`` order)."""
    order = list(Transformer(net.config).state_dict())
    if net.streamed is None:
        return order
    names = set(net.streamed.names())
    return [k for k in order if k in names] + sorted(names - set(order))


def _weight(net: Transformer, name: str) -> torch.Tensor:
    if net.streamed is None:
        return net.state_dict()[name]
    return net.streamed.tensor(name)


#: stored dtypes each compute dtype holds exactly (equal stored bytes: equal held values)
_EXACT = {
    torch.float64: None,  # every stored dtype
    torch.float32: None,
    torch.bfloat16: ("BF16",),
    torch.float16: ("F16",),
}


def _stored_exactly(net: Transformer, name: str) -> Any:
    """The file tensor behind ``name`` where the net holds its values exactly as stored (a
    plain streamed source, a dtype that represents every stored value), else None."""
    from aprlib.forward.weights import StreamedWeights

    source = net.streamed
    if not isinstance(source, StreamedWeights):
        return None
    t = source.model.tensors.get(name)
    exact = _EXACT.get(source.dtype, ())
    if t is None or (exact is not None and t.dtype.name not in exact):
        return None
    return t


def _same_stored(x: Any, y: Any) -> bool:
    """Two file tensors' stored bytes equal, read side by side in chunks where both lie
    in their files as stored (a 1 GB embedding is never held whole, twice), else whole."""
    import numpy as np

    from aprlib.formats.filesource import FileSource

    if x.span is None or y.span is None or x.checksummed or y.checksummed:
        return _same_bytes(x.raw(), y.raw())
    if x.nbytes != y.nbytes:
        return False
    with (
        FileSource(x.span[0], expect=x.span_file) as fa,
        FileSource(y.span[0], expect=y.span_file) as fb,
    ):
        pieces_a = fa.chunks(x.span[1], x.nbytes, x.name)
        chunks = zip(pieces_a, fb.chunks(y.span[1], y.nbytes, y.name), strict=True)
        return all(
            _same_bytes(np.frombuffer(a, np.uint8), np.frombuffer(b, np.uint8)) for a, b in chunks
        )


def _same_bytes(x: Any, y: Any) -> bool:
    """Two byte arrays equal, compared eight bytes at a time (5x a byte-wise compare)."""
    import numpy as np

    if x.size != y.size:
        return False
    if x.size % 8 == 0:
        x, y = x.view(np.uint64), y.view(np.uint64)
    return bool(np.array_equal(x, y))


def config_differences(a: Any, b: Any) -> list[tuple[str, Any, Any]]:
    """Fields whose meaning to the forward differs (``apr diff``'s comparison)."""
    from aprlib.compare.configs import CONFIG_FIELDS, config_meaning, same_meaning

    out = []
    for name in CONFIG_FIELDS:
        va, vb = config_meaning(a, name), config_meaning(b, name)
        if not same_meaning(va, vb):
            out.append((name, va, vb))
    return out


def _describe(run: Run, sides: dict[str, Side]) -> str:
    if run.kind == "side":
        return sides[run.weights].label
    owners = [k for k, s in sides.items() if s.weights_key() == run.weights]
    text = f"reference Ops, {run.dtype}, on {' and '.join(owners)}'s weights"
    if run.rounded:
        text += f" rounded to {run.rounded}"
    if run.blocks:
        text += f", matmul inputs in {run.blocks} blocks"
    if run.gelu:
        text += ", GELU from llama.cpp's F16 table"
    return text


def _as_side(x: Side | Transformer, label: str) -> Side:
    return x if isinstance(x, Side) else Side(label, x)


def bisect(
    a: Side | Transformer,
    b: Side | Transformer,
    tokens: list[int],
    tolerance: Tolerance | None = None,
    overrides: dict[str, Tolerance] | None = None,
    labels: tuple[str, str] = ("A", "B"),
) -> BisectReport:
    """Judge each side against the reference on its own weights, and B's weights against
    A's, at every capture point, streaming (the rule: this module's docstring)."""
    side_a, side_b = _as_side(a, labels[0]), _as_side(b, labels[1])
    configs_differ: list[tuple[str, Any, Any]] = []
    weights_differ: list[str] = []
    same = False
    digested = None
    if side_a.weights_key() != side_b.weights_key():
        configs_differ = config_differences(side_a.net.config, side_b.net.config)
        digested = _digested(side_a.net, side_b.net)
        if digested is None:
            weights_differ = weight_differences(side_a.net, side_b.net)
            same = not configs_differ and not weights_differ
    if same:  # one model in two files (a copy, a lossless conversion): one reference, no
        side_b = replace(side_b, weights=side_a.weights_key())  # weights to compare
    layers_a = side_a.net.config.num_hidden_layers
    if layers_a != side_b.net.config.num_hidden_layers:
        raise BisectError(
            f"A has {layers_a} layers, B has {side_b.net.config.num_hidden_layers}: "
            "their capture points do not pair"
        )
    tolerance, overrides = tolerance or Tolerance(), overrides or {}
    graph = points_of(side_a.net.config)
    if graph.keys() != points_of(side_b.net.config).keys():
        raise BisectError(
            f"A is {side_a.net.config.architecture}, B {side_b.net.config.architecture}: "
            "their capture points do not pair"
        )
    sides = {"A": side_a, "B": side_b}
    planned = plan(side_a, side_b)
    report = BisectReport(side_a.label, side_b.label, list(tokens), tolerance)
    report.trusted = [k for k, s in sides.items() if s.trusted]
    report.same_weights = same
    report.config_differences, report.weights_differ = configs_differ, weights_differ
    report.ignored = {k: list(s.ignored) for k, s in sides.items() if s.ignored}
    nets: dict[str, Transformer] = {}
    for side in (side_a, side_b):  # per key, the net holding the weights most exactly (a
        key = side.weights_key()  # side loaded in bfloat16 holds them rounded)
        if key not in nets or _precision(side.net) > _precision(nets[key]):
            nets[key] = side.net
    batch = torch.tensor([tokens])
    # every distinct run once, stepped in turn on one thread (nothing copied, no contention)
    runs: dict[Run, Iterator[tuple[str, Any]]] = {}
    for step in planned:
        for run in (step.subject, step.reference, step.floor):
            if run in runs:
                continue
            if run.kind == "side":
                side = sides[run.weights]
                runs[run] = _held(side) if side.points is not None else side.net.points(batch)
                continue
            trusted = next(
                (s for s in sides.values() if s.trusted and _trusted_run(s) == run), None
            )
            net = trusted.net if trusted is not None else _build(run, nets)
            runs[run] = net.points(batch)
    alias = {_trusted_run(s): Run("side", k) for k, s in sides.items() if s.trusted}
    checks = [
        Check(c.kind, c.side, _describe(c.subject, sides), _describe(c.floor, sides))
        for c in planned
    ]
    report.checks = checks
    states: list[dict[str, str]] = [{} for _ in planned]
    sources = [s.net.source for s in sides.values() if s.net.source is not None]
    try:
        with torch.no_grad():
            for name, inputs in graph.items():
                values = {}
                for run, forward in runs.items():
                    got, x = _next(forward, name)
                    if got != name:
                        raise BisectError(
                            f"capture points out of step at {name}: {run.kind} at {got}"
                        )
                    values[run] = x
                tol = _tolerance_for(name, tolerance, overrides)
                for planned_check, check, state in zip(planned, checks, states, strict=True):
                    check.points.append(
                        _judge(name, inputs, planned_check, values, alias, sides, tol, state, graph)
                    )
                del values
                if name.endswith("resid.mlp"):  # a layer done on every side: its pages may go
                    for source in sources:
                        source.drop_pages()
            for forward in runs.values():
                _finish(forward)
    except BaseException:  # a forward that raised leaves no source keeping digests
        for source in digested or ():
            source.digests = None
        raise
    if digested is not None:
        try:
            report.weights_differ = _digest_differences(side_a.net, side_b.net, *digested)
        finally:
            for source in digested:
                source.digests = None
        if not report.weights_differ and not configs_differ:  # one model in two files:
            report.same_weights = True  # its weights check compared a run with itself
            report.checks = [c for c in report.checks if c.kind != "weights"]
    return report


def _digested(a: Transformer, b: Transformer) -> tuple[Any, Any] | None:
    """Two streamed files storing every tensor in one dtype their nets hold exactly: their
    weights are compared by the CRC32 of each tensor's bytes as the forwards stream them (no
    read of its own, which was a quarter of a 7B bisect). Two copies of one model are then
    known as such only after the run (their forwards are paid for). None where the
    comparison must come first."""
    from aprlib.forward.weights import StreamedWeights

    sources = a.streamed, b.streamed
    if not all(isinstance(s, StreamedWeights) for s in sources):
        return None
    names = _weight_names(a)
    if set(names) != set(_weight_names(b)):
        return None
    for k in names:
        x, y = _stored_exactly(a, k), _stored_exactly(b, k)
        if x is None or y is None or x.dtype != y.dtype or x.shape != y.shape:
            return None
    for source in sources:
        source.digests = {}  # type: ignore[union-attr]
    return sources


def _digest_differences(a: Transformer, b: Transformer, da: Any, db: Any) -> list[str]:
    """Tensors whose stored bytes differ: by CRC32 where both forwards streamed them whole,
    the rest (the embedding rows only the tokens were read of) compared now."""
    digests_a, digests_b = da.digests or {}, db.digests or {}
    known = digests_a.keys() & digests_b.keys()
    differ = {k for k in known if digests_a[k] != digests_b[k]}
    differ |= set(_streamed_differences(a, b, skip=known))
    return [k for k in _weight_names(a) if k in differ]


def _judge(
    name: str,
    inputs: tuple[str, ...],
    planned: PlannedCheck,
    values: dict[Run, Any],
    alias: dict[Run, Run],
    sides: dict[str, Side],
    tol: Tolerance,
    state: dict[str, str],
    graph: dict[str, tuple[str, ...]],
) -> PointResult:
    """One point of one check: its numbers, whether it diverged, and its role."""

    def value(run: Run) -> Any:
        return values[run] if run in values else values[alias[run]]

    xs, xr, xf = value(planned.subject), value(planned.reference), value(planned.floor)
    side = sides[planned.side] if planned.kind == "engine" else None
    if xs is None or xr is None or xf is None:  # a point an outside engine does not hold
        state[name] = "absent"
        nan = math.nan
        return PointResult(name, inputs, (), nan, nan, nan, nan, nan, 0, 0, False, "absent")
    scope = side.scopes.get(name, "all") if side is not None else "all"
    if scope == "last":
        xr, xf = last_token(name, xr), last_token(name, xf)
    if xs.shape != xr.shape:
        raise BisectError(
            f"{name}: {_describe(planned.subject, sides)} has shape {tuple(xs.shape)}, "
            f"the reference {tuple(xr.shape)}"
        )
    e = _errors(xf, xs, xr)
    bound = tol.m * e.rmse_a + tol.atol + tol.rtol * e.ref_rms
    if planned.kind == "weights":
        is_bad = e.rmse_b > bound or e.nonfinite_b != e.nonfinite_a
    else:  # NaN/Inf only the clean run holds is the floor's, not the engine's
        is_bad = e.rmse_b > bound or e.nonfinite_b > e.nonfinite_a
    role = "agrees"
    if is_bad:
        upstream = _held_inputs(inputs, state, graph)
        role = "inherited" if any(state.get(i) == "bad" for i in upstream) else "introduced"
    state[name] = "bad" if is_bad else "ok"
    return PointResult(
        name,
        inputs,
        tuple(xs.shape),
        e.rmse_a,
        e.rmse_b,
        e.rmse_ab,
        e.ref_rms,
        bound,
        e.nonfinite_a,
        e.nonfinite_b,
        is_bad,
        role,
        scope,
        sides[planned.side].engine_names.get(name, ""),
        tol.m,
        tol.rtol,
    )


def _held_inputs(
    inputs: tuple[str, ...], state: dict[str, str], graph: dict[str, tuple[str, ...]]
) -> set[str]:
    """A point's inputs, each absent one replaced by the nearest held points upstream."""
    out: set[str] = set()
    pending = list(inputs)
    while pending:
        name = pending.pop()
        if state.get(name) == "absent":
            pending.extend(graph.get(name, ()))
        else:
            out.add(name)
    return out


# --- building the two sides from files, backends and dtypes ------------------------------


def load_side(
    path: Path | str, backend: str = "reference", dtype: str = "float32", stream: bool = False
) -> Transformer:
    """A file's net for a bisect: zero-copy float32 views of its pages when held (the
    pages go as each layer is done), or streamed a layer at a time."""
    from aprlib.forward.backends import make_ops

    ops, kind = make_ops(backend), getattr(torch, dtype)
    return Transformer.from_file(path, dtype=kind, ops=ops, zero_copy=not stream, stream=stream)


def twin(net: Transformer, backend: str = "reference", dtype: str | None = None) -> Transformer:
    """A's weights under another backend or dtype (shared when the dtype is unchanged)."""
    from aprlib.forward.backends import make_ops

    if dtype is None:
        return net.with_weights(lambda _, w: w, make_ops(backend))
    target = getattr(torch, dtype)
    return net.with_weights(lambda _, w: w.to(target), make_ops(backend))


def parse_override(text: str, base: Tolerance | None = None) -> tuple[str, Tolerance]:
    """``"layers.*.attn.scores=m:4,atol:1e-5"`` → (pattern, Tolerance); what it does not
    name stays as in ``base`` (the command line's tolerance)."""
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
    return pattern, replace(base or Tolerance(), **values)


def write_bundle(
    folder: Path, net_a: Transformer, net_b: Transformer, tokens: list[int], point: str
) -> list[Path]:
    """The tokens, both configs, and both sides' tensors at ``point`` and its inputs."""
    import numpy as np

    wanted = {point, *points_of(net_a.config)[point]}
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
