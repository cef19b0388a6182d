"""Falsifiers of evidence-merge-v1: separate runs merge by the rules, in any order.

Each check takes the merge as an argument (``merge(run_roots, out) -> MergeReport``), so
that ``tests/test_merge_catches_defects.py`` can hand it a defective one and watch it fail.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from falsifiers.reproducible import reproducible
from provable.reports.merge import merge_runs

Merge = Callable[[list[Path], Path], Any]
EXAMPLES = reproducible(30)

SYNTH = """\
metadata:
  id: synth-v1
  version: "1.0.0"
  description: "synthetic"
falsification_tests:
  - id: FALSIFY-SYNTH-001
    rule: "cpu only"
    prediction: "p"
  - id: FALSIFY-SYNTH-002
    rule: "both hosts"
    prediction: "p"
    hosts: [cpu, cuda]
changelog:
  - version: "1.0.0"
    date: "2026-11-01"
    change: "created"
"""
FIDS = ("FALSIFY-SYNTH-001", "FALSIFY-SYNTH-002")
HOSTS = {"FALSIFY-SYNTH-001": {"cpu"}, "FALSIFY-SYNTH-002": {"cpu", "cuda"}}


def realistic(spec: dict) -> dict:
    """The plugin's failure replaces every section: a failing record's are from one run."""
    out = {}
    for fid, sections in spec.items():
        failures = [t for o, t in sections.values() if o == "failed"]
        if failures:
            sections = {kind: (o, max(failures)) for kind, (o, _) in sections.items()}
        out[fid] = sections
    return out


#: per falsifier, per host kind: (outcome, instant 0..3); instants collide on purpose
observation = st.tuples(st.sampled_from(["passed", "failed"]), st.integers(0, 3))
run_specs = st.fixed_dictionaries(
    {
        fid: st.dictionaries(st.sampled_from(sorted(HOSTS[fid])), observation, max_size=2)
        for fid in FIDS
    }
).map(realistic)


def write_run(root: Path, spec: dict) -> Path:
    """A run folder as the plugin would leave it (statuses consistent with the evidence)."""
    (root / "contracts").mkdir(parents=True)
    text = SYNTH
    for fid, sections in spec.items():
        if not sections:
            continue
        failed = any(o == "failed" for o, _ in sections.values())
        if failed:
            status = "FALSIFIED"
        else:
            status = "DISCHARGED" if HOSTS[fid] <= set(sections) else "PARTIAL"
        runs = {
            kind: {
                "tests": [{"nodeid": f"t.py::{fid}_{kind}", "outcome": o}],
                **({"failure": {"nodeid": "t", "message": "E no"}} if o == "failed" else {}),
                "host": {"os": "Linux"},
                "commit": "c" * 40,
                "dirty": False,
                "observed_at": f"2026-11-2{t}T00:00:00+00:00",
            }
            for kind, (o, t) in sorted(sections.items())
        }
        record = {
            "schema": "provable-evidence/1",
            "contract": "synth-v1",
            "falsifier": fid,
            "outcome": "failed" if failed else "passed",
            "status": status,
            "runs": runs,
            "passed_on": [] if failed else sorted(sections),
        }
        folder = root / "evidence" / "synth-v1"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"{fid}.json").write_text(json.dumps(record, indent=2) + "\n")
        anchor = f"  - id: {fid}\n"
        text = text.replace(
            anchor, f"{anchor}    status: {status}\n    evidence: evidence/synth-v1/{fid}.json\n"
        )
    (root / "contracts" / "synth-v1.yaml").write_text(text)
    return root


def snapshot(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.parts[len(root.parts)] in ("contracts", "evidence")
    }


def statuses_in(root: Path, name: str = "synth-v1") -> dict[str, str | None]:
    data = yaml.safe_load((root / "contracts" / f"{name}.yaml").read_text())
    return {f["id"]: f.get("status") for f in data["falsification_tests"]}


def expected_status(specs: list[dict], fid: str) -> tuple[str | None, bool]:
    """The rule applied by hand: (merged status, whether a same-instant clash exists)."""
    newest: dict[str, tuple[int, set[str]]] = {}
    for spec in specs:
        for kind, (outcome, t) in spec[fid].items():
            have = newest.get(kind)
            if have is None or t > have[0]:
                newest[kind] = (t, {outcome})
            elif t == have[0]:
                have[1].add(outcome)
    clash = any(len(outcomes) > 1 for _, outcomes in newest.values())
    if not newest:
        return None, clash
    if any("failed" in outcomes for _, outcomes in newest.values()):
        return "FALSIFIED", clash
    reset = max((t for s in specs for o, t in s[fid].values() if o == "failed"), default=-1)
    counted = {k for k, (t, _) in newest.items() if t > reset}  # a failure resets passes
    return ("DISCHARGED" if HOSTS[fid] <= counted else "PARTIAL"), clash


def check_order_independent(merge: Merge = merge_runs, examples: settings = EXAMPLES) -> int:
    checked = []

    @examples
    @given(st.lists(run_specs, min_size=1, max_size=3), st.randoms(use_true_random=False))
    def prop(specs: list[dict], rnd: Any) -> None:
        with tempfile.TemporaryDirectory() as tmp:
            roots = [write_run(Path(tmp) / f"run{i}", s) for i, s in enumerate(specs)]
            merge(roots, Path(tmp) / "a")
            shuffled = list(roots)
            rnd.shuffle(shuffled)
            merge(shuffled, Path(tmp) / "b")
            a, b = snapshot(Path(tmp) / "a"), snapshot(Path(tmp) / "b")
            assert a == b, "the merge depends on the order of the runs"
            merge([Path(tmp) / "a"], Path(tmp) / "a")
            assert snapshot(Path(tmp) / "a") == a, "the merged state is not a fixed point"
            checked.append(len(specs))

    prop()
    return len(checked)


def check_idempotent(merge: Merge = merge_runs, examples: settings = EXAMPLES) -> None:
    @examples
    @given(run_specs)
    def prop(spec: dict) -> None:
        with tempfile.TemporaryDirectory() as tmp:
            root = write_run(Path(tmp) / "run", spec)
            before = snapshot(root)
            merge([root, root], root)
            assert snapshot(root) == before, "merging a run with itself changed it"

    prop()


def check_rules(merge: Merge = merge_runs, examples: settings = EXAMPLES) -> None:
    @examples
    @given(st.lists(run_specs, min_size=2, max_size=3))
    def prop(specs: list[dict]) -> None:
        with tempfile.TemporaryDirectory() as tmp:
            roots = [write_run(Path(tmp) / f"run{i}", s) for i, s in enumerate(specs)]
            report = merge(roots, Path(tmp) / "out")
            merged = statuses_in(Path(tmp) / "out")
            for fid in FIDS:
                status, clash = expected_status(specs, fid)
                assert merged[fid] == status, f"{fid}: merged {merged[fid]}, rule says {status}"
                reported = any(fid in c and "same instant" in c for c in report.conflicts)
                assert reported == clash, f"{fid}: clash {clash}, reported {reported}"

    prop()


PROJECT_CONTRACT = """\
metadata:
  id: gpu-v1
  version: "1.0.0"
falsification_tests:
  - id: FALSIFY-GPU-001
    rule: "holds on both hosts"
    prediction: "p"
    hosts: [cpu, cuda]
"""
PROJECT_TESTS = """\
import pytest

@pytest.mark.falsifies("FALSIFY-GPU-001")
def test_cpu_side():
    pass

@pytest.mark.cuda
@pytest.mark.falsifies("FALSIFY-GPU-001")
def test_gpu_side():
    pass
"""


def _keep(src: Path, dst: Path) -> Path:
    for part in ("contracts", "evidence"):
        if (src / part).exists():
            shutil.copytree(src / part, dst / part)
    return dst


def _reset(project: Path, base: Path) -> None:
    for part in ("contracts", "evidence"):
        shutil.rmtree(project / part, ignore_errors=True)
        if (base / part).exists():
            shutil.copytree(base / part, project / part)


def check_cpu_and_gpu_runs_discharge(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, merge: Merge = merge_runs
) -> dict[str, Any]:
    """The real plugin on a throw-away project: a CPU job, a GPU job, then the merge."""
    (pytester.path / "contracts").mkdir()
    (pytester.path / "contracts" / "gpu-v1.yaml").write_text(PROJECT_CONTRACT)
    pytester.makepyfile(test_gpu=PROJECT_TESTS)
    work = pytester.path.parent / f"{pytester.path.name}-runs"
    base = _keep(pytester.path, work / "base")
    args = ("-p", "no:cacheprovider")
    monkeypatch.setattr("provable.plugin.hooks._cuda_available", False)  # the CPU host
    pytester.runpytest_inprocess(*args).assert_outcomes(passed=1, skipped=1)
    cpu = _keep(pytester.path, work / "cpu")
    _reset(pytester.path, base)
    monkeypatch.setattr("provable.plugin.hooks._cuda_available", True)  # the GPU host
    pytester.runpytest_inprocess(*args, "-m", "cuda").assert_outcomes(passed=1)
    gpu = _keep(pytester.path, work / "gpu")
    alone = {
        name: statuses_in(root, "gpu-v1")["FALSIFY-GPU-001"]
        for name, root in (("cpu", cpu), ("gpu", gpu))
    }
    assert alone == {"cpu": "PARTIAL", "gpu": "PARTIAL"}, f"one run alone: {alone}"
    merge([cpu, gpu], work / "merged")
    merged = statuses_in(work / "merged", "gpu-v1")["FALSIFY-GPU-001"]
    assert merged == "DISCHARGED", f"merged: {merged}"
    record = json.loads((work / "merged/evidence/gpu-v1/FALSIFY-GPU-001.json").read_text())
    assert record["passed_on"] == ["cpu", "cuda"], record["passed_on"]
    return {"alone": alone, "merged": merged}


@pytest.mark.falsifies("FALSIFY-MERGE-001")
def test_merge_does_not_depend_on_run_order(evidence):
    evidence.record(examples=check_order_independent())


@pytest.mark.falsifies("FALSIFY-MERGE-002")
def test_merging_a_run_with_itself_changes_nothing():
    check_idempotent()


@pytest.mark.falsifies("FALSIFY-MERGE-003")
def test_newest_per_host_then_failure_wins_then_passes_combine():
    check_rules()


@pytest.mark.falsifies("FALSIFY-MERGE-004")
def test_cpu_and_gpu_runs_discharge_what_neither_does_alone(pytester, monkeypatch, evidence):
    evidence.record(**check_cpu_and_gpu_runs_discharge(pytester, monkeypatch))
