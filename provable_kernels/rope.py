"""Rotary position embedding in HF's rotate_half convention, and its cos/sin builder.

``out = x * cos + rotate_half(x) * sin`` with ``rotate_half(x) = cat(-x[D/2:], x[:D/2])``:
the first half of each head pairs with the second half (not adjacent pairs, which is the
GPT-J/interleaved convention that llama.cpp's permuted q/k weights undo).
"""

from __future__ import annotations

from typing import Any

import torch
import triton
import triton.language as tl

from aprlib.forward.model import llama3_scaled, rotate_half
from provable_kernels._launch import block


@triton.jit
def _rope_kernel(
    x_ptr, cos_ptr, sin_ptr, out_ptr, n_heads, seq_len, half,
    sx_b, sx_h, sx_t, so_b, so_h, so_t, s_cos,
    BLOCK_T: tl.constexpr, BLOCK_H: tl.constexpr,
):  # fmt: skip
    bh = tl.program_id(0)
    b = bh // n_heads
    h = bh % n_heads
    t = tl.program_id(1) * BLOCK_T + tl.arange(0, BLOCK_T)
    d = tl.arange(0, BLOCK_H)
    mask = (t[:, None] < seq_len) & (d[None, :] < half)
    x_row = x_ptr + b * sx_b + h * sx_h + t[:, None] * sx_t
    o_row = out_ptr + b * so_b + h * so_h + t[:, None] * so_t
    x1 = tl.load(x_row + d[None, :], mask=mask, other=0.0).to(tl.float32)
    x2 = tl.load(x_row + half + d[None, :], mask=mask, other=0.0).to(tl.float32)
    c_row = t[:, None] * s_cos + d[None, :]
    cos1 = tl.load(cos_ptr + c_row, mask=mask, other=0.0).to(tl.float32)
    cos2 = tl.load(cos_ptr + c_row + half, mask=mask, other=0.0).to(tl.float32)
    sin1 = tl.load(sin_ptr + c_row, mask=mask, other=0.0).to(tl.float32)
    sin2 = tl.load(sin_ptr + c_row + half, mask=mask, other=0.0).to(tl.float32)
    tl.store(o_row + d[None, :], x1 * cos1 - x2 * sin1, mask=mask)
    tl.store(o_row + half + d[None, :], x2 * cos2 + x1 * sin2, mask=mask)


def rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate ``x`` [B, H, T, D] by ``cos``/``sin`` [T, D]; float32 arithmetic, x's dtype out."""
    batch, heads, seq, dim = x.shape
    if dim % 2 or cos.shape != (seq, dim) or sin.shape != (seq, dim):
        raise ValueError(
            f"rope: x {tuple(x.shape)} needs an even head dim and cos/sin of shape ({seq}, {dim}),"
            f" got {tuple(cos.shape)} / {tuple(sin.shape)}"
        )
    if x.stride(-1) != 1:
        x = x.contiguous()
    cos, sin = cos.contiguous(), sin.contiguous()
    out = torch.empty((batch, heads, seq, dim), dtype=x.dtype, device=x.device)
    half = dim // 2
    block_h = block(half, 1024, floor=1)
    block_t = block(seq, max(1, 8192 // block_h), floor=1)
    grid = (batch * heads, triton.cdiv(seq, block_t))
    _rope_kernel[grid](
        x, cos, sin, out, heads, seq, half,
        x.stride(0), x.stride(1), x.stride(2), out.stride(0), out.stride(1), out.stride(2),
        cos.stride(0), BLOCK_T=block_t, BLOCK_H=block_h,
    )  # fmt: skip
    return out


def rope_reference(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """HF's apply_rotary_pos_emb for one tensor, in x's dtype."""
    cos, sin = cos.to(x.dtype), sin.to(x.dtype)
    return x * cos + rotate_half(x) * sin


def _llama3_inv_freq(inv_freq: torch.Tensor, scaling: dict[str, Any]) -> torch.Tensor:
    """HF's _compute_llama3_parameters, with HF's defaults for the fields left out."""
    return llama3_scaled(
        inv_freq,
        float(scaling["factor"]),
        float(scaling.get("low_freq_factor", 1.0)),
        float(scaling.get("high_freq_factor", 4.0)),
        float(scaling.get("original_max_position_embeddings", 8192)),
    )


def rope_cos_sin(
    head_dim: int,
    positions: torch.Tensor,
    theta: float,
    rope_scaling: dict[str, Any] | None = None,
    dtype: torch.dtype = torch.float32,
) -> tuple[torch.Tensor, torch.Tensor]:
    """cos/sin [T, head_dim] for integer ``positions`` [T] (HF's rotary embedding).

    ``rope_scaling`` is the normalised dict of ``ModelConfig.rope_scaling``: ``llama3`` and
    ``linear`` are applied; ``None``/``default`` leave the frequencies alone; anything else
    raises rather than silently computing unscaled angles.
    """
    # float32 throughout, as HF computes it, so the angles match transformers bit for bit
    exponent = torch.arange(0, head_dim, 2, dtype=torch.int64).to(torch.float32) / head_dim
    inv_freq = 1.0 / (theta**exponent)
    kind = (rope_scaling or {}).get("rope_type", (rope_scaling or {}).get("type", "default"))
    if kind == "llama3":
        inv_freq = _llama3_inv_freq(inv_freq, rope_scaling or {})
    elif kind == "linear":
        inv_freq = inv_freq / float((rope_scaling or {})["factor"])
    elif kind != "default":
        raise ValueError(f"rope_cos_sin: rope_scaling type {kind!r} is not supported")
    freqs = positions.to(torch.float32)[:, None] * inv_freq[None, :]
    emb = torch.cat((freqs, freqs), dim=-1)
    return emb.cos().to(dtype), emb.sin().to(dtype)
