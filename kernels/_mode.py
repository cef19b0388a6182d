"""Choose triton's interpreter where no CUDA device is present (see the package docstring)."""

from __future__ import annotations

import os
import sys

import torch


class TritonModeError(ImportError):
    """triton was imported for native code on a host where only its interpreter can run."""


if not torch.cuda.is_available():
    if "triton" in sys.modules and os.environ.get("TRITON_INTERPRET", "0") in ("", "0"):
        raise TritonModeError(
            "kernels: no CUDA device, and triton was imported before kernels without "
            "TRITON_INTERPRET=1 (a transformers model import does that): set TRITON_INTERPRET=1 "
            "in the environment, or import kernels first"
        )
    os.environ.setdefault("TRITON_INTERPRET", "1")
