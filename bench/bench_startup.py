"""How long a user waits before each command starts its work (issue 27).

Every figure is a whole process, as a user runs it (``python -m`` of the console script's
module, so no shell wrapper is counted), against the same-run floor of an interpreter that
imports nothing (``python -c pass``). Each command runs ``--repeat`` times; the median is
printed, and the minimum beside it (the least noise on a shared machine).

* ``apr --help``, ``apr --version``, a usage error: target <= 0.1 s;
* ``apr diff``/``inspect``/``convert`` ready to open files (the CLI plus what those commands
  import before the first read: numpy, the readers, the diff engine): target <= 0.15 s;
* ``import torch`` alone, reported apart: only the commands that run a forward pay it.

    python bench/bench_startup.py [--repeat 15]
"""

from __future__ import annotations

import argparse
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

from machine import cpu_model  # bench/ is this script's folder

ROOT = Path(__file__).resolve().parents[1]


def wall(code: str, repeat: int) -> tuple[float, float]:
    """(median, min) seconds of ``python -c code`` over ``repeat`` runs."""
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, check=False)
        times.append(time.perf_counter() - start)
    return statistics.median(times), min(times)


def cli(module: str, *args: str) -> str:
    return (
        f"import sys; sys.argv = ['x', *{list(args)!r}]\n"
        f"from {module} import main\n"
        "try:\n    sys.exit(main(sys.argv[1:]))\nexcept SystemExit:\n    pass\n"
    )


#: what apr diff / inspect / convert import before their first read of a file
READY = {
    "apr diff ready": "import aprlib.cli.main, aprlib.compare.diff, aprlib.formats.io",
    "apr inspect ready": "import aprlib.cli.main, aprlib.compare.consistency, aprlib.formats.io",
    "apr convert ready": "import aprlib.cli.main, aprlib.formats.conversion, aprlib.formats.io",
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=15)
    args = parser.parse_args()
    print(f"# start-up, whole process, median (min) of {args.repeat} runs")
    print(f"# CPU: {cpu_model()}; Python {platform.python_version()}")
    floor, floor_min = wall("pass", args.repeat)
    print(f"{'python -c pass (floor)':28s} {floor:6.3f} s ({floor_min:.3f})")
    rows: list[tuple[str, str, float]] = [
        ("apr --help", cli("aprlib.cli.main", "--help"), 0.10),
        ("apr --version", cli("aprlib.cli.main", "--version"), 0.10),
        ("apr (usage error)", cli("aprlib.cli.main", "diff"), 0.10),
        ("pv --version", cli("provable.cli.main", "--version"), 0.10),
        *((name, code, 0.15) for name, code in READY.items()),
        ("import numpy", "import numpy", 0.0),
        ("import torch (forward only)", "import torch", 0.0),
    ]
    for name, code, target in rows:
        median, least = wall(code, args.repeat)
        verdict = ""
        if target:
            verdict = "meets" if median <= target else "OVER"
            verdict = f"target <= {target:.2f} s: {verdict}"
        print(
            f"{name:28s} {median:6.3f} s ({least:.3f}); {median / floor:4.1f}x the floor; "
            f"{median - floor:+.3f} s over it  {verdict}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
