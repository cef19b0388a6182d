"""Choose triton's interpreter where no CUDA device is present (see the package docstring)."""

from __future__ import annotations

import os
import sys

import torch


class TritonModeError(ImportError):
    """triton runs natively only, on a host where only its interpreter can run."""


def _adopt_interpreter() -> int:
    """Re-wrap triton.language's own jit functions for the interpreter; how many were.

    triton decides native vs interpreted when a function is decorated, and its library
    functions (``tl.sum``, ``tl.max``, ...) are decorated when triton is imported. torch
    imports triton on its own (``torch._dynamo`` does, from as little as a meta-device
    ``nn.Embedding``), so by the time ``provable_kernels`` is imported that choice may have been
    made natively on a host with no GPU, where native triton cannot run at all. Re-wrapping those
    functions loses nothing there and lets the interpreter run them.
    """
    import triton.language as tl
    from triton.runtime.interpreter import InterpretedFunction
    from triton.runtime.jit import JITFunction

    owners: list[object] = [
        module
        for name, module in list(sys.modules.items())
        if module is not None and (name == "triton.language" or name.startswith("triton.language."))
    ]
    owners.append(tl.tensor)
    count = 0
    for owner in owners:
        for name, value in list(vars(owner).items()):
            if type(value) is JITFunction:
                setattr(owner, name, InterpretedFunction(value.fn))
                count += 1
    return count


if not torch.cuda.is_available():
    native_already = "triton" in sys.modules and os.environ.get("TRITON_INTERPRET", "0") in (
        "",
        "0",
    )
    os.environ["TRITON_INTERPRET"] = "1"
    if native_already:
        try:
            _adopt_interpreter()
        except (ImportError, AttributeError, TypeError) as exc:
            raise TritonModeError(
                "provable_kernels: no CUDA device, and triton was imported natively before it "
                f"({exc}): set TRITON_INTERPRET=1 in the environment"
            ) from None
