"""Fused cross-entropy over a large vocabulary: loss and gradient, chunked over the vocab.

Each program owns a tile of rows and walks the vocabulary in chunks twice: once for an
online log-sum-exp (running max and rescaled sum, so nothing overflows), once to write
``(softmax - onehot) / N``, the gradient of the mean loss. Only the [N] statistics and the
[N, V] gradient are stored: no float32 copy of the logits, no [N, V] softmax.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

from provable_kernels._launch import block, tile_elements


@triton.jit
def _cross_entropy_kernel(
    logits_ptr, targets_ptr, loss_ptr, grad_ptr, n_rows, vocab, stride_l, stride_g, inv_n,
    BLOCK_R: tl.constexpr, BLOCK_V: tl.constexpr,
):  # fmt: skip
    rows = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    row_ok = rows < n_rows
    cols = tl.arange(0, BLOCK_V)
    m = tl.full((BLOCK_R,), float("-inf"), dtype=tl.float32)
    s = tl.zeros((BLOCK_R,), dtype=tl.float32)
    for v0 in range(0, vocab, BLOCK_V):
        c = v0 + cols
        mask = row_ok[:, None] & (c[None, :] < vocab)
        x = tl.load(logits_ptr + rows[:, None] * stride_l + c[None, :], mask=mask, other=0.0)
        x = tl.where(mask, x.to(tl.float32), float("-inf"))
        m_new = tl.maximum(m, tl.max(x, axis=1))
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
        s = s * tl.exp(m - m_safe) + tl.sum(tl.exp(x - m_safe[:, None]), axis=1)
        m = m_new
    s = tl.where(row_ok, s, 1.0)  # rows past the end: keep log() away from 0
    target = tl.load(targets_ptr + rows, mask=row_ok, other=0)
    picked = tl.load(logits_ptr + rows * stride_l + target, mask=row_ok, other=0.0)
    # (m - z_t) + log(s): the large terms cancel first, as in log_softmax; m + log(s) - z_t
    # would carry the rounding of lse at the scale of m into a small loss
    tl.store(loss_ptr + rows, (m - picked.to(tl.float32)) + tl.log(s), mask=row_ok)
    for v0 in range(0, vocab, BLOCK_V):
        c = v0 + cols
        mask = row_ok[:, None] & (c[None, :] < vocab)
        x = tl.load(logits_ptr + rows[:, None] * stride_l + c[None, :], mask=mask, other=0.0)
        # exp(x - m) / s, not exp(x - lse): lse carries log(s)'s rounding at the scale of m
        p = tl.exp(x.to(tl.float32) - m[:, None]) / s[:, None]
        g = (p - tl.where(c[None, :] == target[:, None], 1.0, 0.0)) * inv_n
        tl.store(grad_ptr + rows[:, None] * stride_g + c[None, :], g, mask=mask)


def cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Cross-entropy of each row of ``logits`` [N, V] at ``targets`` [N], and the gradient of
    their mean.

    Returns ``(losses, grad)``: losses float32 [N] (the mean loss is ``losses.mean()``; rows
    are returned so a parity check has N values to measure, not one lucky scalar), grad
    [N, V] in the logits' dtype.
    """
    if logits.dim() != 2 or targets.shape != (logits.shape[0],):
        raise ValueError(
            f"cross_entropy: logits {tuple(logits.shape)} and targets {tuple(targets.shape)}"
            " need shapes [N, V] and [N]"
        )
    n_rows, vocab = logits.shape
    if n_rows == 0:
        raise ValueError("cross_entropy: no rows (the mean of nothing is undefined)")
    if logits.stride(-1) != 1:
        logits = logits.contiguous()
    targets = targets.contiguous()
    if bool(((targets < 0) | (targets >= vocab)).any()):
        raise ValueError(f"cross_entropy: a target is outside the vocabulary [0, {vocab})")
    losses = torch.empty(n_rows, dtype=torch.float32, device=logits.device)
    grad = torch.empty_like(logits)
    block_v = block(vocab, 4096)
    block_r = block(max(1, tile_elements() // block_v), 64, floor=1)
    grid = (triton.cdiv(n_rows, block_r),)
    _cross_entropy_kernel[grid](
        logits, targets, losses, grad, n_rows, vocab, logits.stride(0), grad.stride(0),
        1.0 / n_rows, BLOCK_R=block_r, BLOCK_V=block_v,
    )  # fmt: skip
    return losses, grad


def cross_entropy_reference(
    logits: torch.Tensor, targets: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """torch's F.cross_entropy per row in the logits' dtype, and autograd's gradient of the mean."""
    leaf = logits.detach().clone().requires_grad_(True)
    losses = F.cross_entropy(leaf, targets, reduction="none")
    losses.mean().backward()
    assert leaf.grad is not None
    return losses.detach(), leaf.grad
