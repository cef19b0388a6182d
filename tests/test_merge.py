"""``pv merge``: evidence and statuses from separate runs (a CPU job, a GPU job) combined."""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from provable.cli import main
from provable.merge import merge_runs
from provable.validate import discover, validate_paths
from tests.test_plugin import CONTRACT, TESTS, run


def _snapshot(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.parts[len(root.parts)] in ("contracts", "evidence")
    }


def _copy_run(src: Path, dst: Path) -> Path:
    for part in ("contracts", "evidence"):
        if (src / part).exists():
            shutil.copytree(src / part, dst / part)
    return dst


# --- the real plugin: a CPU job and a GPU job on different machines --------------------------


@pytest.fixture
def two_jobs(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    """Two checkouts of one project: the CPU job runs everything, the GPU job `-m cuda`."""
    (pytester.path / "contracts").mkdir()
    (pytester.path / "contracts" / "alpha-v1.yaml").write_text(CONTRACT)
    pytester.makepyfile(test_alpha=TESTS)
    base = _copy_run(pytester.path, tmp_path / "base")
    # a CPU host: no CUDA. (Asking torch inside pytester's in-process run would import it
    # there; pytester then drops it from sys.modules, and a later import of torch crashes.)
    monkeypatch.setattr("provable.plugin._cuda_available", False)
    run(pytester)  # the CPU job
    cpu = _copy_run(pytester.path, tmp_path / "cpu")
    for part in ("contracts", "evidence"):  # the GPU job starts from the same checkout
        shutil.rmtree(pytester.path / part, ignore_errors=True)
        if (base / part).exists():
            shutil.copytree(base / part, pytester.path / part)
    monkeypatch.setattr("provable.plugin._cuda_available", True)  # as on a GPU host
    run(pytester, "-m", "cuda").assert_outcomes(passed=1)
    gpu = _copy_run(pytester.path, tmp_path / "gpu")
    return cpu, gpu


def _status(root: Path, fid: str) -> str | None:
    data = yaml.safe_load((root / "contracts" / "alpha-v1.yaml").read_text())
    return next(f.get("status") for f in data["falsification_tests"] if f["id"] == fid)


def test_cpu_and_gpu_runs_together_discharge_what_neither_does_alone(two_jobs, tmp_path):
    cpu, gpu = two_jobs
    assert _status(cpu, "FALSIFY-ALPHA-003") == "PARTIAL"
    assert _status(gpu, "FALSIFY-ALPHA-003") == "PARTIAL"
    out = tmp_path / "merged"
    report = merge_runs([cpu, gpu], out)
    assert report.conflicts == []
    assert _status(out, "FALSIFY-ALPHA-003") == "DISCHARGED"
    record = json.loads((out / "evidence/alpha-v1/FALSIFY-ALPHA-003.json").read_text())
    assert record["passed_on"] == ["cpu", "cuda"] and set(record["runs"]) == {"cpu", "cuda"}
    # the CPU job's other outcomes survive: a pass stays, the skip stays PROPOSED
    assert _status(out, "FALSIFY-ALPHA-001") == "DISCHARGED"
    assert _status(out, "FALSIFY-ALPHA-004") is None
    assert validate_paths(discover([str(out / "contracts")]), strict=False).errors == 0
    # any order, same bytes; merging the result with itself or an input changes nothing
    other = tmp_path / "merged2"
    merge_runs([gpu, cpu], other)
    assert _snapshot(out) == _snapshot(other)
    before = _snapshot(out)
    assert merge_runs([out, out], out).written == []
    assert merge_runs([out, cpu, gpu], out).written == []
    assert _snapshot(out) == before


def test_a_failure_on_one_host_wins_over_a_pass_on_the_other(two_jobs, tmp_path):
    cpu, gpu = two_jobs
    # the CPU job saw FALSIFY-ALPHA-003 fail instead
    path = cpu / "evidence/alpha-v1/FALSIFY-ALPHA-003.json"
    record = json.loads(path.read_text())
    record["runs"]["cpu"]["tests"][0]["outcome"] = "failed"
    record["runs"]["cpu"]["failure"] = {"nodeid": "x", "message": "E   refuted"}
    record.update(outcome="failed", status="FALSIFIED", passed_on=[])
    path.write_text(json.dumps(record))
    out = tmp_path / "merged"
    merge_runs([gpu, cpu], out)
    assert _status(out, "FALSIFY-ALPHA-003") == "FALSIFIED"
    data = yaml.safe_load((out / "contracts/alpha-v1.yaml").read_text())
    assert data["metadata"]["status"] == "FALSIFIED"
    assert "merged runs" in data["changelog"][-1]["change"]


def test_cli_merge_reports_and_exits(two_jobs, tmp_path, capsys):
    cpu, gpu = two_jobs
    out = tmp_path / "merged"
    assert main(["merge", str(cpu), str(gpu), "--out", str(out), "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["falsifiers"]["alpha-v1:FALSIFY-ALPHA-003"]["merged"] == "DISCHARGED"
    assert main(["merge", str(tmp_path / "nope"), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "nope" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


# --- properties over synthetic runs ---------------------------------------------------------

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


def _realistic(spec: dict) -> dict:
    """The plugin's failure replaces every section: a failing record's are from one run."""
    out = {}
    for fid, sections in spec.items():
        failures = [t for o, t in sections.values() if o == "failed"]
        if failures:
            sections = {kind: (o, max(failures)) for kind, (o, _) in sections.items()}
        out[fid] = sections
    return out


observation = st.tuples(st.sampled_from(["passed", "failed"]), st.integers(0, 3))
run_strategy = st.fixed_dictionaries(
    {
        fid: st.dictionaries(st.sampled_from(sorted(HOSTS[fid])), observation, max_size=2)
        for fid in FIDS
    }
).map(_realistic)


def _write_run(root: Path, spec: dict) -> Path:
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


def _merged_statuses(out: Path) -> dict[str, str | None]:
    data = yaml.safe_load((out / "contracts" / "synth-v1.yaml").read_text())
    return {f["id"]: f.get("status") for f in data["falsification_tests"]}


PROPERTY = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@PROPERTY
@given(st.lists(run_strategy, min_size=1, max_size=3), st.randoms(use_true_random=False))
def test_merge_is_deterministic_in_any_order(specs, rnd):
    with tempfile.TemporaryDirectory() as tmp:
        roots = [_write_run(Path(tmp) / f"run{i}", s) for i, s in enumerate(specs)]
        merge_runs(roots, Path(tmp) / "a")
        shuffled = list(roots)
        rnd.shuffle(shuffled)
        merge_runs(shuffled, Path(tmp) / "b")
        assert _snapshot(Path(tmp) / "a") == _snapshot(Path(tmp) / "b")
        # and the merged state is a fixed point
        assert merge_runs([Path(tmp) / "a"], Path(tmp) / "a").written == []


@PROPERTY
@given(run_strategy)
def test_a_run_merged_with_itself_is_unchanged(spec):
    with tempfile.TemporaryDirectory() as tmp:
        root = _write_run(Path(tmp) / "run", spec)
        before = _snapshot(root)
        report = merge_runs([root, root], root)
        assert report.written == [] and report.conflicts == []
        assert _snapshot(root) == before


@PROPERTY
@given(st.lists(run_strategy, min_size=2, max_size=3))
def test_rules_newest_per_host_then_failure_wins_then_passes_combine(specs):
    with tempfile.TemporaryDirectory() as tmp:
        roots = [_write_run(Path(tmp) / f"run{i}", s) for i, s in enumerate(specs)]
        report = merge_runs(roots, Path(tmp) / "out")
        merged = _merged_statuses(Path(tmp) / "out")
        for fid in FIDS:
            newest: dict[str, set[tuple[str, int]]] = {}
            for spec in specs:
                for kind, (outcome, t) in spec[fid].items():
                    have = newest.get(kind)
                    if have is None or t > next(iter(have))[1]:
                        newest[kind] = {(outcome, t)}
                    elif t == next(iter(have))[1]:
                        newest[kind].add((outcome, t))
            clash = any(len({o for o, _ in obs}) > 1 for obs in newest.values())
            assert clash == any(fid in c and "same instant" in c for c in report.conflicts)
            every_failure = [t for sp in specs for o, t in sp[fid].values() if o == "failed"]
            reset = max(every_failure, default=-1)
            counted = {k for k, obs in newest.items() if next(iter(obs))[1] > reset}
            if not newest:
                assert merged[fid] is None
            elif any(o == "failed" for obs in newest.values() for o, _ in obs):
                assert merged[fid] == "FALSIFIED"
            elif HOSTS[fid] <= counted:  # a failure resets the passes before it
                assert merged[fid] == "DISCHARGED"
            else:
                assert merged[fid] == "PARTIAL"
