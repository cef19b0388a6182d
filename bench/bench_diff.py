"""Benchmark `apr diff` (issues 5, 10): two Qwen2.5-0.5B-shaped BF16 models that differ in one
tensor, in every pair of formats, and against q8_0 / Q4_K GGUFs of the same model.

In one run: generate A (~1 GB BF16 safetensors) and B (a copy with one up_proj perturbed),
convert both to APR and GGUF, and A to a q8_0 and a Q4_K GGUF (each conversion by the CLI in
a fresh interpreter, reporting its peak RSS). The baseline is reading both files of a pair
once from the warm page cache with one reused buffer, on one thread and on as many threads
as the diff uses (the faster is the floor: a diff on N threads is held to a read on N
threads). Each `apr diff` runs in a fresh interpreter and reports two times: the command's
wall time, start-up included, and the time of its work (open both files and diff), which is
what scales with the model; the work includes importing what the diff imports on first use
(numpy, the readers), printed apart as ``imports``. Targets (issue 27): the diff's work
<= 1.5x its read floor and its wall time <= 2x one plain read of both files, in every pair
of formats; a diff against the q8_0 / Q4_K GGUF <= 3x the BF16 safetensors-vs-GGUF diff;
`apr convert --dtype q8_0` peak RSS <= 1.5x the largest tensor + 300 MB.

    python bench/bench_diff.py [--layers 24] [--skip-q4k] [--keep DIR]
"""

from __future__ import annotations

import argparse
import json
import os
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
from bench_convert import QWEN, generate, shapes
from machine import machine

TARGET = "model.layers.5.mlp.up_proj.weight"
#: the work's clock starts before the modules ``apr diff`` imports on first use (numpy, the
#: readers, the comparison): they are counted in the work, as before, and shown on their own
DIFF = (
    "import re, sys, time\n"
    "from aprlib.cli.main import main\n"
    "start = time.perf_counter()\n"
    "import aprlib.compare.diff, aprlib.formats.io, aprlib.formats.jsonout\n"
    "imports = time.perf_counter() - start\n"
    "rc = main(['diff', sys.argv[1], sys.argv[2], '--json'])\n"
    "work = time.perf_counter() - start\n"
    "status = open('/proc/self/status').read()\n"
    "print('IMPORTS', imports, file=sys.stderr)\n"
    "print('WORK', work, file=sys.stderr)\n"
    "print('VmHWM', re.search(r'VmHWM:\\s+(\\d+) kB', status).group(1), file=sys.stderr)\n"
    "sys.exit(0 if rc in (0, 1) else rc)\n"
)
CONVERT = (
    "import re, sys\n"
    "from aprlib.cli.main import main\n"
    "rc = main(['convert', sys.argv[1], sys.argv[2], '--dtype', sys.argv[3]])\n"
    "status = open('/proc/self/status').read()\n"
    "print('VmHWM', re.search(r'VmHWM:\\s+(\\d+) kB', status).group(1), file=sys.stderr)\n"
    "sys.exit(rc)\n"
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


def read_threaded(paths: list[Path], threads: int) -> float:
    """Both files read once, split into ``threads`` contiguous ranges read at once, each
    thread with its own reused buffer (allocated before the clock starts)."""
    from concurrent.futures import ThreadPoolExecutor

    ranges = []
    for path in paths:
        size = path.stat().st_size
        step = -(-size // threads)
        ranges += [(path, lo, min(size, lo + step)) for lo in range(0, size, step)]
    buffers = [memoryview(bytearray(16 << 20)) for _ in range(threads)]

    def read(i: int) -> None:
        buf = buffers[i % threads]
        for path, lo, hi in ranges[i::threads]:
            fd = os.open(path, os.O_RDONLY)
            try:
                pos = lo
                while pos < hi:
                    n = os.preadv(fd, [buf[: hi - pos]], pos)
                    if n <= 0:
                        break
                    pos += n
            finally:
                os.close(fd)

    start = time.perf_counter()
    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(read, range(threads)))
    return time.perf_counter() - start


def read_floor(paths: list[Path], threads: int) -> tuple[float, float]:
    """(best single-thread read, best read on ``threads`` threads), each best of two."""
    read_once(paths)  # warm the page cache for every measurement alike
    one = min(read_once(paths) for _ in range(2))
    many = min(read_threaded(paths, threads) for _ in range(2)) if threads > 1 else one
    return one, many


def files_of(path: Path) -> list[Path]:
    return sorted(path.glob("*.safetensors")) if path.is_dir() else [path]


def run_diff(a: Path, b: Path) -> tuple[float, float, int, dict, float]:
    """(wall seconds with start-up, seconds of the diff's work, peak RSS, report, seconds
    of the work spent importing), the best of two runs."""
    best: tuple[float, float, int, dict, float] | None = None
    for _ in range(2):
        start = time.perf_counter()
        run = subprocess.run(
            [sys.executable, "-c", DIFF, str(a), str(b)], capture_output=True, text=True, check=True
        )
        wall = time.perf_counter() - start
        work = float(run.stderr.split("WORK")[-1].split()[0])
        imports = float(run.stderr.split("IMPORTS")[-1].split()[0])
        rss = int(run.stderr.split("VmHWM")[-1].split()[0]) * 1024
        if best is None or work < best[1]:
            best = (wall, work, rss, json.loads(run.stdout), imports)
    assert best is not None
    return best


def run_convert(src: Path, dst: Path, dtype: str) -> int:
    """Peak RSS of `apr convert --dtype` in a fresh interpreter."""
    run = subprocess.run(
        [sys.executable, "-c", CONVERT, str(src), str(dst), dtype],
        capture_output=True,
        text=True,
        check=True,
    )
    return int(run.stderr.split("VmHWM")[-1].split()[0]) * 1024


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=QWEN["num_hidden_layers"])
    parser.add_argument("--skip-q4k", action="store_true", help="no Q4_K GGUF (slow to make)")
    parser.add_argument("--keep", type=Path, help="generate into (and reuse) this folder")
    args = parser.parse_args()
    from aprlib.compare.workers import default_workers
    from aprlib.formats.conversion import convert

    threads = default_workers()
    folder = args.keep or Path(tempfile.mkdtemp(prefix="apr-diff-bench-"))
    cfg = {**QWEN, "num_hidden_layers": args.layers}
    try:
        a_st, b_st = folder / "a" / "model.safetensors", folder / "b" / "model.safetensors"
        (folder / "a").mkdir(parents=True, exist_ok=True)
        if not a_st.exists():
            generate(folder / "a", cfg)
        largest = max(int(np.prod(shape)) * 2 for _, shape in shapes(cfg))
        (folder / "b").mkdir(exist_ok=True)
        shutil.copy(folder / "a" / "config.json", folder / "b")
        if not b_st.exists():
            perturb(a_st, b_st, TARGET)
        files = {"A": {"safetensors": a_st}, "B": {"safetensors": b_st}}
        for side, st in (("A", a_st), ("B", b_st)):
            for fmt in ("apr", "gguf"):
                files[side][fmt] = st.parent / f"model.{fmt}"
                if not files[side][fmt].exists():
                    convert(st, files[side][fmt])
        quantised, convert_rss = {"q8_0": folder / "a" / "q8_0.gguf"}, {}
        if not args.skip_q4k:
            quantised["q4_k"] = folder / "a" / "q4_k.gguf"
        for name, path in quantised.items():
            convert_rss[name] = run_convert(a_st, path, name)
        size = a_st.stat().st_size + b_st.stat().st_size
        print(machine())
        print(
            f"two BF16 models, {size / 2**20:,.0f} MiB in all, {args.layers} layers; "
            f"the diff uses {threads} thread(s), load {os.getloadavg()[0]:.2f}"
        )
        print(
            f"{'A':<12} {'B':<12} {'read 1T':>8} {f'read {threads}T':>8} {'diff':>7} "
            f"{'ratio':>6} {'+start':>7} {'ratio':>6} {'wall/1T':>8} {'RSS MiB':>8} {'imports':>8}"
        )
        timings = {}
        for fa in ("safetensors", "apr", "gguf"):
            for fb in ("safetensors", "apr", "gguf"):
                pair = [*files_of(files["A"][fa]), *files_of(files["B"][fb])]
                one, many = read_floor(pair, threads)
                floor = min(one, many)
                wall, work, rss, report, imports = run_diff(files["A"][fa], files["B"][fb])
                timings[(fa, fb)] = (wall, work)
                print(
                    f"{fa:<12} {fb:<12} {one:>7.3f}s {many:>7.3f}s {work:>6.3f}s "
                    f"{work / floor:>5.2f}x {wall:>6.3f}s {wall / floor:>5.2f}x "
                    f"{wall / one:>7.2f}x {rss / 2**20:>8,.0f} {imports:>7.3f}s"
                )
                assert report["diagnosis"]["class"] == "VALUE_DRIFT", report["diagnosis"]
        print(
            "  ratio: the diff's work (open both, diff) over the read floor (target <= 1.5x);"
            " +start: the command's wall time, interpreter start-up included; wall/1T: that"
            " wall time over one plain read of both files, as `cat A B` reads them (target"
            " <= 2x); imports: the part of the diff's work spent importing its modules"
            " (numpy, the readers, the comparison), counted in the work"
        )
        base_wall, base_work = timings[("safetensors", "gguf")]
        for name, path in quantised.items():
            wall, work, rss, report, _ = run_diff(a_st, path)
            print(
                f"safetensors vs {name} gguf: {work:.3f}s ({wall:.3f}s with start-up) = "
                f"{work / base_work:.2f}x ({wall / base_wall:.2f}x) of the BF16 "
                f"safetensors-vs-GGUF diff, RSS {rss / 2**20:,.0f} MiB (target <= 3x)"
            )
            print(f"  {report['diagnosis']['line'][:160]}")
        limit = 1.5 * largest + 300 * 2**20
        for name, rss in convert_rss.items():
            print(
                f"apr convert --dtype {name}: peak RSS {rss / 2**20:,.0f} MiB (limit 1.5 x "
                f"largest {largest / 2**20:,.0f} MiB + 300 MiB = {limit / 2**20:,.0f} MiB)"
            )
    finally:
        if args.keep is None:
            shutil.rmtree(folder, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
