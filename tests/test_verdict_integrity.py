"""FALSIFIED means a counterexample: a mini project with one DISCHARGED falsifier per way a
test can end, run through the real plugin.

Only an assertion that fails again on its re-run (and a runtime ``pytest.xfail``, which
declares the claim false) may refute. A setup or teardown error, a collection error, an
ImportError, a crashed worker, a crashed oracle, the machine's OSError, MemoryError,
SystemExit, a placeholder and a failure that does not reproduce leave every contract and
evidence file byte-identical, are named in the summary, and make pytest exit non-zero.
"""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest
import yaml

KINDS = {
    "001": "assertion",
    "002": "setup error",
    "003": "teardown error",
    "004": "import error in the body",
    "005": "scaffold placeholder",
    "006": "fails once, then passes",
    "007": "oracle child crashed",
    "008": "disk full",
    "009": "worker killed by SIGSEGV",
    "010": "fails twice",
    "011": "sys.exit",
    "012": "MemoryError",
    "013": "collection error",
    "014": "runtime xfail",
    "015": "oracle error declared in the ini",
    "016": "fails twice, from fresh fixtures",
}


def contract_text(ids: list[str]) -> str:
    rows = "\n".join(
        f'  - {{id: FALSIFY-MINI-{i}, rule: "{KINDS[i]}", prediction: p, status: DISCHARGED}}'
        for i in ids
    )
    return textwrap.dedent(
        """\
        # a comment that must survive
        metadata:
          id: mini-v1
          version: "1.0.0"
          status: DISCHARGED
          description: "one falsifier per way a test can end"
        falsification_tests:
        {rows}
        changelog:
          - {{version: "1.0.0", date: "2026-01-01", change: "created"}}
        """
    ).format(rows=rows)


TESTS = """\
import errno, os, signal, sys
from pathlib import Path

import pytest

from provable.plugin.outcomes import not_yet_written


class OracleCrashed(Exception):
    pass


class OracleError(Exception):
    pass


class LlamaCppDied(OracleError):
    pass


@pytest.fixture
def broken():
    import no_such_module_xyz


@pytest.fixture
def bad_teardown():
    yield
    raise RuntimeError("teardown broke")


def count(name):
    marker = Path(name)
    n = int(marker.read_text()) if marker.exists() else 0
    marker.write_text(str(n + 1))
    return n


@pytest.mark.falsifies("FALSIFY-MINI-001")
def test_assertion():
    assert 1 + 1 == 3, "refuted"


@pytest.mark.falsifies("FALSIFY-MINI-002")
def test_setup(broken):
    pass


@pytest.mark.falsifies("FALSIFY-MINI-003")
def test_teardown(bad_teardown):
    pass


@pytest.mark.falsifies("FALSIFY-MINI-004")
def test_import():
    import another_missing_module_abc


@pytest.mark.falsifies("FALSIFY-MINI-005")
def test_placeholder():
    not_yet_written("FALSIFY-MINI-005 not yet written")


@pytest.mark.falsifies("FALSIFY-MINI-006")
def test_fails_once():
    assert count("once.count") >= 1, "failed once"


@pytest.mark.falsifies("FALSIFY-MINI-007", environment=(OracleCrashed,))
def test_oracle():
    raise OracleCrashed("llama.cpp died with SIGILL (illegal instruction) on model.gguf")


@pytest.mark.falsifies("FALSIFY-MINI-008")
def test_disk_full():
    raise OSError(errno.ENOSPC, "No space left on device")


@pytest.mark.falsifies("FALSIFY-MINI-009")
def test_worker_dies():
    os.kill(os.getpid(), signal.SIGSEGV)


@pytest.mark.falsifies("FALSIFY-MINI-010")
def test_fails_twice():
    count("twice.count")
    assert False, "refuted every time"


@pytest.mark.falsifies("FALSIFY-MINI-011")
def test_exit():
    sys.exit(3)


@pytest.mark.falsifies("FALSIFY-MINI-012")
def test_memory():
    raise MemoryError()


@pytest.mark.falsifies("FALSIFY-MINI-014")
def test_xfail():
    pytest.xfail("known broken")


@pytest.mark.falsifies("FALSIFY-MINI-016")
def test_fails_twice_from_fresh_fixtures(tmp_path):
    (tmp_path / "made-once").mkdir()  # a reused fixture would fail here the second time
    assert False, "refuted with a fresh tmp_path"


@pytest.mark.falsifies("FALSIFY-MINI-015")
def test_ini_declared():
    raise LlamaCppDied("llama.cpp died with SIGSEGV (segmentation fault) on model.gguf")
"""

BROKEN_MODULE = """\
import pytest
import module_that_is_not_installed


@pytest.mark.falsifies("FALSIFY-MINI-013")
def test_never_collected():
    pass
"""

INI = """\
[pytest]
provable_environment_errors =
    test_mini:OracleError
"""


def module_for(ids: list[str], source: str = TESTS) -> str:
    """The test module with only the tests bound to ``ids`` (plus the shared helpers)."""
    head, *blocks = source.split("\n\n\n@pytest.mark.falsifies(")
    keep = [b for b in blocks if b.split('"')[1][-3:] in ids]
    return "\n\n\n@pytest.mark.falsifies(".join([head, *keep])


def make_project(pytester: pytest.Pytester, ids: list[str], broken: bool = False) -> None:
    (pytester.path / "contracts").mkdir()
    (pytester.path / "contracts" / "mini-v1.yaml").write_text(contract_text(ids))
    pytester.makepyfile(test_mini=module_for(ids))
    pytester.makeini(INI)
    if broken:
        pytester.makepyfile(test_broken=BROKEN_MODULE)


def snapshot(root: Path) -> dict[str, bytes]:
    """Every contract and committed evidence file (history.jsonl is the uncommitted log)."""
    return {
        str(p.relative_to(root)): p.read_bytes()
        for folder in ("contracts", "evidence")
        for p in sorted((root / folder).rglob("*"))
        if p.is_file() and p.name != "history.jsonl" and not p.name.startswith(".")
    }


def statuses(root: Path) -> dict[str, str]:
    data = yaml.safe_load((root / "contracts" / "mini-v1.yaml").read_text())
    return {f["id"][-3:]: f["status"] for f in data["falsification_tests"]}


def history(root: Path) -> dict[str, dict]:
    lines = (root / "evidence" / "mini-v1" / "history.jsonl").read_text().splitlines()
    return {json.loads(ln)["falsifier"][-3:]: json.loads(ln) for ln in lines}


NOT_REFUTING = ["002", "003", "004", "005", "006", "007", "008", "009", "011", "012", "015"]


def test_nothing_but_a_counterexample_changes_a_contract_under_xdist(pytester):
    make_project(pytester, NOT_REFUTING)
    before = snapshot(pytester.path)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-n", "2")
    assert result.ret != 0  # not checked is red in CI
    assert snapshot(pytester.path) == before  # byte for byte: status, version, changelog
    out = result.stdout.str()
    assert "not checked: 9 (the claim was not tested; nothing changed)" in out
    assert "flaky: 1" in out and "not yet written: 1" in out
    for i in NOT_REFUTING:
        assert f"mini-v1:FALSIFY-MINI-{i} (DISCHARGED)" in out, i
    assert "REFUTED" not in out and "REGRESSION" not in out
    seen = history(pytester.path)
    assert {i: seen[i]["outcome"] for i in NOT_REFUTING} == {
        **dict.fromkeys(NOT_REFUTING, "not_checked"),
        "005": "not_written",
        "006": "flaky",
    }
    # the error says what, where and when, without a dependency's source or the worker id
    assert seen["002"]["error"] == {
        "type": "ModuleNotFoundError",
        "message": "No module named 'no_such_module_xyz'",
        "when": "setup",
        "frame": "test_mini.py:23 in broken",
    }
    assert seen["009"]["error"]["type"] == "worker crashed"
    assert "[gw" not in json.dumps(seen["009"]["error"]["message"])
    assert seen["006"]["error"]["rerun"] == "passed"


def test_only_a_reproduced_failure_and_a_declared_xfail_refute(pytester):
    make_project(pytester, ["001", "010", "014", "006"])
    result = pytester.runpytest_inprocess("-p", "no:cacheprovider")
    assert result.ret != 0
    assert statuses(pytester.path) == {
        "001": "FALSIFIED",
        "010": "FALSIFIED",
        "014": "FALSIFIED",
        "006": "DISCHARGED",  # failed once, then passed: flaky
    }
    assert (pytester.path / "twice.count").read_text() == "2"  # it was re-run once
    evidence = json.loads((pytester.path / "evidence/mini-v1/FALSIFY-MINI-010.json").read_text())
    failure = evidence["runs"]["cpu"]["failure"]
    assert "refuted every time" in failure["message"]
    assert "falsifying_example" not in failure  # our note is not a hypothesis example
    result.stdout.fnmatch_lines(["*re-run once with the same inputs: failed again the same way*"])


def test_the_re_run_starts_from_fresh_fixtures(pytester):
    """A re-run on reused fixtures fails some other way (FileExistsError) and would read as
    flaky: the re-run is a whole new setup, call and teardown."""
    make_project(pytester, ["016"])
    result = pytester.runpytest_inprocess("-p", "no:cacheprovider")
    assert statuses(pytester.path) == {"016": "FALSIFIED"}
    result.stdout.fnmatch_lines(["*re-run once with the same inputs: failed again the same way*"])


def test_a_runtime_xfail_alone_still_exits_non_zero(pytester):
    make_project(pytester, ["014"])
    result = pytester.runpytest_inprocess("-p", "no:cacheprovider")
    result.assert_outcomes(xfailed=1)
    assert result.ret == pytest.ExitCode.TESTS_FAILED  # the verdict and the exit code agree
    assert statuses(pytester.path) == {"014": "FALSIFIED"}


def test_rerun_false_records_the_first_failure(pytester):
    make_project(pytester, ["006"])
    (pytester.path / "test_mini.py").write_text(
        module_for(["006"]).replace(
            '@pytest.mark.falsifies("FALSIFY-MINI-006")',
            '@pytest.mark.falsifies("FALSIFY-MINI-006", rerun=False)',
        )
    )
    pytester.runpytest_inprocess("-p", "no:cacheprovider")
    assert (pytester.path / "once.count").read_text() == "1"
    assert statuses(pytester.path) == {"006": "FALSIFIED"}


def test_a_collection_error_is_not_checked_by_name(pytester):
    make_project(pytester, ["013", "001"], broken=True)
    before = snapshot(pytester.path)
    result = pytester.runpytest_inprocess("-p", "no:cacheprovider")
    assert result.ret != 0
    assert snapshot(pytester.path) == before
    out = result.stdout.str()
    assert "mini-v1:FALSIFY-MINI-013 (DISCHARGED): collection error" in out
    assert history(pytester.path)["013"]["outcome"] == "not_checked"


def test_a_refutation_stays_on_record_after_a_later_pass(pytester):
    make_project(pytester, ["010"])
    pytester.runpytest_inprocess("-p", "no:cacheprovider")
    assert statuses(pytester.path) == {"010": "FALSIFIED"}
    (pytester.path / "test_mini.py").write_text(
        module_for(["010"]).replace('assert False, "refuted every time"', "pass")
    )
    pytester.runpytest_inprocess("-p", "no:cacheprovider")
    assert statuses(pytester.path) == {"010": "DISCHARGED"}
    path = pytester.path / "evidence/mini-v1/FALSIFY-MINI-010.json"
    record = json.loads(path.read_text())
    kept = record["refuted_before"]
    assert "refuted every time" in kept["message"]
    assert kept["nodeid"] == "test_mini.py::test_fails_twice"
    first = path.read_bytes()
    pytester.runpytest_inprocess("-p", "no:cacheprovider")  # stable across re-runs
    assert path.read_bytes() == first


def test_evidence_names_the_versions_it_was_measured_with(pytester):
    make_project(pytester, ["001"])
    pytester.runpytest_inprocess("-p", "no:cacheprovider")
    record = json.loads((pytester.path / "evidence/mini-v1/FALSIFY-MINI-001.json").read_text())
    host = record["runs"]["cpu"]["host"]
    from importlib import metadata

    for dist in ("transformers", "llama_cpp_python", "numpy", "pytest"):
        try:
            version = metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
        assert host["packages"][dist] == version
    assert "cpu_flags" in host


def test_a_changed_verdict_names_the_packages_that_moved(pytester):
    make_project(pytester, ["001"])
    folder = pytester.path / "evidence" / "mini-v1"
    folder.mkdir(parents=True)
    (folder / "FALSIFY-MINI-001.json").write_text(
        json.dumps(
            {
                "outcome": "passed",
                "status": "DISCHARGED",
                "passed_on": ["cpu"],
                "runs": {"cpu": {"tests": [], "host": {"packages": {"pytest": "0.0.1"}}}},
            }
        )
    )
    result = pytester.runpytest_inprocess("-p", "no:cacheprovider")
    result.stdout.fnmatch_lines(
        ["*versions differ from the run that recorded DISCHARGED: pytest 0.0.1 -> *"]
    )
