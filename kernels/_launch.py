"""Block-size choices shared by the launchers.

The interpreter's cost is per program and per tl op, not per element, so on a CPU the
launchers pick few programs with large blocks; on a GPU the same caps keep register use sane.
"""

from __future__ import annotations

import triton


def block(n: int, cap: int, floor: int = 16) -> int:
    """The power of two ≥ n, between ``floor`` and ``cap``."""
    return max(floor, min(cap, triton.next_power_of_2(max(n, 1))))
