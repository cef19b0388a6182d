"""SIGKILL the write phase (issue 9): every trial must leave every contract valid, no temp.

A project of N contracts (3 falsifiers each, all FALSIFIED with failing evidence) gets a
session in which every falsifier passes: N x 3 evidence files, N contracts, one journal. A
child process applies it and is SIGKILLed, in half the trials at a random ``os.replace``
(inside the renames), in the other half by the parent after a random delay up to the
length of an unkilled session (anywhere after imports: reading, planning, temps,
renames). Then a fresh ``pv validate --strict`` (which finishes or drops the interrupted
unit) must pass and no ``.*.tmp`` may be left. Baseline measured in the same run: the
unkilled session's time.

    python bench/bench_kill_write.py [--trials 50] [--contracts 150]
"""

from __future__ import annotations

import argparse
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.killwrite import FALSIFIERS, make_project  # noqa: E402


def child(root: Path, kill_at: int | None) -> subprocess.Popen:
    args = [sys.executable, "-m", "tests.killwrite", str(root)]
    if kill_at is not None:
        args.append(str(kill_at))
    proc = subprocess.Popen(args, cwd=REPO, stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
    return proc  # imports are done: from here on it reads, plans and writes


def validate(root: Path) -> tuple[int, str]:
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "provable.cli.main",
            "validate",
            "--strict",
            str(root / "contracts"),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    return proc.returncode, proc.stdout[-2000:] + proc.stderr[-2000:]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=50)
    parser.add_argument("--contracts", type=int, default=150)
    parser.add_argument("--seed", type=int, default=9)
    args = parser.parse_args()
    rng = random.Random(args.seed)
    base = Path(tempfile.mkdtemp(prefix="pv-kill-bench-"))
    renames = args.contracts * (FALSIFIERS + 1) + 1
    try:
        clean = base / "clean"
        make_project(clean, args.contracts)
        proc = child(clean, None)
        start = time.perf_counter()
        assert proc.wait() == 0
        full = time.perf_counter() - start
        rc, out = validate(clean)
        assert rc == 0, out
        print(f"unkilled session of {args.contracts} contracts: {full:.2f} s (baseline)")
        invalid = temps_left = journals_left = killed = rolled = 0
        for trial in range(args.trials):
            root = base / f"t{trial}"
            make_project(root, args.contracts)
            if trial % 2 == 0:
                proc = child(root, rng.randint(1, renames))
                proc.wait()
            else:
                proc = child(root, None)
                time.sleep(rng.uniform(0, full))
                proc.send_signal(signal.SIGKILL)
                proc.wait()
            killed += proc.returncode == -signal.SIGKILL
            journals_left += (root / "contracts" / ".provable-journal.json").exists()
            rc, out = validate(root)
            invalid += rc != 0
            if rc != 0:
                print(f"trial {trial}: INVALID\n{out}")
            left = list(root.rglob(".*.tmp"))
            temps_left += bool(left)
            text = (root / "contracts" / "kill-000-v1.yaml").read_text()
            rolled += "status: DISCHARGED" in text
            shutil.rmtree(root)
        print(
            f"{args.trials} trials ({killed} died by SIGKILL, {journals_left} left a journal "
            f"to roll forward; {rolled} ended with the new statuses, "
            f"{args.trials - rolled} with the old)"
        )
        print(f"  contracts failing pv validate --strict after the kill: {invalid} trials")
        print(f"  trials leaving .*.tmp files: {temps_left}")
        return 0 if invalid == 0 and temps_left == 0 else 1
    finally:
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
