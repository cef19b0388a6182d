"""Causal grouped-query attention with an online (flash-style) softmax.

q [B, Hq, Tq, D], k/v [B, Hkv, Tk, D]; query head h reads kv head ``h // (Hq // Hkv)``
(HF's repeat_kv); query i sits at absolute position ``Tk - Tq + i`` (a decode step with a
cache sees every earlier key) and attends to keys at positions ≤ its own. Scores are scaled
by ``1/sqrt(D)``. The kernel walks key blocks once, keeping a running max and sum per query
row, so no [Tq, Tk] matrix is stored; it stops at the last key block any query of its tile
can see.
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from provable_kernels._launch import block, interpreting


@triton.jit
def _attention_kernel(
    q_ptr, k_ptr, v_ptr, out_ptr, n_q_heads, group, Tq, Tk, D, scale,
    sq_b, sq_h, sq_t, sk_b, sk_h, sk_t, sv_b, sv_h, sv_t, so_b, so_h, so_t,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
):  # fmt: skip
    bh = tl.program_id(0)
    b = bh // n_q_heads
    h = bh % n_q_heads
    kv_h = h // group
    rm = tl.program_id(1) * BLOCK_M + tl.arange(0, BLOCK_M)
    rd = tl.arange(0, BLOCK_D)
    rn = tl.arange(0, BLOCK_N)
    q_mask = (rm[:, None] < Tq) & (rd[None, :] < D)
    q = tl.load(q_ptr + b * sq_b + h * sq_h + rm[:, None] * sq_t + rd[None, :], mask=q_mask)
    q = q.to(tl.float32) * scale
    position = Tk - Tq + rm  # absolute position of each query row
    m_i = tl.full((BLOCK_M,), float("-inf"), dtype=tl.float32)
    l_i = tl.zeros((BLOCK_M,), dtype=tl.float32)
    acc = tl.zeros((BLOCK_M, BLOCK_D), dtype=tl.float32)
    last = tl.minimum(Tk, Tk - Tq + (tl.program_id(1) + 1) * BLOCK_M)
    k_base = k_ptr + b * sk_b + kv_h * sk_h
    v_base = v_ptr + b * sv_b + kv_h * sv_h
    for n0 in range(0, last, BLOCK_N):
        cols = n0 + rn
        kv_mask = (cols[:, None] < Tk) & (rd[None, :] < D)
        k = tl.load(k_base + cols[:, None] * sk_t + rd[None, :], mask=kv_mask, other=0.0)
        s = tl.dot(q, tl.trans(k.to(tl.float32)), input_precision="ieee")
        visible = (cols[None, :] <= position[:, None]) & (cols[None, :] < Tk)
        s = tl.where(visible, s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, axis=1))
        # rows with nothing visible yet keep m = -inf; use 0 so exp() sees -inf, not NaN
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
        p = tl.exp(s - m_safe[:, None])
        alpha = tl.exp(m_i - m_safe)
        l_i = l_i * alpha + tl.sum(p, axis=1)
        v = tl.load(v_base + cols[:, None] * sv_t + rd[None, :], mask=kv_mask, other=0.0)
        acc = acc * alpha[:, None] + tl.dot(p, v.to(tl.float32), input_precision="ieee")
        m_i = m_new
    out = acc / l_i[:, None]
    tl.store(out_ptr + b * so_b + h * so_h + rm[:, None] * so_t + rd[None, :], out, mask=q_mask)


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Causal GQA attention; float32 arithmetic, q's dtype out ([B, Hq, Tq, D])."""
    batch, hq, tq, dim = q.shape
    _, hkv, tk, _ = k.shape
    if (
        k.shape != v.shape
        or k.shape[0] != batch
        or k.shape[3] != dim
        or hkv == 0
        or hq % hkv
        or tq > tk
    ):
        raise ValueError(
            f"attention: q {tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)} do not fit "
            "(needs Hq a multiple of Hkv and Tq <= Tk)"
        )
    q, k, v = (t if t.stride(-1) == 1 else t.contiguous() for t in (q, k, v))
    out = torch.empty((batch, hq, tq, dim), dtype=q.dtype, device=q.device)
    block_d = block(dim, 256)
    cap = 128 if interpreting() else 64
    block_m = block(tq, cap)
    block_n = block(tk, cap)
    grid = (batch * hq, triton.cdiv(tq, block_m))
    _attention_kernel[grid](
        q, k, v, out, hq, hq // hkv, tq, tk, dim, 1.0 / math.sqrt(dim),
        q.stride(0), q.stride(1), q.stride(2), k.stride(0), k.stride(1), k.stride(2),
        v.stride(0), v.stride(1), v.stride(2), out.stride(0), out.stride(1), out.stride(2),
        BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_D=block_d,
    )  # fmt: skip
    return out


def attention_reference(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """HF's eager attention: repeat_kv, scores in q's dtype, softmax in ≥ float32, cast back."""
    hq, hkv = q.shape[1], k.shape[1]
    tq, tk = q.shape[2], k.shape[2]
    k = k.repeat_interleave(hq // hkv, dim=1)
    v = v.repeat_interleave(hq // hkv, dim=1)
    scores = torch.matmul(q, k.transpose(2, 3)) * (1.0 / math.sqrt(q.shape[-1]))
    position = torch.arange(tq, device=q.device)[:, None] + (tk - tq)
    hidden = torch.arange(tk, device=q.device)[None, :] > position
    scores = scores.masked_fill(hidden, float("-inf"))
    wide = torch.promote_types(q.dtype, torch.float32)
    weights = torch.softmax(scores, dim=-1, dtype=wide).to(q.dtype)
    return torch.matmul(weights, v)
