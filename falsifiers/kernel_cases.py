"""Random cases for the kernel parity falsifiers, shared with the defect-sensitivity tests.

Each ``*_case`` function builds its inputs from a recorded seed, runs the kernel, torch eager
in the same dtype and the float64 reference, and returns the earned-bound measurement(s).
The falsifiers draw these arguments with hypothesis; ``tests/test_kernel_defects.py`` calls
the same functions with a planted bug and requires them to fail with the bound unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import strategies as st

import provable_kernels
from provable_kernels import ParityError, ParityResult, check_parity

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
dtypes = st.sampled_from(sorted(DTYPES))
seeds = st.integers(0, 2**31 - 1)

# a cpu binding runs wherever the kernels run by default (the interpreter on a CPU host,
# natively on a CUDA host); the cuda binding insists on the GPU, so only a GPU run passes it
DEVICES = [
    pytest.param("default", id="default"),
    pytest.param("cuda", id="cuda", marks=pytest.mark.cuda),
]


def device_of(name: str) -> torch.device:
    if name == "default":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def random(seed: int, shape: tuple[int, ...], scale: float = 1.0) -> torch.Tensor:
    """float64 normal values from ``seed`` (the case's recorded seed), on the CPU."""
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=gen, dtype=torch.float64) * scale


def poisoned(x: torch.Tensor, seed: int, poison: bool) -> torch.Tensor:
    """``x`` with a NaN and a ±Inf at seeded places when ``poison``: placement is checked first."""
    if not poison:
        return x
    x = x.clone()
    gen = torch.Generator().manual_seed(seed + 99)
    flat = x.view(-1)
    spots = torch.randint(0, flat.numel(), (2,), generator=gen)
    flat[spots[0]] = float("nan")
    flat[spots[1]] = float("inf") if seed % 2 else float("-inf")
    return x


@dataclass
class CaseLog:
    """Results of one falsifier's cases: seeds and the worst share of the bound."""

    results: list[ParityResult] = field(default_factory=list)

    def check(self, *results: ParityResult) -> None:
        self.results.extend(results)
        failed = [str(r) for r in results if not r.passed]
        if failed:
            raise ParityError("\n".join(failed))

    def record(self, evidence: Any, **extra: Any) -> None:
        worst = max(self.results, key=lambda r: r.ratio)
        evidence.record(
            cases=len(self.results),
            seeds=sorted({r.seed for r in self.results}),
            dtypes=sorted({str(r.dtype).removeprefix("torch.") for r in self.results}),
            worst_share_of_bound=round(worst.ratio, 3),
            worst_case=str(worst),
            **extra,
        )


def rms_norm_case(
    rows: int,
    cols: int,
    dtype: str,
    log_scale: float,
    eps: float,
    seed: int,
    device: str = "default",
    poison: bool = False,
) -> ParityResult:
    dt, dev = DTYPES[dtype], device_of(device)
    x = poisoned(random(seed, (rows, cols), 10.0**log_scale), seed, poison).to(dt).to(dev)
    w = (1 + 0.5 * random(seed + 1, (cols,))).to(dt).to(dev)
    ref64 = provable_kernels.rms_norm_reference(x.double(), w.double(), eps)
    eager = provable_kernels.rms_norm_reference(x, w, eps)
    return check_parity("rms_norm", provable_kernels.rms_norm(x, w, eps), eager, ref64, dt, seed)


def rope_case(
    batch: int,
    heads: int,
    seq: int,
    half: int,
    dtype: str,
    llama3: bool,
    offset: int,
    seed: int,
    device: str = "default",
) -> ParityResult:
    dt, dev = DTYPES[dtype], device_of(device)
    dim = 2 * half
    scaling = (
        {
            "rope_type": "llama3",
            "factor": 8.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 64,
        }
        if llama3
        else None
    )
    positions = torch.arange(offset, offset + seq)
    cos, sin = provable_kernels.rope_cos_sin(dim, positions, 10000.0, scaling)
    x = random(seed, (batch, heads, seq, dim)).to(dt).to(dev)
    cos, sin = cos.to(dev), sin.to(dev)
    ref64 = provable_kernels.rope_reference(x.double(), cos.double(), sin.double())
    eager = provable_kernels.rope_reference(x, cos, sin)
    return check_parity("rope", provable_kernels.rope(x, cos, sin), eager, ref64, dt, seed)


def swiglu_case(
    rows: int,
    cols: int,
    dtype: str,
    log_scale: float,
    seed: int,
    device: str = "default",
    poison: bool = False,
) -> ParityResult:
    dt, dev = DTYPES[dtype], device_of(device)
    gate = poisoned(random(seed, (rows, cols), 10.0**log_scale), seed, poison).to(dt).to(dev)
    up = random(seed + 1, (rows, cols)).to(dt).to(dev)
    ref64 = provable_kernels.swiglu_reference(gate.double(), up.double())
    eager = provable_kernels.swiglu_reference(gate, up)
    return check_parity("swiglu", provable_kernels.swiglu(gate, up), eager, ref64, dt, seed)


def linear_case(
    m: int,
    k: int,
    n: int,
    bias: bool,
    dtype: str,
    seed: int,
    device: str = "default",
    poison: bool = False,
) -> ParityResult:
    dt, dev = DTYPES[dtype], device_of(device)
    x = poisoned(random(seed, (m, k)), seed, poison).to(dt).to(dev)
    w = (random(seed + 1, (n, k)) / k**0.5).to(dt).to(dev)
    b = random(seed + 2, (n,)).to(dt).to(dev) if bias else None
    ref64 = provable_kernels.linear_reference(
        x.double(), w.double(), None if b is None else b.double()
    )
    eager = provable_kernels.linear_reference(x, w, b)
    return check_parity("linear", provable_kernels.linear(x, w, b), eager, ref64, dt, seed)


def attention_case(
    batch: int,
    kv_heads: int,
    group: int,
    tq: int,
    tk_extra: int,
    dim: int,
    dtype: str,
    log_scale: float,
    seed: int,
    device: str = "default",
) -> ParityResult:
    dt, dev = DTYPES[dtype], device_of(device)
    tk = tq + tk_extra
    q = random(seed, (batch, kv_heads * group, tq, dim), 10.0**log_scale).to(dt).to(dev)
    k = random(seed + 1, (batch, kv_heads, tk, dim)).to(dt).to(dev)
    v = random(seed + 2, (batch, kv_heads, tk, dim)).to(dt).to(dev)
    ref64 = provable_kernels.attention_reference(q.double(), k.double(), v.double())
    eager = provable_kernels.attention_reference(q, k, v)
    return check_parity("attention", provable_kernels.attention(q, k, v), eager, ref64, dt, seed)


def cross_entropy_case(
    rows: int, vocab: int, dtype: str, log_scale: float, seed: int, device: str = "default"
) -> tuple[ParityResult, ParityResult]:
    dt, dev = DTYPES[dtype], device_of(device)
    logits = random(seed, (rows, vocab), 10.0**log_scale).to(dt).to(dev)
    gen = torch.Generator().manual_seed(seed + 1)
    targets = torch.randint(0, vocab, (rows,), generator=gen).to(dev)
    loss64, grad64 = provable_kernels.cross_entropy_reference(logits.double(), targets)
    loss_eager, grad_eager = provable_kernels.cross_entropy_reference(logits, targets)
    loss, grad = provable_kernels.cross_entropy(logits, targets)
    return (
        check_parity("cross_entropy.losses", loss, loss_eager, loss64, dt, seed),
        check_parity("cross_entropy.grad", grad, grad_eager, grad64, dt, seed),
    )


def quantised(kind: str, rows: int, blocks: int, log_scale: float, seed: int) -> np.ndarray:
    """GGML bytes of a random [rows, blocks * block] float32 matrix, from aprlib's quantiser."""
    from aprlib.formats.dtypes import DType, from_float32

    values = provable_kernels.dequant.BLOCK_VALUES[kind]
    x = (random(seed, (rows, blocks * values), 10.0**log_scale)).float().numpy()
    return from_float32(x, {"q8_0": DType.Q8_0, "q4_k": DType.Q4_K}[kind]).reshape(-1)


def dequant_mismatches(
    kind: str, rows: int, blocks: int, log_scale: float, seed: int, device: str = "default"
) -> int:
    """Elements whose float32 bits differ from ``gguf.quants.dequantize`` (0 = bit-exact)."""
    raw = torch.from_numpy(quantised(kind, rows, blocks, log_scale, seed).copy())
    shape = (rows, blocks * provable_kernels.dequant.BLOCK_VALUES[kind])
    got = provable_kernels.dequantize(raw.to(device_of(device)), kind, shape).cpu()
    want = provable_kernels.dequantize_reference(raw, kind, shape)
    return int((got.view(torch.int32) != want.view(torch.int32)).sum())


def matvec_case(
    kind: str, rows: int, blocks: int, log_scale: float, seed: int, device: str = "default"
) -> ParityResult:
    dev = device_of(device)
    raw = torch.from_numpy(quantised(kind, rows, blocks, log_scale, seed).copy()).to(dev)
    shape = (rows, blocks * provable_kernels.dequant.BLOCK_VALUES[kind])
    x = random(seed + 1, (shape[1],)).float().to(dev)
    ref64 = provable_kernels.dequantize_matvec_reference(raw, kind, shape, x.double())
    eager = provable_kernels.dequantize_matvec_reference(raw, kind, shape, x)
    out = provable_kernels.dequantize_matvec(raw, kind, shape, x)
    return check_parity(f"dequant_matvec.{kind}", out, eager, ref64.to(dev), torch.float32, seed)
