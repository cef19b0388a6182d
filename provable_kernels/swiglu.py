"""Gated MLP activations, element-wise in float32: SwiGLU ``silu(gate) * up`` and GeGLU
``gelu_tanh(gate) * up`` (Gemma)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

from provable_kernels._launch import block


@triton.jit
def _swiglu_kernel(gate_ptr, up_ptr, out_ptr, n, BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    g = tl.load(gate_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    u = tl.load(up_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    y = g / (1.0 + tl.exp(-g)) * u
    tl.store(out_ptr + offs, y, mask=mask)


def swiglu(gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    """silu(gate) * up for same-shape tensors; output in gate's dtype."""
    return _gated(_swiglu_kernel, "swiglu", gate, up)


@triton.jit
def _geglu_kernel(gate_ptr, up_ptr, out_ptr, n, BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    g = tl.load(gate_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    u = tl.load(up_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    z = 0.7978845608028654 * (g + 0.044715 * g * g * g)  # sqrt(2/pi) (x + 0.044715 x^3)
    tanh = 2.0 / (1.0 + tl.exp(-2.0 * z)) - 1.0  # saturates to ±1 as exp under/overflows
    tl.store(out_ptr + offs, 0.5 * g * (1.0 + tanh) * u, mask=mask)


def _gated(kernel: object, name: str, gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    if gate.shape != up.shape:
        raise ValueError(f"{name}: gate {tuple(gate.shape)} and up {tuple(up.shape)} differ")
    gate, up = gate.contiguous(), up.contiguous()
    out = torch.empty_like(gate)
    n = gate.numel()
    size = block(n, 1 << 16)
    kernel[(triton.cdiv(n, size),)](gate, up, out, n, BLOCK=size)  # type: ignore[index]
    return out


def geglu(gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    """gelu(gate) (the tanh approximation) * up for same-shape tensors; gate's dtype."""
    return _gated(_geglu_kernel, "geglu", gate, up)


def swiglu_reference(gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    """HF's MLP activation: ``act_fn(gate) * up`` in the inputs' dtype."""
    return F.silu(gate) * up
