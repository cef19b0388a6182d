"""RMSNorm: ``weight * x / sqrt(mean(x²) + eps)``, computed in float32 like HF's Qwen2/Llama.

Rows are normalised over the last dimension; a program handles a tile of rows with the whole
row in one block (hidden sizes are at most a few thousand).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from provable_kernels._launch import block, tile_elements


@triton.jit
def _rms_norm_kernel(
    x_ptr, w_ptr, out_ptr, n_rows, n_cols, stride_x, stride_out, eps,
    BLOCK_R: tl.constexpr, BLOCK_D: tl.constexpr,
):  # fmt: skip
    rows = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    cols = tl.arange(0, BLOCK_D)
    mask = (rows[:, None] < n_rows) & (cols[None, :] < n_cols)
    x = tl.load(x_ptr + rows[:, None] * stride_x + cols[None, :], mask=mask, other=0.0)
    x = x.to(tl.float32)
    mean_sq = tl.sum(x * x, axis=1) / n_cols
    inv = 1.0 / tl.sqrt(mean_sq + eps)
    w = tl.load(w_ptr + cols, mask=cols < n_cols, other=0.0).to(tl.float32)
    y = x * inv[:, None] * w[None, :]
    tl.store(out_ptr + rows[:, None] * stride_out + cols[None, :], y, mask=mask)


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """RMSNorm over the last dimension; output in x's dtype, arithmetic in float32."""
    shape = x.shape
    rows = x.reshape(-1, shape[-1])
    if rows.stride(-1) != 1:
        rows = rows.contiguous()
    out = torch.empty(rows.shape, dtype=x.dtype, device=x.device)
    n_rows, n_cols = rows.shape
    block_d = block(n_cols, 1 << 16)
    block_r = block(max(1, tile_elements() // block_d), 64, floor=1)
    grid = (triton.cdiv(n_rows, block_r),)
    _rms_norm_kernel[grid](
        rows, weight.contiguous(), out, n_rows, n_cols, rows.stride(0), out.stride(0), eps,
        BLOCK_R=block_r, BLOCK_D=block_d,
    )  # fmt: skip
    return out.reshape(shape)


def rms_norm_reference(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """HF's Qwen2RMSNorm: float32 (or wider) statistics, cast back, then times weight."""
    dtype = x.dtype
    wide = x.to(torch.promote_types(dtype, torch.float32))
    variance = wide.pow(2).mean(-1, keepdim=True)
    normed = wide * torch.rsqrt(variance + eps)
    return weight * normed.to(dtype)
