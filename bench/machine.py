"""The machine a benchmark ran on, for its header: figures compare only on the same CPU kind."""

from __future__ import annotations

import os
import platform
from pathlib import Path


def cpu_model() -> str:
    """``/proc/cpuinfo``'s model name (the same VM size differs by CPU between sessions)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def machine() -> str:
    """CPU model, CPU count, load at the start and Python: one header line."""
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return (
        f"machine: {cpu_model()}, {os.cpu_count()} CPUs, load average {load:.2f} at start; "
        f"Python {platform.python_version()}"
    )
