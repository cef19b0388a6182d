"""Benchmark the hostile-input claims at scale (issue 8): many more cases than CI runs.

For each format (APR, GGUF, safetensors, a sharded folder) a fresh child process runs
(1) the structure-aware hypothesis strategies of ``falsifiers/test_hostile_input_v1.py``,
randomised, and (2) random byte mutations (flips, u64 fields set to hostile values, cuts,
insertions) of a real small model file, each case opened, read, verified and converted to
APR; any exception outside the typed family is a failure. The child reports its cases,
outcome classes, slowest case and peak RSS (VmHWM). The baseline, measured in the same
run and the same kind of child: one case on the clean file (time) and the child's peak
RSS on it; the figures are printed with their ratio to it.

    python bench/bench_hostile.py [--cases 2000] [--mutations 3000] [--seconds 120]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import shutil
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FORMATS = ("apr", "gguf", "safetensors", "folder")
HOSTILE_U64 = [0, 1, 2**31, 2**32 - 1, 2**40, 2**63 - 1, 2**64 - 1]


def vmhwm_mb() -> float:
    status = Path("/proc/self/status").read_text()
    return int(re.search(r"VmHWM:\s+(\d+) kB", status).group(1)) / 1024


def mutate(data: bytes, rng: random.Random) -> bytes:
    out = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        kind = rng.randrange(5)
        at = rng.randrange(max(len(out), 1))
        if kind == 0 and out:
            out[at] ^= rng.randint(1, 255)
        elif kind == 1 and len(out) >= 8:
            at = min(at, len(out) - 8)
            struct.pack_into("<Q", out, at, rng.choice(HOSTILE_U64))
        elif kind == 2:
            del out[at:]
        elif kind == 3:
            out[at:at] = os.urandom(rng.randint(1, 64))
        else:
            del out[at : at + rng.randint(1, 64)]
    return bytes(out)


def child(fmt: str, cases: int, mutations: int, seconds: float) -> dict:
    sys.path.insert(0, str(ROOT))
    from hypothesis import HealthCheck, settings

    from falsifiers import test_hostile_input_v1 as hostile

    work = Path(tempfile.mkdtemp(prefix=f"hostile-{fmt}-"))
    suffix = "safetensors" if fmt == "folder" else fmt
    # its own folder: a safetensors model writes config.json beside itself, and a shared
    # temp folder may hold another model's
    clean_dir = Path(tempfile.mkdtemp(prefix=f"hostile-{fmt}-clean-"))
    clean = hostile._small_model(clean_dir / f"model.{suffix}")
    start = time.monotonic()
    try:
        hostile.exercise(clean, work)
        baseline_s = time.monotonic() - start
        baseline_rss = vmhwm_mb()
        for p in work.iterdir():
            hostile._remove(p)
        policy = settings(
            max_examples=cases,
            deadline=None,
            database=None,
            derandomize=False,
            suppress_health_check=list(HealthCheck),
        )
        start = time.monotonic()
        report = hostile.fuzz(fmt, work, cases, policy)
        structured_s = time.monotonic() - start
        rng, outcomes, slowest, done = random.Random(0), {}, 0.0, 0
        original = clean.read_bytes()
        start = time.monotonic()
        while done < mutations and time.monotonic() - start < seconds and fmt != "folder":
            for p in work.iterdir():
                hostile._remove(p)
            path = work / f"m.{fmt}"
            path.write_bytes(mutate(original, rng))
            t0 = time.monotonic()
            outcome = hostile.exercise(path, work)  # raises on anything untyped or slow
            slowest = max(slowest, time.monotonic() - t0)
            outcomes[outcome] = outcomes.get(outcome, 0) + 1
            done += 1
        return {
            "format": fmt,
            "structured_cases": report["cases"],
            "structured_outcomes": report["outcomes"],
            "structured_slowest_s": report["slowest_s"],
            "structured_wall_s": round(structured_s, 1),
            "mutations": done,
            "mutation_outcomes": outcomes,
            "mutation_slowest_s": round(slowest, 3),
            "baseline_case_s": round(baseline_s, 4),
            "baseline_rss_mb": round(baseline_rss, 1),
            "peak_rss_mb": round(vmhwm_mb(), 1),
        }
    finally:
        shutil.rmtree(work, ignore_errors=True)
        shutil.rmtree(clean_dir, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--cases", type=int, default=2000, help="structured cases per format")
    ap.add_argument("--mutations", type=int, default=3000, help="byte mutations per file")
    ap.add_argument("--seconds", type=float, default=120, help="time cap of the mutations")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.cases, args.mutations, args.seconds)))
        return
    rows = []
    for fmt in FORMATS:
        proc = subprocess.run(
            [
                sys.executable,
                __file__,
                "--child",
                fmt,
                "--cases",
                str(args.cases),
                "--mutations",
                str(args.mutations),
                "--seconds",
                str(args.seconds),
            ],
            capture_output=True,
            text=True,
            cwd=ROOT,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
        )
        if proc.returncode != 0:
            print(f"{fmt}: FAILED (exit {proc.returncode})\n{proc.stderr[-3000:]}")
            sys.exit(1)
        rows.append(json.loads(proc.stdout.strip().splitlines()[-1]))
    print(
        f"{'format':<12}{'structured':>11}{'mutations':>10}{'slowest s':>10}{'clean s':>9}"
        f"{'ratio':>7}{'peak MB':>9}{'clean MB':>9}{'ratio':>7}"
    )
    for r in rows:
        slowest = max(r["structured_slowest_s"], r["mutation_slowest_s"])
        print(
            f"{r['format']:<12}{r['structured_cases']:>11}{r['mutations']:>10}{slowest:>10.3f}"
            f"{r['baseline_case_s']:>9.4f}{slowest / max(r['baseline_case_s'], 1e-9):>7.1f}"
            f"{r['peak_rss_mb']:>9.1f}{r['baseline_rss_mb']:>9.1f}"
            f"{r['peak_rss_mb'] / r['baseline_rss_mb']:>7.2f}"
        )
    classes = {}
    for r in rows:
        for k, v in {**r["structured_outcomes"], **r["mutation_outcomes"]}.items():
            classes[k] = classes.get(k, 0) + v
    print("outcome classes:", ", ".join(f"{k} {v}" for k, v in sorted(classes.items())))
    print("zero untyped errors, zero signals, zero cases over 2 s")
    print(json.dumps(rows))


if __name__ == "__main__":
    main()
