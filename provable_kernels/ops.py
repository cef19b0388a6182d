"""``TritonOps``: the reference model's ops (``aprlib.forward.model.Ops``) routed through the
kernels.

The model, not the ops, emits trace capture points, so a model built with these ops traces
the same points as the torch reference and ``apr bisect --backend-b triton`` can compare them
one for one. The embedding is a gather (no arithmetic to get wrong in a kernel of its own), so
it stays the reference's. Weights are cast to the activations' dtype first, as the reference
does, so "the same dtype" means the same inputs to both backends.
"""

from __future__ import annotations

from typing import Any

import torch

from aprlib.forward.model import Ops
from provable_kernels.attention import attention
from provable_kernels.cross_entropy import cross_entropy
from provable_kernels.linear import add_bias, linear
from provable_kernels.rms_norm import rms_norm
from provable_kernels.rope import rope
from provable_kernels.swiglu import geglu, swiglu


class _FusedCrossEntropy(torch.autograd.Function):
    """Mean cross-entropy whose backward is the gradient the kernel already wrote."""

    @staticmethod
    def forward(ctx: Any, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        losses, grad = cross_entropy(logits.detach(), targets)
        ctx.save_for_backward(grad)
        return losses.mean()

    @staticmethod
    def backward(ctx: Any, grad_output: torch.Tensor) -> tuple[torch.Tensor, None]:
        (grad,) = ctx.saved_tensors
        return grad * grad_output.to(grad.dtype), None


class TritonOps(Ops):
    """``aprlib.forward.model.Ops`` with every arithmetic op a Triton kernel."""

    name = "triton"

    def rms_norm(
        self, x: torch.Tensor, weight: torch.Tensor, eps: float, offset: float = 0.0
    ) -> torch.Tensor:
        scale = weight.to(x.dtype)
        return rms_norm(x, scale + offset if offset else scale, eps)

    def linear(
        self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None
    ) -> torch.Tensor:
        return linear(x, weight.to(x.dtype), None if bias is None else bias.to(x.dtype))

    def add_bias(self, y: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        return add_bias(y, bias.to(y.dtype))

    def rope(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        return rope(x, cos.to(x.dtype), sin.to(x.dtype))

    def attention(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        window: int | None = None,
        scale: float | None = None,
        softcap: float | None = None,
    ) -> torch.Tensor:
        # refused, not run without them: a wrong answer would look fine
        if window is not None:
            raise NotImplementedError(
                f"the Triton attention kernel has no sliding-window mask (window {window} "
                f"over {k.shape[-2]} positions); run this model with the reference ops"
            )
        if scale is not None or softcap is not None:
            raise NotImplementedError(
                "the Triton attention kernel scales by 1/sqrt(head_dim) and caps nothing "
                f"(asked: scale {scale}, softcap {softcap}); run this model with the reference ops"
            )
        return attention(q, k, v)

    def swiglu(self, gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
        return swiglu(gate, up)

    def geglu(
        self, gate: torch.Tensor, up: torch.Tensor, approximate: str = "tanh"
    ) -> torch.Tensor:
        if approximate != "tanh":  # refused, not approximated: a wrong answer would look fine
            raise NotImplementedError(
                f"the Triton GeGLU kernel computes the tanh approximation, not {approximate!r}; "
                "run this model with the reference ops"
            )
        return geglu(gate, up)

    def cross_entropy(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        vocab = logits.shape[-1]
        loss: torch.Tensor = _FusedCrossEntropy.apply(
            logits.reshape(-1, vocab), targets.reshape(-1)
        )
        return loss
