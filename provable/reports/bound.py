"""Which tests are bound to which falsifier, found by the plugin itself without running one.

``pytest --collect-only`` runs in a subprocess with this module loaded as an extra plugin;
after collection it writes the provable plugin's own binding table (the one a real run
resolves markers into) and every collection error (a marker naming an unknown falsifier is
one) to a JSON file. So ``pv audit`` and ``pv coverage`` agree with what ``pytest`` would
bind, by construction, instead of re-parsing test files.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

OUTPUT_ENV = "PROVABLE_BOUND_OUT"
TIMEOUT_S = 600


class CollectionFailed(Exception):
    """pytest could not even collect (a usage error, a crash); the message says why."""


@dataclass
class BoundTests:
    #: ``contract-id:FALSIFY-ID`` → node ids of the tests bound to it
    bound: dict[str, list[str]] = field(default_factory=dict)
    #: node id or file → the collection error pytest reported
    errors: dict[str, str] = field(default_factory=dict)

    def tests_of(self, contract_id: str, falsifier_id: str) -> list[str]:
        return self.bound.get(f"{contract_id}:{falsifier_id}", [])


# --- the plugin half (runs inside the pytest subprocess) ---------------------------------

_errors: dict[str, str] = {}


def pytest_collectreport(report: Any) -> None:
    if report.failed:
        text = str(report.longrepr) if report.longrepr is not None else "collection failed"
        _errors[report.nodeid or "<session>"] = text.strip().splitlines()[-1][:500] if text else ""


def pytest_collection_finish(session: Any) -> None:
    out = os.environ.get(OUTPUT_ENV)
    if not out:
        return
    plugin = session.config.pluginmanager.get_plugin("provable-session")
    bound: dict[str, list[str]] = {}
    if plugin is not None:
        for qid, run in plugin.runs.items():
            bound[qid] = sorted({n for ids in run.bound.values() for n in ids})
    Path(out).write_text(json.dumps({"bound": bound, "errors": _errors}), encoding="utf-8")


# --- the caller half ---------------------------------------------------------------------


def collect_bound_tests(root: Path, test_paths: Sequence[str] = ()) -> BoundTests:
    """Collect (never run) the tests under ``root`` (its configured testpaths by default)."""
    root = Path(root).resolve()
    with tempfile.TemporaryDirectory(prefix="pv-bound-") as tmp:
        out = Path(tmp) / "bound.json"
        own = str(Path(__file__).resolve().parents[2])  # the folder holding provable/
        env = {
            **os.environ,
            OUTPUT_ENV: str(out),
            # the collector must use this provable, not whichever one is installed
            "PYTHONPATH": os.pathsep.join([own, *filter(None, [os.environ.get("PYTHONPATH")])]),
        }
        cmd = [
            sys.executable,
            "-m",
            "pytest",
            "--collect-only",
            "-q",
            "--no-status-write",
            "-p",
            "provable.reports.bound",
            "-p",
            "no:cacheprovider",
            *test_paths,
        ]
        try:
            proc = subprocess.run(
                cmd, cwd=root, env=env, capture_output=True, text=True, timeout=TIMEOUT_S
            )
        except subprocess.TimeoutExpired:
            raise CollectionFailed(f"pytest --collect-only took over {TIMEOUT_S} s") from None
        if not out.exists():
            tail = (proc.stderr.strip() or proc.stdout.strip()).splitlines()[-3:]
            raise CollectionFailed(
                f"pytest --collect-only in {root} failed (exit {proc.returncode}): "
                + " | ".join(tail)
            )
        data = json.loads(out.read_text(encoding="utf-8"))
    return BoundTests(bound=data["bound"], errors=data["errors"])
