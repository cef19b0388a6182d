"""The outcome taxonomy's rules, one test each (``provable.contracts.lifecycle``: pure functions),
and
the plugin's folding of reports into them. Removing any rule turns its test red."""

from __future__ import annotations

import builtins
import errno
from types import SimpleNamespace

import pytest

from provable import FalsifierStatus, Outcome, promote
from provable.contracts.lifecycle import (
    Raised,
    TestVerdict,
    after_rerun,
    classify_failure,
    classify_raised,
    falsifier_outcome,
)
from provable.plugin.hooks import _apply_report, raised_from
from provable.plugin.session import TestResult

FAILED = "_pytest.outcomes:Failed"


def raised(*types: str, message: str = "", errno_: int | None = None) -> Raised:
    return Raised((*types, "builtins:BaseException"), message, errno_)


ASSERTION = raised("builtins:AssertionError", "builtins:Exception")


@pytest.mark.parametrize("when", ["setup", "teardown", "collect", "???"])
def test_only_the_call_phase_can_refute(when):
    assert classify_failure(when, (ASSERTION,)) is TestVerdict.NOT_CHECKED
    assert classify_failure("call", (ASSERTION,)) is TestVerdict.REFUTED


@pytest.mark.parametrize(
    "exc",
    [
        ModuleNotFoundError("no module named x"),
        ImportError("cannot import name y"),
        MemoryError(),
        SystemExit(3),
        KeyboardInterrupt(),
    ],
)
def test_environment_exceptions_are_not_checked(exc):
    assert classify_failure("call", raised_from(exc)) is TestVerdict.NOT_CHECKED


@pytest.mark.parametrize("code", ["ENOSPC", "ENOMEM", "EMFILE", "ENFILE", "EDQUOT"])
def test_the_machines_oserrors_are_not_checked(code):
    exc = OSError(getattr(errno, code), "the machine")
    assert classify_failure("call", raised_from(exc)) is TestVerdict.NOT_CHECKED


def test_a_gpu_out_of_memory_is_not_checked():
    oom = raised("torch:OutOfMemoryError", "builtins:RuntimeError", "builtins:Exception")
    assert classify_failure("call", (oom,)) is TestVerdict.NOT_CHECKED
    other = raised("builtins:RuntimeError", "builtins:Exception")
    assert classify_failure("call", (other,)) is TestVerdict.REFUTED


def test_other_oserrors_are_what_the_code_under_test_raised():
    exc = FileNotFoundError(errno.ENOENT, "model.gguf")
    assert classify_failure("call", raised_from(exc)) is TestVerdict.REFUTED


def test_declared_classes_are_matched_along_the_mro_by_name():
    class OracleError(Exception):
        pass

    class OracleCrashed(OracleError):
        pass

    name = f"{OracleError.__module__}:{OracleError.__qualname__}"
    found = raised_from(OracleCrashed("died"))
    assert classify_failure("call", found) is TestVerdict.REFUTED
    assert classify_failure("call", found, frozenset({name})) is TestVerdict.NOT_CHECKED


def test_environment_fault_base_class_is_not_checked():
    from provable.plugin.outcomes import EnvironmentFault

    assert classify_failure("call", raised_from(EnvironmentFault())) is TestVerdict.NOT_CHECKED


def test_the_placeholder_is_not_written():
    from provable.plugin.outcomes import NotYetWritten

    assert classify_raised(raised_from(NotYetWritten("x"))[0]) is TestVerdict.NOT_WRITTEN
    legacy = raised(FAILED, message="FALSIFY-A-001 not yet written: write a test that would")
    assert classify_raised(legacy) is TestVerdict.NOT_WRITTEN
    assert classify_raised(raised(FAILED, message="something else")) is TestVerdict.REFUTED


def test_pytest_timeouts_signal_method_is_not_checked():
    assert classify_raised(raised(FAILED, message="Timeout >5.0s")) is TestVerdict.NOT_CHECKED
    assert classify_raised(raised(FAILED, message="Timeout handling broke")) is TestVerdict.REFUTED


@pytest.mark.skipif(not hasattr(builtins, "ExceptionGroup"), reason="Python 3.11+")
def test_an_exception_group_refutes_when_any_leaf_does():
    ExceptionGroup = builtins.ExceptionGroup
    group = ExceptionGroup("two", [ImportError("x"), AssertionError("y")])
    assert classify_failure("call", raised_from(group)) is TestVerdict.REFUTED
    only_env = ExceptionGroup("two", [ImportError("x"), MemoryError()])
    assert classify_failure("call", raised_from(only_env)) is TestVerdict.NOT_CHECKED


def test_a_reproduced_failure_refutes_and_an_unreproduced_one_is_flaky():
    assert after_rerun(ASSERTION, TestVerdict.REFUTED, ASSERTION) is TestVerdict.REFUTED
    assert after_rerun(ASSERTION, TestVerdict.PASSED, None) is TestVerdict.FLAKY
    other = raised("builtins:ValueError", "builtins:Exception")
    assert after_rerun(ASSERTION, TestVerdict.REFUTED, other) is TestVerdict.FLAKY
    assert after_rerun(ASSERTION, TestVerdict.NOT_CHECKED, None) is TestVerdict.NOT_CHECKED


def test_a_falsifier_takes_its_most_telling_verdict():
    v = TestVerdict
    assert falsifier_outcome([v.PASSED, v.NOT_CHECKED, v.REFUTED]) is Outcome.FAILED
    assert falsifier_outcome([v.PASSED, v.FLAKY, v.NOT_CHECKED]) is Outcome.NOT_CHECKED
    assert falsifier_outcome([v.PASSED, v.NOT_WRITTEN, v.FLAKY]) is Outcome.FLAKY
    assert falsifier_outcome([v.PASSED, v.NOT_WRITTEN]) is Outcome.NOT_WRITTEN
    assert falsifier_outcome([v.PASSED, v.SKIPPED]) is None


@pytest.mark.parametrize("outcome", [Outcome.NOT_CHECKED, Outcome.FLAKY, Outcome.NOT_WRITTEN])
@pytest.mark.parametrize("status", list(FalsifierStatus))
def test_nothing_but_a_refutation_or_a_pass_changes_a_status(outcome, status):
    kept = promote(status, outcome, {"cpu"}, {"cpu"}, {"cpu"})
    assert kept.status is status


def report(outcome: str, when: str = "call", props=(), **extra):
    return SimpleNamespace(
        outcome=outcome,
        when=when,
        failed=outcome == "failed",
        passed=outcome == "passed",
        skipped=outcome == "skipped",
        duration=0.1,
        longreprtext=extra.pop("text", ""),
        longrepr=None,
        user_properties=list(props),
        nodeid="t.py::t",
        **extra,
    )


def test_a_failure_another_plugin_re_ran_makes_the_later_pass_flaky():
    """pytest-rerunfailures reports the failed attempt with outcome "rerun"."""
    result = TestResult()
    _apply_report(result, report("rerun", text="E  AssertionError: once"), None)
    _apply_report(result, report("passed"), None)
    assert result.outcome == "flaky" and "once" in (result.message or "")


def test_a_lost_worker_is_not_checked_and_keeps_no_worker_header():
    result = TestResult()
    text = "[gw1] linux -- Python 3.11.7 /x/python\nworker 'gw1' crashed while running 't.py::t'"
    _apply_report(result, report("failed", when="???", text=text), None)
    assert result.outcome == "not_checked"
    assert result.error is not None and result.error["type"] == "worker crashed"
    assert "[gw1]" not in result.error["message"]


def test_a_teardown_error_after_a_pass_is_not_checked_and_a_refutation_wins_over_it():
    result = TestResult()
    _apply_report(result, report("passed"), None)
    _apply_report(result, report("failed", when="teardown"), None)
    assert result.outcome == "not_checked"
    refuted = TestResult()
    _apply_report(
        refuted, report("failed", props=[("provable.verdict", {"verdict": "failed"})]), None
    )
    _apply_report(refuted, report("failed", when="teardown"), None)
    assert refuted.outcome == "failed"


def test_a_runtime_xfail_is_a_refutation_that_pytest_must_not_exit_0_on():
    result = TestResult()
    _apply_report(result, report("skipped", wasxfail="known"), None)
    assert result.outcome == "failed" and result.hidden_xfail
