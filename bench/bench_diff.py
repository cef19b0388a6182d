"""Benchmark `apr diff` (issues 5, 10): two Qwen2.5-0.5B-shaped BF16 models that differ in one
tensor, in every pair of formats, and against q8_0 / Q4_K GGUFs of the same model.

In one run: generate A (~1 GB BF16 safetensors) and B (a copy with one up_proj perturbed),
convert both to APR and GGUF, and A to a q8_0 and a Q4_K GGUF. The baseline is reading both
files of a pair once from the warm page cache with one reused buffer (what any diff must at
least do). Each `apr diff` runs in a fresh interpreter (start-up included) and reports its
peak RSS. Targets: BF16 diff <= 2x its read baseline in every pair of formats; a diff against
the q8_0 / Q4_K GGUF <= 3x the BF16 safetensors-vs-GGUF diff.

    python bench/bench_diff.py [--layers 24] [--skip-q4k]
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
sys.path.insert(0, str(Path(__file__).parent.parent))
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
BUFFER = bytearray(64 << 20)  # one buffer for every read: the baseline must not allocate


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
    view = memoryview(BUFFER)
    start = time.perf_counter()
    for path in paths:
        with open(path, "rb", buffering=0) as fh:
            while fh.readinto(view):
                pass
    return time.perf_counter() - start


def files_of(path: Path) -> list[Path]:
    return sorted(path.glob("*.safetensors")) if path.is_dir() else [path]


def run_diff(a: Path, b: Path) -> tuple[float, int, dict]:
    start = time.perf_counter()
    run = subprocess.run(
        [sys.executable, "-c", DIFF, str(a), str(b)], capture_output=True, text=True, check=True
    )
    seconds = time.perf_counter() - start
    rss = int(run.stderr.split("VmHWM")[-1].split()[0]) * 1024
    return seconds, rss, json.loads(run.stdout)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=QWEN["num_hidden_layers"])
    parser.add_argument("--skip-q4k", action="store_true", help="no Q4_K GGUF (slow to make)")
    args = parser.parse_args()
    from aprlib.convert import convert
    from aprlib.dtypes import DType

    folder = Path(tempfile.mkdtemp(prefix="apr-diff-bench-"))
    try:
        (folder / "a").mkdir()
        a_st, _ = generate(folder / "a", {**QWEN, "num_hidden_layers": args.layers})
        (folder / "b").mkdir()
        shutil.copy(folder / "a" / "config.json", folder / "b")
        b_st = folder / "b" / "model.safetensors"
        perturb(a_st, b_st, TARGET)
        files = {"A": {"safetensors": a_st}, "B": {"safetensors": b_st}}
        for side, st in (("A", a_st), ("B", b_st)):
            for fmt in ("apr", "gguf"):
                files[side][fmt] = st.parent / f"model.{fmt}"
                convert(st, files[side][fmt])
        quantised = {"q8_0": folder / "a" / "q8_0.gguf"}
        convert(a_st, quantised["q8_0"], dtype=DType.Q8_0)
        if not args.skip_q4k:
            quantised["q4_k"] = folder / "a" / "q4_k.gguf"
            convert(a_st, quantised["q4_k"], dtype=DType.Q4_K)
        size = a_st.stat().st_size + b_st.stat().st_size
        print(f"two BF16 models, {size / 2**20:,.0f} MiB in all, {args.layers} layers")
        print(f"{'A':<12} {'B':<12} {'read both':>10} {'apr diff':>9} {'ratio':>6} {'RSS MiB':>8}")
        timings = {}
        for fa in ("safetensors", "apr", "gguf"):
            for fb in ("safetensors", "apr", "gguf"):
                pair = [*files_of(files["A"][fa]), *files_of(files["B"][fb])]
                read_once(pair)  # warm the page cache for both measurements alike
                read_s = min(read_once(pair) for _ in range(2))
                diff_s, rss, report = run_diff(files["A"][fa], files["B"][fb])
                timings[(fa, fb)] = diff_s
                print(
                    f"{fa:<12} {fb:<12} {read_s:>9.2f}s {diff_s:>8.2f}s "
                    f"{diff_s / read_s:>5.2f}x {rss / 2**20:>8,.0f}   (target <= 2x)"
                )
                assert report["diagnosis"]["class"] == "VALUE_DRIFT", report["diagnosis"]
        base = timings[("safetensors", "gguf")]
        for name, path in quantised.items():
            pair = [a_st, path]
            read_once(pair)
            diff_s, rss, report = run_diff(a_st, path)
            print(
                f"safetensors  {name + ' gguf':<12} {'':>10} {diff_s:>8.2f}s "
                f"{diff_s / base:>5.2f}x of the BF16 safetensors-vs-GGUF diff "
                f"({base:.2f}s), RSS {rss / 2**20:,.0f} MiB (target <= 3x)"
            )
            print(f"  {report['diagnosis']['line'][:160]}")
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
