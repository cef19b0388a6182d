"""llama.cpp's ``rope_freqs.weight``: llama3 rope scaling as per-frequency divisors.

llama.cpp has no metadata key for llama3 scaling; its converter writes, for a Llama whose
``rope_scaling.rope_type`` is ``llama3``, an F32 vector of ``head_dim / 2`` divisors (the
graph rotates pair ``i`` by ``pos * freq_i / divisor_i``). It is derived data, not a
weight: HF has no such tensor, so aprlib keeps it out of the tensor set and keeps the
config's ``rope_scaling`` instead, the one source both the tensor (on writing) and the
reference forward are computed from, so the two cannot drift apart.

On reading, a file that also says its scaling (our ``aprlib.rope_scaling``) has its tensor
checked against it; a file with only the tensor (as llama.cpp writes) has its scaling
recovered: ``factor`` is the largest divisor, the smooth ramp between the high- and
low-frequency ends fixes ``original_max_position_embeddings / {low,high}_freq_factor``
(only those ratios: the divisors cannot tell 8192/1/4 from 4096/0.5/2, so the context
takes llama.cpp's and HF's default, 8192), and the recovered parameters must regenerate
the tensor or the read fails.

Why not bit for bit: the converter computes ``base ** (i / dim)`` with torch's float32
``pow``, which is not correctly rounded (``10000 ** (16/66)`` comes out one ulp below the
correctly rounded float32), so the same config gives divisors that differ in the last
bits from one torch build to another. We compute the converter's formula step by step in
float32 with a correctly rounded ``pow`` and accept, per divisor, the ulps that one such
rounding can grow to through the rest of the formula (``allowed_ulps``).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

ROPE_FREQS = "rope_freqs.weight"
#: the converter's defaults for keys a llama3 ``rope_scaling`` leaves out
LLAMA3_DEFAULTS: dict[str, float] = {
    "factor": 8.0,
    "low_freq_factor": 1.0,
    "high_freq_factor": 4.0,
    "original_max_position_embeddings": 8192,
}
#: float32 roundings of the frequency the comparison allows for (see ``allowed_ulps``)
ULP_BUDGET = 8.0


class RopeFreqsError(ValueError):
    """Divisors that disagree with the config, or from which no scaling can be recovered."""

    def __init__(self, message: str, field: str) -> None:
        self.field = field
        super().__init__(message)


def _parameters(scaling: dict[str, Any]) -> dict[str, float]:
    """The four llama3 parameters (the converter's defaults for those left out), each a
    positive finite number, or ``RopeFreqsError`` naming the one that is not."""
    p = {**LLAMA3_DEFAULTS, **{k: v for k, v in scaling.items() if k in LLAMA3_DEFAULTS}}
    for key, value in p.items():
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise RopeFreqsError(f"rope_scaling {key} is {value!r}, not a number", "rope_scaling")
        if not 0 < value < float("inf"):
            raise RopeFreqsError(
                f"rope_scaling {key} is {value!r}, not a positive finite number", "rope_scaling"
            )
    return {k: float(v) for k, v in p.items()}


def base_freqs(rope_theta: float, head_dim: int) -> np.ndarray:
    """``1 / base ** (arange(0, dim, 2) / dim)`` in float32, with a correctly rounded pow."""
    exponents = np.arange(0, head_dim, 2, dtype=np.float32) / np.float32(head_dim)
    powers = (np.float64(np.float32(rope_theta)) ** exponents.astype(np.float64)).astype(np.float32)
    return np.float32(1.0) / powers


def llama3_rope_factors(rope_theta: float, head_dim: int, scaling: dict[str, Any]) -> np.ndarray:
    """The divisors llama.cpp's converter writes (``LlamaModel.generate_extra_tensors``),
    each float32 step as torch takes it there (python scalars rounded to float32)."""
    p = _parameters(scaling)
    factor, low = np.float32(p["factor"]), np.float32(p["low_freq_factor"])
    context = float(p["original_max_position_embeddings"])
    freqs = base_freqs(rope_theta, head_dim)
    wavelen = np.float32(2 * math.pi) / freqs
    low_wavelen = np.float32(context / float(p["low_freq_factor"]))
    high_wavelen = np.float32(context / float(p["high_freq_factor"]))
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        smooth = (np.float32(context) / wavelen - low) / np.float32(
            float(p["high_freq_factor"]) - float(p["low_freq_factor"])
        )
        ramp = np.float32(1) / ((np.float32(1) - smooth) / factor + smooth)
    out = np.where(
        wavelen < high_wavelen, np.float32(1), np.where(wavelen > low_wavelen, factor, ramp)
    )
    return out.astype(np.float32)


def ulp_distance(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Units in the last place between positive finite float32 arrays (int64)."""
    ia = np.ascontiguousarray(a, dtype=np.float32).view(np.int32).astype(np.int64)
    ib = np.ascontiguousarray(b, dtype=np.float32).view(np.int32).astype(np.int64)
    return np.abs(ia - ib)


def allowed_ulps(rope_theta: float, head_dim: int, scaling: dict[str, Any]) -> np.ndarray:
    """Per divisor, how far (in ulps) the converter's float32 arithmetic may land from ours.

    A relative error e in the frequency (its pow is not correctly rounded) moves the
    ramp's divisor ``f = 1 / ((1 - s) / F + s)`` by ``f (1 - 1/F) x / (high - low) * e``
    relative, with ``x = context / wavelength`` (clipped to the ramp: off it the divisor
    is 1 or F and only a boundary flip near the ends moves it). Against the converter's
    own code over 3,200 configs the worst divisor used 2.4 ulps of e per unit of this
    gain; ``ULP_BUDGET`` allows 8 (``tests/test_rope_freqs.py`` re-measures it).
    """
    p = _parameters(scaling)
    factor, low, high = (float(p[k]) for k in ("factor", "low_freq_factor", "high_freq_factor"))
    if not high > low > 0 or factor <= 0:
        return np.full(head_dim // 2, ULP_BUDGET, dtype=np.float64)
    wavelen = 2 * math.pi / base_freqs(rope_theta, head_dim).astype(np.float64)
    x = np.clip(float(p["original_max_position_embeddings"]) / wavelen, low, high)
    want = llama3_rope_factors(rope_theta, head_dim, scaling).astype(np.float64)
    gain = want * abs(1 - 1 / factor) * x / (high - low)
    return ULP_BUDGET * (1 + gain)


def first_mismatch(got: np.ndarray, want: np.ndarray, allowed: np.ndarray) -> str | None:
    """Where ``got`` differs from ``want`` by more than ``allowed`` ulps, in words; else None."""
    far = np.nonzero(ulp_distance(got, want) > allowed)[0]
    if not far.size:
        return None
    i = int(far[0])
    return (
        f"divisor [{i}] is {float(got[i])!r} where {float(want[i])!r} is implied "
        f"({far.size} of {got.size} differ by more than float32 rounding of the formula)"
    )


def matches(
    values: np.ndarray, rope_theta: float, head_dim: int, scaling: dict[str, Any]
) -> str | None:
    """None when ``values`` are the divisors ``scaling`` implies, else what differs."""
    want = llama3_rope_factors(rope_theta, head_dim, scaling)
    return first_mismatch(values, want, allowed_ulps(rope_theta, head_dim, scaling))


def check_values(values: np.ndarray, head_dim: int) -> None:
    """Length ``head_dim / 2``, finite, positive: what llama.cpp's graph divides by."""
    if values.shape != (head_dim // 2,):
        raise RopeFreqsError(
            f"shape {list(values.shape)}; head_dim {head_dim} needs [{head_dim // 2}]", "ne"
        )
    bad = np.nonzero(~np.isfinite(values) | (values <= 0))[0]
    if bad.size:
        i = int(bad[0])
        raise RopeFreqsError(
            f"divisor [{i}] is {float(values[i])!r} ({bad.size} not finite and positive)", "data"
        )


def check_against(
    values: np.ndarray, rope_theta: float, head_dim: int, scaling: dict[str, Any] | None
) -> None:
    """The divisors equal what the config's rope scaling implies (llama3 only has them)."""
    kind = (scaling or {}).get("rope_type")
    if scaling is None or kind != "llama3":
        raise RopeFreqsError(
            f"per-frequency divisors present but the rope scaling is {kind or 'none'}; "
            "only llama3 scaling has them",
            "rope_scaling",
        )
    wrong = matches(values, rope_theta, head_dim, scaling)
    if wrong:
        raise RopeFreqsError(f"disagrees with rope_scaling {scaling}: {wrong}", "rope_scaling")


def _short(value: float, digits: int) -> float:
    return float(f"{value:.{digits}g}")


def _candidates(x: np.ndarray, s: np.ndarray) -> list[tuple[float, float]]:
    """(low, high) pairs to try, from the smooth ramp ``x = low + s * (high - low)`` where
    ``x = context / wavelength``; HF's defaults where fewer than two points decide."""
    d_low, d_high = LLAMA3_DEFAULTS["low_freq_factor"], LLAMA3_DEFAULTS["high_freq_factor"]
    fits: list[tuple[float, float]] = []
    if x.size >= 2:
        slope, low = np.polyfit(s.astype(np.float64), x.astype(np.float64), 1)
        fits.append((float(low), float(low + slope)))
    elif x.size == 1 and 0 < s[0] < 1:
        fits.append((d_low, d_low + (float(x[0]) - d_low) / float(s[0])))
        fits.append(((float(x[0]) - float(s[0]) * d_high) / (1 - float(s[0])), d_high))
    else:
        fits.append((d_low, d_high))
    out: list[tuple[float, float]] = []
    for low, high in fits:  # the shortest decimals first: configs say 1.0 and 4.0
        out += [(_short(low, n), _short(high, n)) for n in range(1, 10)] + [(low, high)]
    return list(dict.fromkeys(out))


def recover_llama3(values: np.ndarray, rope_theta: float, head_dim: int) -> dict[str, Any]:
    """The llama3 ``rope_scaling`` whose divisors are ``values`` (checked by regenerating
    them), or ``RopeFreqsError`` naming what cannot be recovered."""
    check_values(values, head_dim)
    factor = float(str(np.float32(values.max())))
    context = LLAMA3_DEFAULTS["original_max_position_embeddings"]
    if factor < 1:
        raise RopeFreqsError(
            f"largest divisor {factor!r} < 1: not llama3 scaling (factor cannot be recovered)",
            "data",
        )
    wavelen = np.float32(2 * math.pi) / base_freqs(rope_theta, head_dim)
    inner = (values != 1) & (values != np.float32(factor))
    x = np.float32(context) / wavelen[inner]
    with np.errstate(divide="ignore", invalid="ignore"):
        s = (1 / values[inner].astype(np.float64) - 1 / factor) / (1 - 1 / factor)
    for low, high in _candidates(x, s):
        if not 0 < low < high:
            continue
        scaling = {
            "rope_type": "llama3",
            "factor": factor,
            "low_freq_factor": low,
            "high_freq_factor": high,
            "original_max_position_embeddings": int(context),
        }
        if matches(values, rope_theta, head_dim, scaling) is None:
            return scaling
    raise RopeFreqsError(
        f"no llama3 scaling regenerates these divisors (factor {factor!r}, "
        f"{int(inner.sum())} on the smooth ramp): low_freq_factor/high_freq_factor "
        "cannot be recovered",
        "data",
    )
