"""What one pytest session observed: the data the plugin gathers and the planner reads.

Kept apart from the plugin so that the planner (``provable.plugin.plan``) and the writer import
plain data types, not pytest hooks.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class TestResult:
    __test__ = False  # not a pytest test class

    #: "pending", then a ``provable.contracts.lifecycle.TestVerdict`` value: passed, failed
    #: (refuted),
    #: not_checked, flaky, not_written, skipped
    outcome: str = "pending"
    duration: float = 0.0
    recorded: dict[str, Any] | None = None
    message: str | None = None
    example: str | None = None
    kind: str = "cpu"  # the host kind of its binding: cpu, or cuda for @pytest.mark.cuda
    #: what went wrong when the test could not check its claim, or its failure did not
    #: reproduce: {type, message, when, frame} (bounded; uncommitted history only)
    error: dict[str, Any] | None = None
    #: a failed attempt another plugin re-ran (pytest-rerunfailures): a later pass is flaky
    observed_failure: str | None = None
    #: a runtime ``pytest.xfail()``: refuted, and pytest must not exit 0 over it
    hidden_xfail: bool = False


@dataclass
class FalsifierRun:
    """What one session observed of one falsifier (aggregated over its tests)."""

    qid: str
    bound: dict[str, set[str]] = field(default_factory=lambda: defaultdict(set))
    results: dict[str, TestResult] = field(default_factory=dict)


def test_file(nodeid: str) -> str:
    """``dir/test_x.py::test_f[3]`` → ``dir/test_x.py``."""
    return nodeid.split("::", 1)[0]


@dataclass(frozen=True)
class SessionScope:
    """Which test files this session saw whole.

    A test a previous run bound to a falsifier may be absent now because this session did
    not look at its file (``pytest tests/test_a.py``, a node id, ``--ignore``) or because it
    was renamed or deleted. Only in the second case may a run promote without it.
    """

    root: Path
    complete_files: frozenset[str] = frozenset()
    narrowed_files: frozenset[str] = frozenset()  # named with ``::``: some tests not collected
    everything: bool = False  # no restriction: every absent test is really gone
    #: falsifier ID → test files this session did not collect whose source binds it
    #: (``pytest test_a.py`` on a first run cannot otherwise know that test_b.py binds it too)
    uncollected_bindings: Mapping[str, frozenset[str]] = field(default_factory=dict)

    def narrowed(self, nodeid: str) -> bool:
        """True when ``nodeid``'s file was narrowed to some of its tests (a node id)."""
        return test_file(nodeid) in self.narrowed_files

    def unseen(self, nodeid: str) -> bool:
        """True when ``nodeid`` may still exist but this session could not have seen it."""
        if self.everything:
            return False
        name = test_file(nodeid)
        if name in self.complete_files and name not in self.narrowed_files:
            return False
        return (self.root / name).is_file()
