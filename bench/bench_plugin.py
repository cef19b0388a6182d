"""Benchmark the pytest plugin (issue 3): overhead over plain pytest, and the rewrite time.

A generated project: 50 contracts x 10 falsifiers, 2,000 trivial tests (4 per falsifier).
Targets: the plugin's overhead over plain pytest (`-p no:provable`) on the same suite under
10 %; the status rewrite of all 50 contracts under 1 s.

    python bench/bench_plugin.py [--repeat 3]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CONTRACTS, FALSIFIERS, TESTS_PER = 50, 10, 4


def generate(root: Path) -> None:
    (root / "contracts").mkdir()
    (root / "pytest.ini").write_text("[pytest]\nmarkers =\n    falsifies: bound\n    cuda: gpu\n")
    for c in range(CONTRACTS):
        items = "".join(
            f'  - id: FALSIFY-B{c:02d}-{f:03d}\n    rule: "claim {f}"\n'
            f'    prediction: "holds"\n    hosts: [cpu]\n'
            for f in range(FALSIFIERS)
        )
        (root / "contracts" / f"bench-{c:02d}-v1.yaml").write_text(
            f'# bench contract {c}\nmetadata:\n  id: bench-{c:02d}-v1\n  version: "1.0.0"\n'
            f'  description: "bench"\n\nfalsification_tests:\n{items}'
        )
    for c in range(CONTRACTS):
        tests = "".join(
            f"@pytest.mark.falsifies('FALSIFY-B{c:02d}-{f:03d}')\n"
            f"def test_{f}_{t}():\n    assert {t} >= 0\n\n"
            for f in range(FALSIFIERS)
            for t in range(TESTS_PER)
        )
        (root / f"test_bench_{c:02d}.py").write_text("import pytest\n\n" + tests)


def run(root: Path, *extra: str) -> float:
    """Wall time of one pytest process on the generated suite."""
    cmd = [
        sys.executable,
        "-m",
        "pytest",
        "-q",
        "-p",
        "no:cacheprovider",
        "-p",
        "no:xdist",
        "-p",
        "no:hypothesispytest",
        *extra,
    ]
    start = time.perf_counter()
    result = subprocess.run(cmd, cwd=root, capture_output=True, text=True)
    elapsed = time.perf_counter() - start
    if result.returncode != 0:
        raise SystemExit(f"pytest failed:\n{result.stdout[-3000:]}{result.stderr[-2000:]}")
    return elapsed


def rewrite_time(root: Path) -> float:
    """Time apply_session alone: every falsifier of all 50 contracts PROPOSED -> DISCHARGED."""
    from provable.contracts.registry import Registry
    from provable.plugin.hooks import FalsifierRun, TestResult
    from provable.plugin.update import apply_session

    registry = Registry.load(root / "contracts")
    runs = {}
    for cid, contract in registry.contracts.items():
        for f in contract.falsifiers:
            run = FalsifierRun(f"{cid}:{f.id}")
            for t in range(TESTS_PER):
                nodeid = f"test_x.py::{f.id}_{t}"
                run.bound["cpu"].add(nodeid)
                run.results[nodeid] = TestResult("passed", 0.001, {"x": t}, kind="cpu")
            runs[run.qid] = run
    start = time.perf_counter()
    outcome = apply_session(registry, runs, None, interrupted=False, write=True)
    elapsed = time.perf_counter() - start
    assert all(c.after == "DISCHARGED" for c in outcome.contracts), outcome.contracts[:1]
    return elapsed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=7)
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="pv-plugin-bench-"))
    rewrite_root = Path(tempfile.mkdtemp(prefix="pv-rewrite-bench-"))
    try:
        generate(root)
        generate(rewrite_root)
        first = run(root)  # writes every contract and 500 evidence files
        plain_times, plugin_times = [], []
        for _ in range(args.repeat):  # interleaved, so drift in machine load hits both
            plain_times.append(run(root, "-p", "no:provable"))
            plugin_times.append(run(root))
        plain, plugin = statistics.median(plain_times), statistics.median(plugin_times)
        best_plain, best_plugin = min(plain_times), min(plugin_times)
        rewrite = rewrite_time(rewrite_root)
    finally:
        shutil.rmtree(root, ignore_errors=True)
        shutil.rmtree(rewrite_root, ignore_errors=True)
    n_tests = CONTRACTS * FALSIFIERS * TESTS_PER
    print(
        f"{n_tests} tests, {CONTRACTS * FALSIFIERS} falsifiers, {CONTRACTS} contracts "
        f"(median of {args.repeat} interleaved runs)"
    )
    print(f"  plain pytest (-p no:provable): {plain:.2f} s")
    print(
        f"  with provable (repeat run):    {plugin:.2f} s  -> overhead "
        f"{(plugin / plain - 1) * 100:+.1f} % (target < 10 %)"
    )
    print(
        f"  best of {args.repeat}: {best_plain:.2f} s vs {best_plugin:.2f} s -> overhead "
        f"{(best_plugin / best_plain - 1) * 100:+.1f} %"
    )
    print(f"  with provable (first run, writes 50 contracts + 500 evidence files): {first:.2f} s")
    print(
        f"status rewrite of {CONTRACTS} contracts (apply_session): {rewrite:.2f} s (target < 1 s)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
