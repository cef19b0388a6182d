"""A write phase to kill: used by tests/test_write_unit.py and bench/bench_kill_write.py.

``make_project(root, n)`` writes n contracts of 3 falsifiers each, every one FALSIFIED with
failing evidence; ``python -m tests.killwrite ROOT [KILL_AT]`` then applies a session in
which every falsifier passes, and with KILL_AT sends itself SIGKILL at that ``os.replace``.
"""

from __future__ import annotations

import json
import os
import signal
import sys
from pathlib import Path

FALSIFIERS = 3


def make_project(root: Path, n: int) -> None:
    (root / "contracts").mkdir(parents=True)
    (root / "pyproject.toml").write_text("[project]\nname = 'k'\n")
    for i in range(n):
        cid = f"kill-{i:03d}-v1"
        items = ""
        for j in range(FALSIFIERS):
            fid = f"FALSIFY-K{i:03d}-{j:03d}"
            rel = f"evidence/{cid}/{fid}.json"
            items += (
                f"  - id: {fid}\n    rule: r\n    prediction: p\n"
                f"    status: FALSIFIED\n    evidence: {rel}\n"
            )
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            record = {
                "schema": "provable-evidence/1",
                "contract": cid,
                "falsifier": fid,
                "outcome": "failed",
                "status": "FALSIFIED",
                "runs": {"cpu": {"tests": [{"nodeid": f"t.py::t{j}", "outcome": "failed"}]}},
                "passed_on": [],
            }
            (root / rel).write_text(json.dumps(record, indent=2) + "\n")
        (root / "contracts" / f"{cid}.yaml").write_text(
            f"metadata:\n  id: {cid}\n  version: '1.0.0'\n  status: FALSIFIED\n"
            f"  description: d\nfalsification_tests:\n{items}"
        )


def apply_all_passed(root: Path) -> None:
    from provable.contracts.registry import Registry
    from provable.plugin.update import apply_session

    try:
        from provable.plugin.session import FalsifierRun, SessionScope, TestResult
    except ImportError:  # the code before issue 9, to compare against
        from provable.plugin.hooks import FalsifierRun, TestResult  # type: ignore[no-redef]

        SessionScope = None  # type: ignore[assignment,misc]

    registry = Registry.load(root / "contracts")
    runs = {}
    for cid, contract in registry.contracts.items():
        for j, f in enumerate(contract.falsifiers):
            run = FalsifierRun(f"{cid}:{f.id}")
            run.bound["cpu"].add(f"t.py::t{j}")
            run.results[f"t.py::t{j}"] = TestResult("passed", 0.001, {"x": 0.5}, kind="cpu")
            runs[run.qid] = run
    if SessionScope is None:
        apply_session(registry, runs, None, interrupted=False, write=True)
        return
    scope = SessionScope(root, everything=True)
    apply_session(registry, runs, None, interrupted=False, write=True, scope=scope)


def main() -> None:
    root = Path(sys.argv[1])
    if len(sys.argv) > 2:
        kill_at = int(sys.argv[2])
        real = os.replace
        count = [0]

        def replace(src, dst, *args, **kwargs):  # type: ignore[no-untyped-def]
            count[0] += 1
            if count[0] == kill_at:
                os.kill(os.getpid(), signal.SIGKILL)
            return real(src, dst, *args, **kwargs)

        os.replace = replace  # type: ignore[assignment]
    import provable.plugin.update  # noqa: F401  (imports done: what follows is the write phase)

    print("ready", flush=True)
    apply_all_passed(root)


if __name__ == "__main__":
    main()
