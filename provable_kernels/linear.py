"""Linear: ``x @ weight.T + bias`` as a tiled matmul with a float32 accumulator.

Operands are upcast to float32 before ``tl.dot`` and the dot runs in IEEE precision (no
TF32): triton's interpreter multiplies raw bf16 bit patterns in ``tl.dot`` (upstream, unfixed),
and on hardware TF32 would make the kernel less exact than the eager matmul it replaces.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

from provable_kernels._launch import block


@triton.jit
def _linear_kernel(
    x_ptr, w_ptr, b_ptr, out_ptr, M, N, K,
    stride_xm, stride_xk, stride_wn, stride_wk, stride_om, stride_on,
    HAS_BIAS: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):  # fmt: skip
    rm = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    rn = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    rk = tl.arange(0, BLOCK_K)
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        kk = k0 + rk
        x = tl.load(
            x_ptr + rm[:, None] * stride_xm + kk[None, :] * stride_xk,
            mask=(rm[:, None] < M) & (kk[None, :] < K),
            other=0.0,
        ).to(tl.float32)
        w = tl.load(  # [BLOCK_K, BLOCK_N] view of weight[N, K]
            w_ptr + rn[None, :] * stride_wn + kk[:, None] * stride_wk,
            mask=(rn[None, :] < N) & (kk[:, None] < K),
            other=0.0,
        ).to(tl.float32)
        acc += tl.dot(x, w, input_precision="ieee")
    if HAS_BIAS:
        acc += tl.load(b_ptr + rn, mask=rn < N, other=0.0).to(tl.float32)[None, :]
    mask = (rm[:, None] < M) & (rn[None, :] < N)
    tl.store(out_ptr + rm[:, None] * stride_om + rn[None, :] * stride_on, acc, mask=mask)


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``x [..., K] @ weight[N, K].T (+ bias[N])``; output in x's dtype."""
    n, k = weight.shape
    if x.shape[-1] != k or (bias is not None and bias.shape != (n,)):
        raise ValueError(
            f"linear: x {tuple(x.shape)}, weight {tuple(weight.shape)}, "
            f"bias {None if bias is None else tuple(bias.shape)} do not fit"
        )
    rows = x.reshape(-1, k)
    m = rows.shape[0]
    out = torch.empty((m, n), dtype=x.dtype, device=x.device)
    block_m, block_n, block_k = block(m, 64), block(n, 64), block(k, 128)
    grid = (triton.cdiv(m, block_m), triton.cdiv(n, block_n))
    _linear_kernel[grid](
        rows, weight, bias if bias is not None else weight, out, m, n, k,
        rows.stride(0), rows.stride(1), weight.stride(0), weight.stride(1),
        out.stride(0), out.stride(1),
        HAS_BIAS=bias is not None, BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_K=block_k,
    )  # fmt: skip
    return out.reshape(*x.shape[:-1], n)


@triton.jit
def _add_bias_kernel(y_ptr, b_ptr, out_ptr, n, width, BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    y = tl.load(y_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    b = tl.load(b_ptr + offs % width, mask=mask, other=0.0).to(tl.float32)
    tl.store(out_ptr + offs, y + b, mask=mask)


def add_bias(y: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """``y [..., N] + bias[N]`` in float32, output in y's dtype: the q/k/v bias add, apart
    from its matmul so both sides of it are capture points."""
    if bias.shape != (y.shape[-1],):
        raise ValueError(f"add_bias: y {tuple(y.shape)} and bias {tuple(bias.shape)} do not fit")
    y, bias = y.contiguous(), bias.contiguous()
    out = torch.empty_like(y)
    n = y.numel()
    size = block(n, 1 << 16)
    _add_bias_kernel[(triton.cdiv(n, size),)](y, bias, out, n, bias.shape[0], BLOCK=size)
    return out


def linear_reference(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None
) -> torch.Tensor:
    """torch's F.linear in the inputs' dtype (what nn.Linear runs)."""
    return F.linear(x, weight, bias)
