"""Falsifiers of status-rewrite-v1: rewrites touch only what changed, atomically, once."""

from __future__ import annotations

import difflib
import itertools
import os
import re
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any
from unittest import mock

import pytest
import yaml

from provable.contracts import evidence as ev
from provable.contracts.atomic import write_atomic
from provable.contracts.lifecycle import ContractStatus, FalsifierStatus, Outcome
from provable.contracts.rewrite import rewrite_text
from provable.plugin.update import FalsifierChange, _mutate

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "compat" / "provable-contracts"
EDITED_LINE = re.compile(r"^\s*(- )?(\{)?(status|evidence|version|date|change|changelog)\s*:")


def corpus() -> list[Path]:
    files = sorted((ROOT / "contracts").glob("*.yaml"))
    if SHARED.is_dir():
        files += sorted(p for p in SHARED.rglob("*.yaml") if p.name != "binding.yaml")
    return files


def edit_everything(doc: Any) -> None:
    """Every edit a status rewrite can make: all falsifiers, metadata, a changelog entry."""
    ids = [f["id"] for f in doc.get("falsification_tests") or []]
    statuses = {fid: FalsifierStatus.DISCHARGED for fid in ids}
    evidence = {fid: f"evidence/x/{fid}.json" for fid in ids}
    changes = [
        FalsifierChange(fid, Outcome.PASSED, FalsifierStatus.PROPOSED, FalsifierStatus.DISCHARGED)
        for fid in ids
    ]
    entry = ("9.0.0", {"version": "9.0.0", "date": "2026-11-22", "change": "all discharged"})
    _mutate(doc, statuses, evidence, changes, ContractStatus.DISCHARGED, entry)


def strip_edited(data: Any) -> Any:
    data = dict(data)
    data.pop("changelog", None)
    meta = dict(data.get("metadata") or {})
    meta.pop("status", None)
    meta.pop("version", None)
    data["metadata"] = meta
    tests = []
    for f in data.get("falsification_tests") or []:
        f = dict(f)
        f.pop("status", None)
        f.pop("evidence", None)
        tests.append(f)
    data["falsification_tests"] = tests
    return data


def check_rewrite_preserves(
    rewrite: Callable = rewrite_text, files: list[Path] | None = None
) -> int:
    checked = 0
    for path in files or corpus():
        before = path.read_text(encoding="utf-8")
        after = rewrite(before, edit_everything)
        old, new = before.splitlines(), after.splitlines()
        matcher = difflib.SequenceMatcher(None, old, new, autojunk=False)
        for tag, i1, i2, j1, j2 in matcher.get_opcodes():
            if tag == "equal":
                continue
            for line in old[i1:i2] + new[j1:j2]:
                assert EDITED_LINE.match(line), f"{path.name}: unrelated line changed: {line!r}"
        assert strip_edited(yaml.safe_load(after)) == strip_edited(yaml.safe_load(before)), (
            f"{path.name}: data outside the edited fields changed"
        )
        checked += 1
    return checked


def check_atomic(write: Callable[[Path, str], None], tmp: Path) -> None:
    path = tmp / "c-v1.yaml"
    old = "metadata:\n  version: '1.0.0'\n" * 50
    for point in ("os.fsync", "os.replace", "os.fdopen"):
        path.write_text(old)
        with (
            mock.patch(point, side_effect=OSError(f"injected failure in {point}")),
            pytest.raises(OSError, match="injected"),
        ):
            write(path, "metadata:\n  version: '2.0.0'\n" * 80)
        assert path.read_text() == old, f"{point}: the old file was damaged"
        assert sorted(os.listdir(tmp)) == ["c-v1.yaml"], f"{point}: left {os.listdir(tmp)}"


PROJECT_CONTRACT = """\
# a project contract; this comment must survive
metadata:
  id: proj-v1
  version: "1.0.0"
  description: "p"
falsification_tests:
  - id: FALSIFY-PROJ-001
    rule: "r"
    prediction: "p"
  - id: FALSIFY-PROJ-002
    rule: "r"
    prediction: "p"
    hosts: [cpu, cuda]
"""
PROJECT_TESTS = """\
import pytest

@pytest.mark.falsifies("FALSIFY-PROJ-001")
@pytest.mark.parametrize("n", [1, 2, 3])
def test_one(n, evidence):
    evidence.record(value=n * 0.5, nan=float("nan"))
    assert n > 0

@pytest.mark.falsifies("FALSIFY-PROJ-002")
def test_two():
    assert True
"""


def snapshot(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file()
        and p.name != "history.jsonl"
        and "__pycache__" not in p.parts
        and ".pytest_cache" not in p.parts
    }


def check_idempotent(pytester: pytest.Pytester) -> None:
    pytester.makefile(".yaml", **{"contracts/proj-v1": PROJECT_CONTRACT})
    pytester.makepyfile(test_proj=textwrap.dedent(PROJECT_TESTS))
    first = pytester.runpytest_inprocess("-p", "no:cacheprovider")
    first.assert_outcomes(passed=4)
    after_first = snapshot(pytester.path)
    assert "FALSIFY-PROJ-001: PROPOSED → DISCHARGED" in first.stdout.str()
    second = pytester.runpytest_inprocess("-p", "no:cacheprovider")
    second.assert_outcomes(passed=4)
    changed = [k for k, v in snapshot(pytester.path).items() if after_first.get(k) != v]
    assert changed == [], f"a repeat run rewrote {changed}"


@pytest.mark.falsifies("FALSIFY-REWRITE-001")
def test_rewrite_changes_only_the_edited_fields(evidence):
    evidence.record(contracts_checked=check_rewrite_preserves())


@pytest.mark.falsifies("FALSIFY-REWRITE-002")
def test_interrupted_write_leaves_the_old_file(tmp_path):
    check_atomic(write_atomic, tmp_path)


@pytest.mark.falsifies("FALSIFY-REWRITE-003")
def test_repeat_run_rewrites_nothing(pytester):
    check_idempotent(pytester)


_counter = itertools.count()
_merge_record = ev.merge_record


def forgetful_merge(previous, new, passed_kinds, keep):
    """Injected defect for REWRITE-003: every run stamps a new observation time."""
    record = _merge_record(None, new, passed_kinds, keep)
    for section in record["runs"].values():
        section["observed_at"] = f"run {next(_counter)}"
    return record


# --- issue 9: the write phase as one unit ---------------------------------------------------


class Killed(BaseException):
    """Stands for SIGKILL in-process: nothing after it runs (not even ``except Exception``)."""


def _dies_at(kill_at: int) -> Callable[..., None]:
    """``os.replace`` that dies (``Killed``) at its ``kill_at``-th call."""
    real, count = os.replace, [0]

    def replace(src: Any, dst: Any, *args: Any, **kwargs: Any) -> None:
        count[0] += 1
        if count[0] == kill_at:
            raise Killed
        real(src, dst, *args, **kwargs)

    return replace


def check_kill_leaves_valid_contracts(tmp: Path, commit: Callable | None = None) -> int:
    """Stop the write phase at every ``os.replace`` of a 3-contract session; after the next
    reader's recovery every contract validates strictly and no temp file is left."""
    from provable.cli.main import main
    from provable.plugin import update
    from tests.killwrite import apply_all_passed, make_project

    trials = 0
    for kill_at in range(1, 14):  # 9 evidence + 3 contracts + the journal: 13 renames
        root = tmp / f"k{kill_at}"
        make_project(root, 3)
        replace = _dies_at(kill_at)
        with (
            mock.patch("os.replace", replace),
            mock.patch.object(update, "commit_files", commit or update.commit_files),
            pytest.raises(Killed),
        ):
            apply_all_passed(root)
        assert main(["validate", "--strict", str(root / "contracts")]) == 0, f"killed at {kill_at}"
        temps = [p.name for p in root.rglob(".*.tmp")]
        assert temps == [], f"killed at {kill_at}: {temps} left"
        trials += 1
    return trials


@pytest.mark.falsifies("FALSIFY-REWRITE-004")
def test_a_killed_write_phase_leaves_valid_contracts(tmp_path, evidence, capsys):
    evidence.record(kill_points=check_kill_leaves_valid_contracts(tmp_path))
    capsys.readouterr()
