"""Benchmark `apr diff` (issue 5): two Qwen2.5-0.5B-shaped BF16 files differing in one tensor.

In one run: generate A (~1 GB safetensors) and B (a copy with one up_proj perturbed), time
reading both files once (the baseline, page cache warm as for the diff), then time
`apr diff A B` in a fresh interpreter and read its peak RSS. Targets: diff within 2x the
read time; peak RSS under 1 GB.

    python bench/bench_diff.py [--layers 24]
"""

from __future__ import annotations

import argparse
import json
import shutil
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from bench_convert import QWEN, generate

TARGET = "model.layers.5.mlp.up_proj.weight"
DIFF = (
    "import re, sys\n"
    "from aprlib.cli import main\n"
    "rc = main(['diff', sys.argv[1], sys.argv[2], '--json'])\n"
    "status = open('/proc/self/status').read()\n"
    "print('VmHWM', re.search(r'VmHWM:\\s+(\\d+) kB', status).group(1), file=sys.stderr)\n"
    "sys.exit(0 if rc in (0, 1) else rc)\n"
)


def perturb(src: Path, dst: Path, name: str) -> None:
    shutil.copy(src, dst)
    with open(dst, "r+b") as fh:
        (n,) = struct.unpack("<Q", fh.read(8))
        entry = json.loads(fh.read(n))[name]
        start = 8 + n + entry["data_offsets"][0]
        fh.seek(start)
        raw = np.frombuffer(fh.read(4096), dtype=np.uint16).copy()
        raw[::7] ^= 0x0040  # a few mantissa bits: drift, not a pattern
        fh.seek(start)
        fh.write(raw.tobytes())


def read_once(paths: list[Path]) -> float:
    start = time.perf_counter()
    for path in paths:
        with open(path, "rb") as fh:
            while fh.readinto(bytearray(64 << 20)):
                pass
    return time.perf_counter() - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=QWEN["num_hidden_layers"])
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="apr-diff-bench-"))
    try:
        (folder / "a").mkdir()
        a, _ = generate(folder / "a", {**QWEN, "num_hidden_layers": args.layers})
        (folder / "b").mkdir()
        shutil.copy(folder / "a" / "config.json", folder / "b")
        b = folder / "b" / "model.safetensors"
        perturb(a, b, TARGET)
        read_once([a, b])  # warm the page cache for both measurements alike
        read_s = min(read_once([a, b]) for _ in range(2))
        start = time.perf_counter()
        run = subprocess.run(
            [sys.executable, "-c", DIFF, str(a), str(b)], capture_output=True, text=True, check=True
        )
        diff_s = time.perf_counter() - start
        report = json.loads(run.stdout)
        rss = int(run.stderr.split("VmHWM")[-1].split()[0]) * 1024
        size = a.stat().st_size + b.stat().st_size
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    print(f"two files, {size / 2**20:,.0f} MiB in all, {len(report['tensors'])} tensor pairs")
    print(f"read both once: {read_s:.2f} s ({size / 2**20 / read_s:,.0f} MiB/s, best of 2)")
    print(
        f"apr diff:       {diff_s:.2f} s (fresh interpreter included) -> "
        f"{diff_s / read_s:.2f}x the read (target <= 2x)"
    )
    print(f"peak RSS of apr diff: {rss / 2**20:,.0f} MiB (target < 1024 MiB)")
    print(report["diagnosis"]["line"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
