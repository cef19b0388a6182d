"""Triton kernels of the forward pass, each beside the torch reference it must match.

Where torch sees no CUDA device, importing this package sets ``TRITON_INTERPRET=1`` before
triton is first imported, so every kernel runs in triton's numpy interpreter on any CPU (the
algorithm-level check). ``triton.jit`` reads that setting when a kernel is decorated, which
is when this package imports its modules; setting it here rather than in a conftest means
scripts, the CLI and tests all get the same behaviour. A caller that imported triton and
decorated kernels of its own earlier is unaffected. On a CUDA host nothing is set and the
kernels compile natively.
"""

from __future__ import annotations

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

from kernels._launch import interpreting
from kernels.attention import attention, attention_reference
from kernels.bounds import (
    ParityError,
    ParityResult,
    assert_parity,
    check_parity,
    placement_mismatch,
    rmse,
)
from kernels.cross_entropy import cross_entropy, cross_entropy_reference
from kernels.dequant import (
    dequantize,
    dequantize_matvec,
    dequantize_matvec_reference,
    dequantize_reference,
)
from kernels.linear import linear, linear_reference
from kernels.ops import TritonOps
from kernels.rms_norm import rms_norm, rms_norm_reference
from kernels.rope import rope, rope_cos_sin, rope_reference
from kernels.swiglu import swiglu, swiglu_reference

__all__ = [
    "ParityError",
    "ParityResult",
    "TritonOps",
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
