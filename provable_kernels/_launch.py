"""Block-size choices shared by the launchers.

The interpreter's cost is per program and per tl op, not per element, so on a CPU the
launchers pick few programs with large blocks; on a GPU the same caps keep register use sane.
"""

from __future__ import annotations

import os

import triton


def block(n: int, cap: int, floor: int = 16) -> int:
    """The power of two ≥ n, between ``floor`` and ``cap``."""
    return max(floor, min(cap, triton.next_power_of_2(max(n, 1))))


def interpreting() -> bool:
    """Whether kernels run in triton's CPU interpreter (no CUDA device, or asked for)."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def tile_elements() -> int:
    """Elements a program's tile may hold: large in the interpreter, register-sized on a GPU."""
    return 1 << 16 if interpreting() else 1 << 13
