"""``pv merge``: evidence and statuses from separate runs (a CPU job, a GPU job) combined."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml

from provable.cli.main import main
from provable.contracts.validate import discover, validate_paths
from provable.reports.merge import merge_runs
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
    monkeypatch.setattr("provable.plugin.hooks._cuda_available", False)
    run(pytester)  # the CPU job
    cpu = _copy_run(pytester.path, tmp_path / "cpu")
    for part in ("contracts", "evidence"):  # the GPU job starts from the same checkout
        shutil.rmtree(pytester.path / part, ignore_errors=True)
        if (base / part).exists():
            shutil.copytree(base / part, pytester.path / part)
    monkeypatch.setattr("provable.plugin.hooks._cuda_available", True)  # as on a GPU host
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


def test_contract_layout_differences_are_no_conflict_but_content_is(tmp_path, capsys):
    from falsifiers.test_evidence_merge_v1 import write_run

    cpu = write_run(
        tmp_path / "cpu",
        {"FALSIFY-SYNTH-001": {"cpu": ("passed", 1)}, "FALSIFY-SYNTH-002": {"cpu": ("passed", 1)}},
    )
    gpu = write_run(
        tmp_path / "gpu", {"FALSIFY-SYNTH-001": {}, "FALSIFY-SYNTH-002": {"cuda": ("passed", 2)}}
    )
    assert main(["merge", str(cpu), str(gpu), "--out", str(tmp_path / "out")]) == 0
    assert "conflict" not in capsys.readouterr().out
    path = gpu / "contracts" / "synth-v1.yaml"
    path.write_text(path.read_text().replace('rule: "cpu only"', 'rule: "edited on one side"'))
    assert main(["merge", str(cpu), str(gpu), "--out", str(tmp_path / "out2")]) == 1
    assert "differ beyond statuses" in capsys.readouterr().out
