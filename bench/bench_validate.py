"""Benchmark `pv validate` (issue 2): 1,000 contracts of 20 falsifiers, and start-up time.

Targets: validate 1,000 contracts in under 3 s; `pv --help` and `pv validate one.yaml` start
in under 0.3 s. Baselines measured in the same run: parsing the same files with PyYAML's C
loader alone, and `python -c pass`.

    python bench/bench_validate.py [--contracts 1000] [--falsifiers 20]
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

import yaml

TEMPLATE_HEAD = """\
# generated contract {i}
metadata:
  id: gen-{i:04d}-v1
  version: "1.{minor}.0"
  status: PARTIAL_ALGORITHM_LEVEL
  description: "generated contract {i} for the validate benchmark"
  depends_on: [{dep}]
  references: ["bench"]

equations:
  eq:
    formula: "y = f(x)"
    domain: "x in R^n"
    invariants: ["holds"]

proof_obligations:
  - type: invariant
    property: "holds"
    formal: "forall x: P(x)"
    applies_to: all

falsification_tests:
"""
FALSIFIER = """\
  - id: FALSIFY-G{i:04d}-{j:03d}
    rule: "claim {j} of contract {i}"
    prediction: "the observation that would refute claim {j}"
    test: "a test that tries to refute it"
    if_fails: "what a failure would mean"
    hosts: [cpu]
    status: {status}
"""
TAIL = """\
enforcement:
  first:
    check: "FALSIFY-G{i:04d}-001"

changelog:
  - {{version: "1.0.0", date: "2026-01-01", change: "created"}}
  - {{version: "1.{minor}.0", date: "2026-01-02", change: "FALSIFY-G{i:04d}-001 -> PARTIAL"}}
"""


def generate(folder: Path, contracts: int, falsifiers: int) -> None:
    for i in range(contracts):
        statuses = ["PARTIAL"] + ["PROPOSED"] * (falsifiers - 1)
        body = TEMPLATE_HEAD.format(i=i, minor=1, dep=f"gen-{i - 1:04d}-v1" if i else "")
        body += "".join(
            FALSIFIER.format(i=i, j=j + 1, status=statuses[j]) for j in range(falsifiers)
        )
        body += TAIL.format(i=i, minor=1)
        (folder / f"gen-{i:04d}-v1.yaml").write_text(body)


def timed(cmd: list[str], repeat: int = 1) -> tuple[float, subprocess.CompletedProcess]:
    times, result = [], None
    for _ in range(repeat):
        start = time.perf_counter()
        result = subprocess.run(cmd, capture_output=True, text=True)
        times.append(time.perf_counter() - start)
    return statistics.median(times), result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--contracts", type=int, default=1000)
    parser.add_argument("--falsifiers", type=int, default=20)
    args = parser.parse_args()
    pv = shutil.which("pv") or str(Path(sys.executable).parent / "pv")
    folder = Path(tempfile.mkdtemp(prefix="pv-bench-"))
    try:
        generate(folder, args.contracts, args.falsifiers)
        files = sorted(folder.glob("*.yaml"))

        start = time.perf_counter()
        for f in files:
            yaml.load(f.read_bytes(), Loader=yaml.CSafeLoader)
        parse_s = time.perf_counter() - start

        validate_s, result = timed([pv, "validate", str(folder)])
        summary = result.stdout.strip().splitlines()[-2:]
        assert result.returncode == 0, result.stdout[-2000:]

        python_s, _ = timed([sys.executable, "-c", "pass"], repeat=7)
        help_s, _ = timed([pv, "--help"], repeat=7)
        one_s, _ = timed([pv, "validate", str(files[0])], repeat=7)
    finally:
        shutil.rmtree(folder, ignore_errors=True)

    n = args.contracts
    print(
        f"validate {n} contracts x {args.falsifiers} falsifiers: {validate_s:.2f} s "
        f"({n / validate_s:,.0f} contracts/s; target < 3 s)  -> {' / '.join(summary)}"
    )
    print(
        f"  baseline, C YAML parse only (in-process): {parse_s:.2f} s; "
        f"ratio validate/parse = {validate_s / parse_s:.1f}x"
    )
    print(
        f"start-up: pv --help {help_s * 1000:.0f} ms, pv validate one file {one_s * 1000:.0f} ms "
        f"(target < 300 ms); baseline python -c pass {python_s * 1000:.0f} ms "
        f"(ratios {help_s / python_s:.1f}x, {one_s / python_s:.1f}x)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
