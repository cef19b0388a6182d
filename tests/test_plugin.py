"""The pytest plugin, exercised on throw-away projects with pytester."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml

from provable.contracts.validate import discover, validate_paths

CONTRACT = """\
# alpha: a comment that must survive every rewrite
metadata:
  id: alpha-v1
  version: "1.0.0"   # inline comment
  description: 'single-quoted stays single-quoted'

# the falsifiers
falsification_tests:
  - id: FALSIFY-ALPHA-001
    rule: "passes"
    prediction: "p"   # trailing comment

  - id: FALSIFY-ALPHA-002
    rule: "fails when FAIL exists"
    prediction: "p"

  - id: FALSIFY-ALPHA-003
    rule: "gpu"
    prediction: "p"
    hosts: [cpu, cuda]

  - id: FALSIFY-ALPHA-004
    rule: "skips"
    prediction: "p"

  - id: FALSIFY-ALPHA-005
    rule: "nobody tests this"
    prediction: "p"
"""

TESTS = """\
import os
import pytest

@pytest.mark.falsifies("FALSIFY-ALPHA-001")
@pytest.mark.parametrize("x", [1, 2])
def test_passes(x, evidence):
    evidence.record(max_abs_diff=0.25 * x, tolerance=1.0, odd=float("nan"))
    assert x < 3

@pytest.mark.falsifies("FALSIFY-ALPHA-002")
def test_maybe_fails():
    assert not os.path.exists("FAIL"), "the claim is refuted"

@pytest.mark.falsifies("FALSIFY-ALPHA-003")
def test_cpu_side():
    assert True

@pytest.mark.cuda
@pytest.mark.falsifies("FALSIFY-ALPHA-003")
def test_gpu_side():
    assert True

@pytest.mark.falsifies("FALSIFY-ALPHA-004")
def test_skips():
    pytest.skip("not today")

def test_plain():
    assert True
"""


@pytest.fixture
def project(pytester: pytest.Pytester) -> pytest.Pytester:
    (pytester.path / "contracts").mkdir()
    (pytester.path / "contracts" / "alpha-v1.yaml").write_text(CONTRACT)
    pytester.makepyfile(test_alpha=TESTS)
    return pytester


def contract(pytester: pytest.Pytester, name: str = "alpha-v1") -> dict:
    return yaml.safe_load((pytester.path / "contracts" / f"{name}.yaml").read_text())


def statuses(pytester: pytest.Pytester, name: str = "alpha-v1") -> dict[str, str | None]:
    return {f["id"]: f.get("status") for f in contract(pytester, name)["falsification_tests"]}


def run(pytester: pytest.Pytester, *args: str) -> pytest.RunResult:
    return pytester.runpytest_inprocess("-p", "no:cacheprovider", *args)


def test_pass_fail_skip_and_cuda_gating(project):
    (project.path / "FAIL").write_text("")
    result = run(project, "-rs")
    result.assert_outcomes(passed=4, failed=1, skipped=2)
    assert statuses(project) == {
        "FALSIFY-ALPHA-001": "DISCHARGED",
        "FALSIFY-ALPHA-002": "FALSIFIED",
        "FALSIFY-ALPHA-003": "PARTIAL",  # cpu passed, cuda skipped: not discharged
        "FALSIFY-ALPHA-004": None,  # a skip never promotes
        "FALSIFY-ALPHA-005": None,  # unbound
    }
    meta = contract(project)["metadata"]
    assert meta["status"] == "FALSIFIED" and meta["version"] == "1.1.0"
    out = result.stdout.str()
    result.stdout.fnmatch_lines(["SKIPPED*test_alpha.py:18: no CUDA device"])
    assert "unbound (stay PROPOSED, no test carries them): alpha-v1:FALSIFY-ALPHA-005" in out
    # the rewritten contract still validates, and its evidence agrees with it
    report = validate_paths(discover([str(project.path / "contracts")]), strict=True)
    assert report.errors == 0, report.render_text()


def test_evidence_files(project):
    (project.path / "FAIL").write_text("")
    run(project)
    folder = project.path / "evidence" / "alpha-v1"
    passed = json.loads((folder / "FALSIFY-ALPHA-001.json").read_text())
    assert passed["outcome"] == "passed" and passed["passed_on"] == ["cpu"]
    cpu = passed["runs"]["cpu"]
    assert [t["outcome"] for t in cpu["tests"]] == ["passed", "passed"]
    recorded = cpu["recorded"]["test_alpha.py::test_passes[2]"]
    assert recorded == {"max_abs_diff": 0.5, "tolerance": 1.0, "odd": "nan"}
    assert {"python", "os", "machine"} <= set(cpu["host"])
    assert "commit" in cpu and "dirty" in cpu
    failed = json.loads((folder / "FALSIFY-ALPHA-002.json").read_text())
    assert failed["outcome"] == "failed"
    assert "the claim is refuted" in failed["runs"]["cpu"]["failure"]["message"]
    history = (folder / "history.jsonl").read_text().splitlines()
    assert len(history) == 4  # one line per falsifier that had tests, this run
    assert all("duration_s" in t for line in history for t in json.loads(line)["tests"].values())
    assert not (folder / "FALSIFY-ALPHA-004.json").exists()  # skipped: no evidence


def test_regression_is_listed_first_in_red(project):
    run(project)
    assert statuses(project)["FALSIFY-ALPHA-002"] == "DISCHARGED"
    (project.path / "FAIL").write_text("")
    result = run(project)
    lines = result.stdout.lines
    start = next(i for i, line in enumerate(lines) if "contract status" in line)
    assert lines[start + 1].startswith("REGRESSION alpha-v1 1.1.0 → 1.2.0")
    assert "FALSIFY-ALPHA-002: DISCHARGED → FALSIFIED" in lines[start + 2]
    log = contract(project)["changelog"]
    assert [e["version"] for e in log] == ["1.1.0", "1.2.0"]
    assert "FALSIFY-ALPHA-002 DISCHARGED -> FALSIFIED" in log[-1]["change"]


def test_comments_and_quoting_survive_byte_for_byte(project):
    run(project)
    after = (project.path / "contracts" / "alpha-v1.yaml").read_text().splitlines()
    before = CONTRACT.splitlines()
    kept = [line for line in after if "status:" not in line and "evidence:" not in line]
    kept = kept[: kept.index("changelog:")] if "changelog:" in kept else kept
    assert [line for line in before if "version:" not in line] == [
        line for line in kept if "version:" not in line
    ]
    assert '  version: "1.1.0"   # inline comment' in after


def test_selection_by_contract_and_by_falsifier(project):
    other = CONTRACT.replace("alpha", "beta").replace("ALPHA", "BETA")
    (project.path / "contracts" / "beta-v1.yaml").write_text(other)
    result = run(project, "--falsifier", "FALSIFY-ALPHA-001")
    result.assert_outcomes(passed=2)
    assert statuses(project)["FALSIFY-ALPHA-001"] == "DISCHARGED"
    assert statuses(project)["FALSIFY-ALPHA-003"] is None  # not selected: kept
    result = run(project, "--contract", "alpha-v1")
    result.assert_outcomes(passed=4, skipped=2)  # test_plain is not bound: not run
    assert contract(project, "beta-v1") == yaml.safe_load(other)


def test_unknown_contract_or_id_is_a_usage_error(project):
    result = run(project, "--contract", "alpha-v2")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*no such contract*Did you mean 'alpha-v1'?*Known: alpha-v1*"])
    result = run(project, "--falsifier", "FALSIFY-ALPHA-099")
    assert result.ret == pytest.ExitCode.USAGE_ERROR


@pytest.mark.parametrize(
    ("marker", "message"),
    [
        ('@pytest.mark.falsifies("FALSIFY-NOPE-001")', "declared by no contract"),
        ('@pytest.mark.falsifies("FALSIFY-SHARED-001")', "bind it qualified, one of"),
        ('@pytest.mark.xfail\n@pytest.mark.falsifies("FALSIFY-ALPHA-001")', "xfail"),
        ("@pytest.mark.falsifies()", "at least one"),
    ],
)
def test_bad_bindings_are_collection_errors(project, marker, message):
    shared = "falsification_tests:\n  - {id: FALSIFY-SHARED-001, rule: r, prediction: p}\n"
    for name in ("one-v1", "two-v1"):
        (project.path / "contracts" / f"{name}.yaml").write_text(
            f"metadata: {{version: '1.0.0'}}\n{shared}"
        )
    project.makepyfile(test_bad=f"import pytest\n\n{marker}\ndef test_bad():\n    pass\n")
    before = (project.path / "contracts" / "alpha-v1.yaml").read_text()
    result = run(project)
    assert result.ret == pytest.ExitCode.INTERRUPTED
    result.stdout.fnmatch_lines([f"*test_bad.py:*test_bad*{message}*"])
    assert "1 error" in result.stdout.str()
    assert (project.path / "contracts" / "alpha-v1.yaml").read_text() == before


def test_qualified_binding_resolves_a_shared_id(project):
    shared = "falsification_tests:\n  - {id: FALSIFY-SHARED-001, rule: r, prediction: p}\n"
    for name in ("one-v1", "two-v1"):
        (project.path / "contracts" / f"{name}.yaml").write_text(
            f"metadata: {{version: '1.0.0'}}\n{shared}"
        )
    project.makepyfile(
        test_q=textwrap.dedent("""\
        import pytest

        @pytest.mark.falsifies("two-v1:FALSIFY-SHARED-001")
        def test_q():
            pass
        """)
    )
    run(project, "test_q.py").assert_outcomes(passed=1)
    assert statuses(project, "two-v1") == {"FALSIFY-SHARED-001": "DISCHARGED"}
    assert statuses(project, "one-v1") == {"FALSIFY-SHARED-001": None}


def test_no_status_write_touches_nothing(project):
    (project.path / "FAIL").write_text("")
    before = sorted(p.name for p in project.path.rglob("*"))
    text = (project.path / "contracts" / "alpha-v1.yaml").read_text()
    result = run(project, "--no-status-write")
    assert "this is what would change" in result.stdout.str()
    assert "FALSIFY-ALPHA-002: PROPOSED → FALSIFIED" in result.stdout.str()
    assert (project.path / "contracts" / "alpha-v1.yaml").read_text() == text
    assert not (project.path / "evidence").exists()
    assert sorted(p.name for p in project.path.rglob("*")) == before


def test_keyboard_interrupt_leaves_contracts_intact(project):
    project.makepyfile(
        test_zz_interrupt=textwrap.dedent("""\
        import pytest

        @pytest.mark.falsifies("FALSIFY-ALPHA-005")
        def test_interrupt():
            raise KeyboardInterrupt
        """)
    )
    text = (project.path / "contracts" / "alpha-v1.yaml").read_text()
    result = project.runpytest_subprocess("-p", "no:cacheprovider")
    assert result.ret == pytest.ExitCode.INTERRUPTED
    assert "run interrupted: no contract or evidence file was written" in result.stdout.str()
    assert (project.path / "contracts" / "alpha-v1.yaml").read_text() == text
    report = validate_paths(discover([str(project.path / "contracts")]))
    assert report.errors == 0


def test_a_cuda_run_discharges_what_the_cpu_run_left_partial(project, monkeypatch):
    run(project)
    assert statuses(project)["FALSIFY-ALPHA-003"] == "PARTIAL"
    monkeypatch.setattr("provable.plugin.hooks._cuda_available", True)  # as on a GPU host
    run(project, "-m", "cuda").assert_outcomes(passed=1)
    assert statuses(project)["FALSIFY-ALPHA-003"] == "DISCHARGED"
    record = json.loads(
        (project.path / "evidence" / "alpha-v1" / "FALSIFY-ALPHA-003.json").read_text()
    )
    assert record["passed_on"] == ["cpu", "cuda"] and set(record["runs"]) == {"cpu", "cuda"}


def test_hypothesis_counterexample_is_stored(project):
    project.makepyfile(
        test_hyp=textwrap.dedent("""\
        import pytest
        from hypothesis import given, settings, strategies as st

        @pytest.mark.falsifies("FALSIFY-ALPHA-005")
        @settings(database=None)
        @given(st.integers())
        def test_small(n):
            assert n < 1000
        """)
    )
    run(project, "test_hyp.py")
    record = json.loads(
        (project.path / "evidence" / "alpha-v1" / "FALSIFY-ALPHA-005.json").read_text()
    )
    assert "n=1000" in record["runs"]["cpu"]["failure"]["falsifying_example"]


def _many_falsifiers(pytester: pytest.Pytester, n: int) -> None:
    items = "".join(f"  - {{id: FALSIFY-MANY-{i:03d}, rule: r, prediction: p}}\n" for i in range(n))
    (pytester.path / "contracts").mkdir(exist_ok=True)
    (pytester.path / "contracts" / "many-v1.yaml").write_text(
        f"metadata:\n  version: '1.0.0'\nfalsification_tests:\n{items}"
    )
    tests = "".join(
        f"@pytest.mark.falsifies('FALSIFY-MANY-{i:03d}')\ndef test_{i}():\n    pass\n\n"
        for i in range(n)
    )
    pytester.makepyfile(test_many="import pytest\n\n" + tests)


def test_xdist_writes_every_update(pytester):
    _many_falsifiers(pytester, 40)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-n", "2")
    result.assert_outcomes(passed=40)
    assert set(statuses(pytester, "many-v1").values()) == {"DISCHARGED"}
    assert contract(pytester, "many-v1")["metadata"]["version"] == "1.1.0"
    assert len(list((pytester.path / "evidence" / "many-v1").glob("*.json"))) == 40


def test_concurrent_runs_lose_no_update(pytester):
    _many_falsifiers(pytester, 12)
    cmd = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q"]
    procs = [
        subprocess.Popen(
            [*cmd, *(a for i in range(k, 12, 3) for a in ("--falsifier", f"FALSIFY-MANY-{i:03d}"))],
            cwd=pytester.path,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        for k in range(3)
    ]
    outputs = [p.communicate(timeout=120)[0].decode() for p in procs]
    assert all(p.returncode == 0 for p in procs), outputs
    assert set(statuses(pytester, "many-v1").values()) == {"DISCHARGED"}
    log = contract(pytester, "many-v1")["changelog"]
    assert [e["version"] for e in log] == ["1.1.0", "1.2.0", "1.3.0"]


def test_no_contracts_no_noise(pytester):
    pytester.makepyfile(test_x="def test_x():\n    pass\n")
    result = run(pytester)
    result.assert_outcomes(passed=1)
    assert "contract status" not in result.stdout.str()
    assert not Path(pytester.path / "evidence").exists()


def test_a_broken_contract_does_not_break_unrelated_runs(pytester):
    (pytester.path / "contracts").mkdir()
    (pytester.path / "contracts" / "broken-v1.yaml").write_text("metadata: [\n")
    pytester.makepyfile(test_x="def test_x():\n    pass\n")
    run(pytester).assert_outcomes(passed=1)
    pytester.makepyfile(
        test_y=textwrap.dedent("""\
        import pytest

        @pytest.mark.falsifies("FALSIFY-X-001")
        def test_y():
            pass
        """)
    )
    result = run(pytester)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*broken-v1.yaml:*YAML syntax*(run pv validate)*"])
