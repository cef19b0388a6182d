"""SwiGLU: ``silu(gate) * up``, element-wise in float32."""

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
    if gate.shape != up.shape:
        raise ValueError(f"swiglu: gate {tuple(gate.shape)} and up {tuple(up.shape)} differ")
    gate, up = gate.contiguous(), up.contiguous()
    out = torch.empty_like(gate)
    n = gate.numel()
    size = block(n, 1 << 16)
    _swiglu_kernel[(triton.cdiv(n, size),)](gate, up, out, n, BLOCK=size)
    return out


def swiglu_reference(gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    """HF's MLP activation: ``act_fn(gate) * up`` in the inputs' dtype."""
    return F.silu(gate) * up
