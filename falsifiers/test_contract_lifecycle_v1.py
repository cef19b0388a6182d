"""Falsifiers of contract-lifecycle-v1: the status rules hold for every input.

Each check takes the implementation as an argument, so that
``tests/test_falsifiers_catch_defects.py`` can hand it a defective one and watch it fail.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
from hypothesis import given
from hypothesis import strategies as st

from falsifiers.reproducible import reproducible
from provable import (
    Raised,
    TestVerdict,
    after_rerun,
    classify_failure,
    falsifier_outcome,
)
from provable.contracts.lifecycle import (
    ContractStatus,
    FalsifierStatus,
    Outcome,
    Transition,
    bump_minor,
    changelog_entry,
    derive_contract_status,
    promote,
    semver_key,
)

statuses = st.sampled_from(list(FalsifierStatus))
hosts = st.frozensets(st.sampled_from(["cpu", "cuda"]))
required_hosts = st.frozensets(st.sampled_from(["cpu", "cuda"]), min_size=1)
EXAMPLES = reproducible(300)


def check_skip_never_changes(promote_fn: Callable = promote) -> None:
    @EXAMPLES
    @given(
        statuses, st.sampled_from([Outcome.SKIPPED, Outcome.NOT_RUN]), hosts, required_hosts, hosts
    )
    def prop(status, outcome, passed_on, required, before):
        assert promote_fn(status, outcome, passed_on, required, before).status is status

    prop()


def check_failure_refutes(promote_fn: Callable = promote) -> None:
    @EXAMPLES
    @given(statuses, hosts, required_hosts, hosts)
    def prop(status, passed_on, required, before):
        result = promote_fn(status, Outcome.FAILED, passed_on, required, before)
        assert result.status is FalsifierStatus.FALSIFIED

    prop()


def table(statuses_: list[FalsifierStatus]) -> ContractStatus:
    """DESIGN §3, written independently of ``derive_contract_status``."""
    if any(s is FalsifierStatus.FALSIFIED for s in statuses_):
        return ContractStatus.FALSIFIED
    if statuses_ and all(s is FalsifierStatus.DISCHARGED for s in statuses_):
        return ContractStatus.DISCHARGED
    if all(s is FalsifierStatus.PROPOSED for s in statuses_):
        return ContractStatus.PROPOSED
    return ContractStatus.PARTIAL_ALGORITHM_LEVEL


def check_derivation(derive_fn: Callable = derive_contract_status) -> None:
    @EXAMPLES
    @given(
        st.lists(statuses, max_size=12),
        st.randoms(use_true_random=False),
        st.sampled_from([None, *ContractStatus]),
    )
    def prop(falsifiers, rng, current):
        shuffled = list(falsifiers)
        rng.shuffle(shuffled)
        expected = (
            current
            if current in (ContractStatus.SUPERSEDED, ContractStatus.RETIRED)
            else table(falsifiers)
        )
        assert derive_fn(falsifiers, current) is expected
        assert derive_fn(shuffled, current) is expected

    prop()


def check_host_gating(promote_fn: Callable = promote) -> None:
    """Replay random run sequences against a plain model of accumulated coverage."""

    @EXAMPLES
    @given(
        required_hosts,
        st.lists(st.tuples(st.sampled_from(list(Outcome)), hosts), min_size=1, max_size=8),
    )
    def prop(required, runs):
        status, passed_on = FalsifierStatus.PROPOSED, frozenset()
        covered: set[str] = set()
        for outcome, ran in runs:
            result = promote_fn(status, outcome, ran, required, passed_on)
            if outcome is Outcome.FAILED:
                covered = set()
                assert result.status is FalsifierStatus.FALSIFIED
            elif outcome is Outcome.PASSED and ran:
                covered = (
                    covered
                    if status in (FalsifierStatus.PARTIAL, FalsifierStatus.DISCHARGED)
                    else set()
                ) | ran
                want = (
                    FalsifierStatus.DISCHARGED if required <= covered else FalsifierStatus.PARTIAL
                )
                assert result.status is want, (status, outcome, ran, covered)
            else:
                assert result.status is status
            status, passed_on = result.status, result.passed_on
            if status is FalsifierStatus.DISCHARGED:
                assert required <= passed_on

    prop()


def check_changelog(entry_fn: Callable = changelog_entry) -> None:
    versions = st.tuples(*(st.integers(0, 40),) * 3).map(lambda t: "{}.{}.{}".format(*t))
    transitions = st.lists(
        st.builds(
            Transition,
            st.from_regex(r"FALSIFY-[A-Z]{2,5}-\d{3}", fullmatch=True),
            statuses,
            statuses,
        ),
        max_size=6,
    )

    @EXAMPLES
    @given(versions, transitions)
    def prop(version, changes):
        entry = entry_fn(version, changes, "2026-01-01", "abc123", False)
        changed = [t for t in changes if t.before is not t.after]
        if not changed:
            assert entry is None
            return
        new_version, record = entry
        assert semver_key(new_version) > semver_key(version)
        assert record["version"] == new_version
        for t in changed:
            assert f"{t.falsifier_id} {t.before.value} -> {t.after.value}" in record["change"]

    prop()


@pytest.mark.falsifies("FALSIFY-LIFECYCLE-001")
def test_a_skip_never_changes_a_status():
    check_skip_never_changes()


@pytest.mark.falsifies("FALSIFY-LIFECYCLE-002")
def test_a_failure_always_refutes():
    check_failure_refutes()


@pytest.mark.falsifies("FALSIFY-LIFECYCLE-003")
def test_contract_status_is_the_design_table():
    check_derivation()


@pytest.mark.falsifies("FALSIFY-LIFECYCLE-004")
def test_only_every_required_host_discharges():
    check_host_gating()


@pytest.mark.falsifies("FALSIFY-LIFECYCLE-005")
def test_every_change_bumps_and_logs(evidence):
    check_changelog()
    evidence.record(example_bump=f"1.2.3 -> {bump_minor('1.2.3')}")


# --- issue 9: partial runs and concurrent refutations --------------------------------------

from pathlib import Path  # noqa: E402

from provable.plugin.plan import RunFacts, aggregate, plan_contract  # noqa: E402
from provable.plugin.session import FalsifierRun, SessionScope, TestResult  # noqa: E402


def _run(cases: int, ran: set[int], files: int) -> tuple[FalsifierRun, dict[str, set[str]]]:
    """A falsifier bound to ``cases`` tests spread over ``files`` files; ``ran`` passed."""
    run = FalsifierRun("c-v1:FALSIFY-C-001")
    every = {f"t{i % files}.py::test[{i}]" for i in range(cases)}
    for i in sorted(ran):
        nodeid = f"t{i % files}.py::test[{i}]"
        run.bound["cpu"].add(nodeid)
        run.results[nodeid] = TestResult("passed", kind="cpu")
    return run, {"cpu": every}


def check_partial_run_never_promotes(aggregate_fn: Callable = aggregate) -> None:
    """Every subset of bound cases that passed, seen through the files the session saw:
    promotion exactly when every bound case ran (a file unseen keeps its cases bound)."""

    @EXAMPLES
    @given(
        st.integers(1, 12),
        st.integers(1, 3),
        st.data(),
        statuses,
    )
    def prop(cases, files, data, status):
        ran = data.draw(st.sets(st.integers(0, cases - 1), min_size=1))
        run, known = _run(cases, ran, files)
        seen = {f"t{i % files}.py" for i in ran}
        # the session saw whole only the files whose every case ran, plus a random few more
        whole = {f for f in seen if all(i in ran for i in range(cases) if f"t{i % files}.py" == f)}
        scope = SessionScope(Path("/nonexistent-root"), frozenset(whole))
        agg = aggregate_fn(run, known, _AllFilesExist(scope))
        result = promote(status, agg.outcome, agg.covered, {"cpu"}, ())
        if len(ran) < cases:
            assert result.status is status, (cases, sorted(ran), agg)
        else:
            assert result.status is FalsifierStatus.DISCHARGED

    prop()


class _AllFilesExist(SessionScope):
    """A scope whose unseen files all still exist (no disk needed)."""

    def __init__(self, scope: SessionScope) -> None:
        object.__setattr__(self, "root", scope.root)
        object.__setattr__(self, "complete_files", scope.complete_files)
        object.__setattr__(self, "narrowed_files", scope.narrowed_files)
        object.__setattr__(self, "everything", False)
        object.__setattr__(self, "uncollected_bindings", scope.uncollected_bindings)

    def unseen(self, nodeid: str) -> bool:
        return nodeid.split("::", 1)[0] not in self.complete_files


_CONCURRENT = """\
metadata:
  id: c-v1
  version: "1.0.0"
  status: FALSIFIED
falsification_tests:
  - id: FALSIFY-C-001
    rule: r
    prediction: p
    status: FALSIFIED
"""


def check_concurrent_refutation_kept(plan_fn: Callable = plan_contract, tmp: Path | None = None):
    """A contract refuted on disk after this run began (it started as PROPOSED, PARTIAL or
    DISCHARGED) is never flipped back by this run's complete pass."""
    from provable.contracts.model import load_contract

    assert tmp is not None
    path = tmp / "contracts" / "c-v1.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(_CONCURRENT)
    contract = load_contract(path)
    facts = RunFacts(None, False, "t", "2026-01-01")
    for started in ("PROPOSED", "PARTIAL", "DISCHARGED", None):
        run, _ = _run(3, {0, 1, 2}, 1)
        change = plan_fn(
            contract,
            _CONCURRENT,
            {"FALSIFY-C-001": run},
            {},
            {"FALSIFY-C-001": started},
            None,
            facts,
            tmp,
        )
        [falsifier] = change.falsifiers
        assert falsifier.after is FalsifierStatus.FALSIFIED, (started, falsifier)
        assert change.new_text is None or "status: DISCHARGED" not in change.new_text


@pytest.mark.falsifies("FALSIFY-LIFECYCLE-006")
def test_a_partial_run_never_promotes():
    check_partial_run_never_promotes()


@pytest.mark.falsifies("FALSIFY-LIFECYCLE-007")
def test_a_concurrent_refutation_is_kept(tmp_path):
    check_concurrent_refutation_kept(tmp=tmp_path)


# --- FALSIFY-LIFECYCLE-008: only a reproduced counterexample refutes -------------------------

#: (exception as data, does it refute?) — the classes a falsifier test really meets
EXCEPTIONS = [
    (Raised(("builtins:AssertionError", "builtins:Exception")), True),
    (Raised(("hypothesis.errors:Flaky", "builtins:Exception")), True),
    (Raised(("_pytest.outcomes:Failed", "builtins:BaseException"), "values differ"), True),
    (Raised(("aprlib.errors:ModelFileError", "builtins:Exception")), True),
    (Raised(("builtins:FileNotFoundError", "builtins:OSError"), errno=2), True),
    (Raised(("builtins:ModuleNotFoundError", "builtins:ImportError")), False),
    (Raised(("builtins:MemoryError", "builtins:Exception")), False),
    (Raised(("builtins:SystemExit", "builtins:BaseException")), False),
    (Raised(("builtins:OSError", "builtins:Exception"), errno=28), False),  # ENOSPC
    (Raised(("builtins:OSError", "builtins:Exception"), errno=24), False),  # EMFILE
    (Raised(("_pytest.outcomes:Failed",), "Timeout >30.0s"), False),
    (Raised(("provable.plugin.outcomes:NotYetWritten", "builtins:Exception")), False),
    (Raised(("aprlib.errors:OracleCrashed", "aprlib.errors:OracleError")), False),
]
DECLARED = frozenset({"aprlib.errors:OracleError"})
RERUNS = [TestVerdict.REFUTED, TestVerdict.PASSED, TestVerdict.NOT_CHECKED]


def check_only_counterexamples_refute(
    classify: Callable = classify_failure,
    rerun: Callable = after_rerun,
    outcome_of: Callable = falsifier_outcome,
    promote_fn: Callable = promote,
) -> None:
    @reproducible(400)
    @given(
        phase=st.sampled_from(["setup", "call", "teardown", "collect", "???"]),
        case=st.sampled_from(EXCEPTIONS),
        again=st.sampled_from(RERUNS),
        same=st.booleans(),
        status=statuses,
    )
    def check(phase, case, again, same, status):
        raised, refuting = case
        verdict = classify(phase, (raised,), DECLARED)
        if verdict is TestVerdict.REFUTED:
            other = Raised(("builtins:ValueError", "builtins:Exception"))
            verdict = rerun(raised, again, raised if same else other)
        outcome = outcome_of([verdict]) or Outcome.PASSED
        after = promote_fn(status, outcome, {"cpu"}, {"cpu"}, {"cpu"}).status
        counterexample = phase == "call" and refuting and again is TestVerdict.REFUTED and same
        assert (after is FalsifierStatus.FALSIFIED) == (
            counterexample
            or (status is FalsifierStatus.FALSIFIED and outcome is not Outcome.PASSED)
        ), (phase, raised, again, same, status, verdict, outcome, after)
        if not counterexample and outcome is not Outcome.PASSED:
            assert after is status  # nothing else moves a status

    check()


@pytest.mark.falsifies("FALSIFY-LIFECYCLE-008")
def test_only_a_reproduced_counterexample_refutes():
    check_only_counterexamples_refute()
