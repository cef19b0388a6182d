"""Triton kernels of the forward pass, each beside the torch reference it must match.

Where torch sees no CUDA device, importing this package sets ``TRITON_INTERPRET=1`` before
its kernel modules are decorated, so every kernel runs in triton's numpy interpreter on any CPU (the
algorithm-level check); on a CUDA host nothing is set and the kernels compile natively.
triton fixes that choice for its own library functions (``tl.sum``, ...) when it is first
imported, and torch imports triton by itself (``torch._dynamo`` does, even for a meta-device
``nn.Embedding``), so on a host without CUDA where that already happened natively, the
package re-wraps those functions for the interpreter (``provable_kernels._mode``): native
triton cannot run there anyway. Where even that fails, importing raises ``TritonModeError``
naming the fix (``TRITON_INTERPRET=1`` in the environment) rather than failing inside the
first kernel.
"""

from __future__ import annotations

# first: chooses triton's interpreter before any kernel module imports triton
from provable_kernels._mode import TritonModeError  # isort: skip
from provable_kernels._launch import interpreting
from provable_kernels.attention import attention, attention_reference
from provable_kernels.bounds import (
    ParityError,
    ParityResult,
    assert_parity,
    check_parity,
    placement_mismatch,
    rmse,
)
from provable_kernels.cross_entropy import cross_entropy, cross_entropy_reference
from provable_kernels.dequant import (
    dequantize,
    dequantize_matvec,
    dequantize_matvec_reference,
    dequantize_reference,
)
from provable_kernels.linear import add_bias, linear, linear_reference
from provable_kernels.ops import TritonOps
from provable_kernels.rms_norm import rms_norm, rms_norm_reference
from provable_kernels.rope import rope, rope_cos_sin, rope_reference
from provable_kernels.swiglu import geglu, swiglu, swiglu_reference

__all__ = [
    "ParityError",
    "ParityResult",
    "TritonModeError",
    "TritonOps",
    "add_bias",
    "assert_parity",
    "attention",
    "attention_reference",
    "check_parity",
    "cross_entropy",
    "cross_entropy_reference",
    "dequantize",
    "dequantize_matvec",
    "dequantize_matvec_reference",
    "dequantize_reference",
    "geglu",
    "interpreting",
    "linear",
    "linear_reference",
    "placement_mismatch",
    "rms_norm",
    "rms_norm_reference",
    "rmse",
    "rope",
    "rope_cos_sin",
    "rope_reference",
    "swiglu",
    "swiglu_reference",
]
