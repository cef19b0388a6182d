"""Issue 9 case 1: a partial run may demote but never promotes (pytester projects)."""

from __future__ import annotations

import textwrap

import pytest
import yaml

CONTRACT = """\
metadata:
  id: part-v1
  version: "1.0.0"
falsification_tests:
  - id: FALSIFY-PART-001
    rule: "two files bind it"
    prediction: "p"
  - id: FALSIFY-PART-002
    rule: "sixteen cases bind it"
    prediction: "p"
"""

TEST_A = """\
import pytest

@pytest.mark.falsifies("FALSIFY-PART-001")
def test_a():
    pass
"""

TEST_B = """\
import os
import pytest

@pytest.mark.falsifies("FALSIFY-PART-001")
def test_b():
    assert not os.path.exists("FAIL_B")
"""

TEST_CASES = """\
import os
import pytest

@pytest.mark.falsifies("FALSIFY-PART-002")
@pytest.mark.parametrize("n", range(16))
def test_case(n):
    assert not (n == 15 and os.path.exists("FAIL_CASE"))
"""


@pytest.fixture
def project(pytester: pytest.Pytester) -> pytest.Pytester:
    (pytester.path / "contracts").mkdir()
    (pytester.path / "contracts" / "part-v1.yaml").write_text(CONTRACT)
    pytester.makepyfile(test_a=TEST_A, test_b=TEST_B, test_cases=TEST_CASES)
    return pytester


def statuses(pytester: pytest.Pytester) -> dict[str, str | None]:
    data = yaml.safe_load((pytester.path / "contracts" / "part-v1.yaml").read_text())
    return {f["id"]: f.get("status") for f in data["falsification_tests"]}


def run(pytester: pytest.Pytester, *args: str) -> pytest.RunResult:
    return pytester.runpytest_inprocess("-p", "no:cacheprovider", *args)


def test_one_file_passing_does_not_overturn_a_refutation_from_another(project):
    (project.path / "FAIL_B").write_text("")
    run(project)
    assert statuses(project)["FALSIFY-PART-001"] == "FALSIFIED"
    result = run(project, "test_a.py")
    result.assert_outcomes(passed=1)
    assert statuses(project)["FALSIFY-PART-001"] == "FALSIFIED"
    assert "not promoted: 1 of 2 bound cases ran" in result.stdout.str()


def test_one_case_by_node_id_does_not_overturn_its_siblings_refutation(project):
    (project.path / "FAIL_CASE").write_text("")
    run(project)
    assert statuses(project)["FALSIFY-PART-002"] == "FALSIFIED"
    result = run(project, "test_cases.py::test_case[3]")
    result.assert_outcomes(passed=1)
    assert statuses(project)["FALSIFY-PART-002"] == "FALSIFIED"
    assert "not promoted: 1 of 16+ bound cases ran" in result.stdout.str()


def test_a_node_id_never_promotes_even_a_first_run(project):
    run(project, "test_cases.py::test_case[3]").assert_outcomes(passed=1)
    assert statuses(project)["FALSIFY-PART-002"] is None


def test_k_and_deselect_never_promote(project):
    run(project, "-k", "test_case and 3")
    assert statuses(project)["FALSIFY-PART-002"] is None
    run(project, "test_cases.py", "--deselect", "test_cases.py::test_case[0]")
    assert statuses(project)["FALSIFY-PART-002"] is None


def test_a_partial_run_still_demotes(project):
    run(project)
    assert statuses(project) == {"FALSIFY-PART-001": "DISCHARGED", "FALSIFY-PART-002": "DISCHARGED"}
    (project.path / "FAIL_B").write_text("")
    run(project, "test_b.py")
    assert statuses(project)["FALSIFY-PART-001"] == "FALSIFIED"


def test_the_full_run_overturns_once_everything_passes(project):
    (project.path / "FAIL_B").write_text("")
    run(project)
    (project.path / "FAIL_B").unlink()
    run(project, "test_a.py", "test_b.py")
    assert statuses(project)["FALSIFY-PART-001"] == "DISCHARGED"


def test_a_deleted_test_file_does_not_block_promotion_forever(project):
    (project.path / "FAIL_B").write_text("")
    run(project)
    (project.path / "test_b.py").unlink()
    run(project, "test_a.py")
    assert statuses(project)["FALSIFY-PART-001"] == "DISCHARGED"


def test_a_refutation_recorded_meanwhile_is_not_overwritten_by_a_pass(project):
    """Another run writes FALSIFIED while this one runs; this run's pass must keep it."""
    run(project)
    assert statuses(project)["FALSIFY-PART-001"] == "DISCHARGED"
    project.makepyfile(
        test_a=textwrap.dedent("""\
        import pathlib
        import pytest

        @pytest.mark.falsifies("FALSIFY-PART-001")
        def test_a():
            # what a concurrent run that saw test_b fail writes, mid-way through this run
            path = pathlib.Path("contracts/part-v1.yaml")
            text = path.read_text()
            head, tail = text.split("- id: FALSIFY-PART-002")
            head = head.replace("status: DISCHARGED", "status: FALSIFIED")
            path.write_text(head + "- id: FALSIFY-PART-002" + tail)
        """)
    )
    result = run(project, "test_a.py", "test_b.py")
    result.assert_outcomes(passed=2)
    assert statuses(project)["FALSIFY-PART-001"] == "FALSIFIED"
    assert "another run refuted it after this run started" in result.stdout.str()
