"""The status rules of DESIGN §3, as pure functions.

Everything that decides a status lives here and nowhere else: the validator checks a
contract's declared status against ``derive_contract_status``, and the pytest plugin calls
``promote`` and ``record_transitions`` to rewrite contracts. Pure functions keep the rules
testable by property (a skip never changes anything; a failure always refutes).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from enum import Enum


class FalsifierStatus(str, Enum):
    PROPOSED = "PROPOSED"  # no test bound, or never run
    PARTIAL = "PARTIAL"  # passed, but not yet on every host it requires
    DISCHARGED = "DISCHARGED"  # passed on every required host
    FALSIFIED = "FALSIFIED"  # its test failed: the claim is refuted


class ContractStatus(str, Enum):
    PROPOSED = "PROPOSED"
    PARTIAL_ALGORITHM_LEVEL = "PARTIAL_ALGORITHM_LEVEL"
    DISCHARGED = "DISCHARGED"
    FALSIFIED = "FALSIFIED"
    SUPERSEDED = "SUPERSEDED"  # manual, kept by every rewrite
    RETIRED = "RETIRED"  # manual, kept by every rewrite


class Outcome(str, Enum):
    """One falsifier's outcome over every test bound to it, in one session."""

    PASSED = "passed"
    FAILED = "failed"  # refuted: a counterexample, reproduced
    SKIPPED = "skipped"
    NOT_RUN = "not_run"
    INCOMPLETE = "incomplete"  # passed, but not every bound test or case ran: never promotes
    NOT_CHECKED = "not_checked"  # a test errored: the claim was not tested
    FLAKY = "flaky"  # a failure that did not reproduce: neither a pass nor a refutation
    NOT_WRITTEN = "not_written"  # a scaffold placeholder: nothing was tested


#: outcomes that leave a falsifier's status, version, changelog and evidence as they were
UNCHANGING_OUTCOMES = frozenset(
    {
        Outcome.SKIPPED,
        Outcome.NOT_RUN,
        Outcome.INCOMPLETE,
        Outcome.NOT_CHECKED,
        Outcome.FLAKY,
        Outcome.NOT_WRITTEN,
    }
)


MANUAL_CONTRACT_STATUSES = frozenset({ContractStatus.SUPERSEDED, ContractStatus.RETIRED})
KNOWN_HOSTS = ("cpu", "cuda")
DEFAULT_HOSTS = frozenset({"cpu"})

#: Words used by contracts in the wild, mapped to the nearest status of ours.
WILD_CONTRACT_STATUSES: Mapping[str, ContractStatus] = {
    "ACTIVE": ContractStatus.PROPOSED,
    "DRAFT": ContractStatus.PROPOSED,
    "ACTIVE_ALGORITHM_LEVEL": ContractStatus.PARTIAL_ALGORITHM_LEVEL,
    "ALGORITHM_LEVEL_DISCHARGED": ContractStatus.PARTIAL_ALGORITHM_LEVEL,
    "FUNCTIONAL": ContractStatus.PARTIAL_ALGORITHM_LEVEL,
    "IMPLEMENTED": ContractStatus.PARTIAL_ALGORITHM_LEVEL,
    "PARTIAL": ContractStatus.PARTIAL_ALGORITHM_LEVEL,
    "VERIFIED": ContractStatus.DISCHARGED,
    "PROVEN": ContractStatus.DISCHARGED,
    "REFUTED": ContractStatus.FALSIFIED,
    "DEPRECATED": ContractStatus.RETIRED,
}
WILD_FALSIFIER_STATUSES: Mapping[str, FalsifierStatus] = {
    "PARTIAL_ALGORITHM_LEVEL": FalsifierStatus.PARTIAL,
    "ALGORITHM_LEVEL_DISCHARGED": FalsifierStatus.PARTIAL,
    "IMPLEMENTED": FalsifierStatus.PARTIAL,
    "PASSING": FalsifierStatus.PARTIAL,
    "ACTIVE": FalsifierStatus.PROPOSED,
    "PENDING": FalsifierStatus.PROPOSED,
    "VERIFIED": FalsifierStatus.DISCHARGED,
    "REFUTED": FalsifierStatus.FALSIFIED,
    "FAILED": FalsifierStatus.FALSIFIED,
}


def parse_falsifier_status(word: str | None) -> FalsifierStatus:
    """Our status for a falsifier's status word (wild words mapped to the nearest).

    The only place a falsifier status word is read: the plugin, ``pv status`` and the
    validator agree on what a word means.
    """
    if word is None:
        return FalsifierStatus.PROPOSED
    if word in FalsifierStatus.__members__:
        return FalsifierStatus(word)
    return WILD_FALSIFIER_STATUSES.get(word.upper(), FalsifierStatus.PROPOSED)


def parse_contract_status(word: str | None) -> ContractStatus | None:
    """Our status for a contract's declared status word; None when absent or unknown."""
    if word is None:
        return None
    if word in ContractStatus.__members__:
        return ContractStatus(word)
    return WILD_CONTRACT_STATUSES.get(word.upper())


def derive_contract_status(
    falsifier_statuses: Iterable[FalsifierStatus],
    current: ContractStatus | None = None,
) -> ContractStatus:
    """A contract's status from its falsifiers' (a function of the multiset only).

    Any FALSIFIED → FALSIFIED; all DISCHARGED → DISCHARGED; none past PROPOSED (or no
    falsifiers) → PROPOSED; otherwise PARTIAL_ALGORITHM_LEVEL. A manual SUPERSEDED or
    RETIRED is kept whatever the falsifiers say.
    """
    if current in MANUAL_CONTRACT_STATUSES:
        return current
    statuses = {FalsifierStatus(s) for s in falsifier_statuses}
    if FalsifierStatus.FALSIFIED in statuses:
        return ContractStatus.FALSIFIED
    if not statuses or statuses == {FalsifierStatus.PROPOSED}:
        return ContractStatus.PROPOSED
    if statuses == {FalsifierStatus.DISCHARGED}:
        return ContractStatus.DISCHARGED
    return ContractStatus.PARTIAL_ALGORITHM_LEVEL


@dataclass(frozen=True)
class Promotion:
    """A falsifier's status after a run, and the hosts on which it has now passed."""

    status: FalsifierStatus
    passed_on: frozenset[str]


def promote(
    current: FalsifierStatus,
    outcome: Outcome,
    passed_on: Iterable[str] = (),
    required_hosts: Iterable[str] = DEFAULT_HOSTS,
    previously_passed_on: Iterable[str] = (),
) -> Promotion:
    """Apply one run's outcome to a falsifier.

    ``passed_on`` is the set of host kinds this run covered (``cpu`` for plain tests,
    ``cuda`` for CUDA tests that really executed on a CUDA device). Passes accumulate across
    runs (a CPU run, then a ``-m cuda`` run on a GPU host, together discharge a
    ``hosts: [cpu, cuda]`` falsifier) until a failure resets them. A skip or a falsifier that
    was not selected changes nothing.
    """
    current = FalsifierStatus(current)
    before = frozenset(previously_passed_on)
    if current in (FalsifierStatus.PROPOSED, FalsifierStatus.FALSIFIED):
        before = frozenset()  # nothing proven yet, or proofs predate the refutation
    if outcome in UNCHANGING_OUTCOMES:
        return Promotion(current, before)
    if outcome is Outcome.FAILED:
        return Promotion(FalsifierStatus.FALSIFIED, frozenset())
    covered = before | frozenset(passed_on)
    required = frozenset(required_hosts) or DEFAULT_HOSTS
    if not passed_on:  # "passed" with no host covered cannot promote anything
        return Promotion(current, before)
    if required <= covered:
        return Promotion(FalsifierStatus.DISCHARGED, covered)
    return Promotion(FalsifierStatus.PARTIAL, covered)


_SEMVER = re.compile(
    r"^(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)"
    r"(?:-((?:0|[1-9]\d*|\d*[a-zA-Z-][0-9a-zA-Z-]*)(?:\.(?:0|[1-9]\d*|\d*[a-zA-Z-][0-9a-zA-Z-]*))*))?"
    r"(?:\+([0-9a-zA-Z-]+(?:\.[0-9a-zA-Z-]+)*))?$"
)


def is_semver(version: str) -> bool:
    return isinstance(version, str) and _SEMVER.match(version) is not None


def semver_key(version: str) -> tuple:
    """Sort key that orders versions by semver precedence (pre-releases before releases)."""
    m = _SEMVER.match(version)
    if m is None:
        raise ValueError(f"not a semantic version: {version!r}")
    major, minor, patch, pre, _build = m.groups()
    if pre is None:
        pre_key: tuple = (1,)
    else:
        pre_key = (0, *((0, int(p), "") if p.isdigit() else (1, 0, p) for p in pre.split(".")))
    return (int(major), int(minor), int(patch), pre_key)


def bump_minor(version: str) -> str:
    """1.2.3 → 1.3.0 (a status change is a minor revision of the contract)."""
    m = _SEMVER.match(version)
    if m is None:
        raise ValueError(f"not a semantic version: {version!r}")
    return f"{m.group(1)}.{int(m.group(2)) + 1}.0"


@dataclass(frozen=True)
class Transition:
    falsifier_id: str
    before: FalsifierStatus
    after: FalsifierStatus

    def __str__(self) -> str:
        return f"{self.falsifier_id} {self.before.value} -> {self.after.value}"


def changelog_entry(
    version: str,
    transitions: Iterable[Transition],
    date: str,
    commit: str | None,
    dirty: bool,
    contract_before: ContractStatus | None = None,
    contract_after: ContractStatus | None = None,
) -> tuple[str, dict[str, str]] | None:
    """The bumped version and its changelog entry, or None when nothing changed."""
    changed = [t for t in transitions if t.before != t.after]
    if not changed and contract_before == contract_after:
        return None
    parts = [str(t) for t in sorted(changed, key=lambda t: t.falsifier_id)]
    if contract_before != contract_after and contract_after is not None:
        before = contract_before.value if contract_before else "none"
        parts.append(f"contract {before} -> {contract_after.value}")
    where = f"commit {commit[:12]}" if commit else "no commit"
    if dirty:
        where += ", dirty tree"
    new_version = bump_minor(version)
    return new_version, {
        "version": new_version,
        "date": date,
        "change": f"{'; '.join(parts)} ({where})",
    }


# --- what one test's failure means ---------------------------------------------------------
#
# Only a counterexample refutes a claim. The plugin turns each failed test phase into a
# ``Raised`` (plain data: it travels through pytest-xdist) and asks ``classify`` what it is;
# the rules below are the whole taxonomy of docs/evidence.md.


class TestVerdict(str, Enum):
    """What one test observed. The values are the words evidence and history files use."""

    __test__ = False  # not a pytest test class

    PASSED = "passed"
    REFUTED = "failed"  # the call phase failed, and failed again the same way when re-run
    NOT_CHECKED = "not_checked"  # setup/teardown error, lost worker, environment, timeout
    FLAKY = "flaky"  # failed, then passed (or failed otherwise) when re-run
    NOT_WRITTEN = "not_written"  # a scaffold placeholder
    SKIPPED = "skipped"


#: most telling first: one test's phases, or one falsifier's tests, reduce to the highest
VERDICT_RANK = (
    TestVerdict.REFUTED,
    TestVerdict.NOT_CHECKED,
    TestVerdict.FLAKY,
    TestVerdict.NOT_WRITTEN,
    TestVerdict.PASSED,
    TestVerdict.SKIPPED,
)


def worst(a: TestVerdict | None, b: TestVerdict) -> TestVerdict:
    """The verdict that wins when two are observed for the same test or falsifier."""
    if a is None:
        return b
    return a if VERDICT_RANK.index(a) <= VERDICT_RANK.index(b) else b


@dataclass(frozen=True)
class Raised:
    """One exception, as data: its classes along the MRO (``module:Qualname``, most derived
    first), its errno (an ``OSError``) and its message."""

    types: tuple[str, ...]
    message: str = ""
    errno: int | None = None

    @property
    def name(self) -> str:
        return self.types[0].rsplit(":", 1)[-1] if self.types else "?"


#: exception classes that say "this machine or environment", never "this claim is false"
ENVIRONMENT_TYPES = frozenset(
    {
        "builtins:ImportError",  # and ModuleNotFoundError below it
        "builtins:MemoryError",
        "torch:OutOfMemoryError",  # the GPU's MemoryError (a RuntimeError; named, not imported)
        "builtins:SystemExit",
        "builtins:KeyboardInterrupt",
        "provable.plugin.outcomes:EnvironmentFault",
    }
)
#: an OSError with one of these errnos is the machine's: ENOSPC, ENOMEM, EMFILE, ENFILE,
#: EDQUOT (numbers as on Linux; ``errno`` module values are used where available)
MACHINE_ERRNOS = frozenset(
    getattr(__import__("errno"), n, v)
    for n, v in (("ENOSPC", 28), ("ENOMEM", 12), ("EMFILE", 24), ("ENFILE", 23), ("EDQUOT", 122))
)
NOT_WRITTEN_TYPE = "provable.plugin.outcomes:NotYetWritten"
PYTEST_FAILED_TYPE = "_pytest.outcomes:Failed"
#: pytest-timeout's signal method ends a test with ``pytest.fail("Timeout >5.0s")``
_TIMEOUT_MESSAGE = re.compile(r"^Timeout >\d+(\.\d+)?s\b")
#: the placeholder older ``pv scaffold`` versions wrote: ``pytest.fail("ID not yet written: …")``
_LEGACY_PLACEHOLDER = re.compile(r"\bnot yet written: write a test\b")


def classify_raised(raised: Raised, environment: frozenset[str] = frozenset()) -> TestVerdict:
    """What one exception raised in a test's call phase means.

    ``environment`` holds further ``module:Qualname`` classes declared environmental (the
    marker's ``environment=`` and the ``provable_environment_errors`` ini option).
    """
    names = set(raised.types)
    if NOT_WRITTEN_TYPE in names:
        return TestVerdict.NOT_WRITTEN
    if PYTEST_FAILED_TYPE in names and _LEGACY_PLACEHOLDER.search(raised.message):
        return TestVerdict.NOT_WRITTEN
    if names & (ENVIRONMENT_TYPES | environment):
        return TestVerdict.NOT_CHECKED
    if "builtins:OSError" in names and raised.errno in MACHINE_ERRNOS:
        return TestVerdict.NOT_CHECKED
    if PYTEST_FAILED_TYPE in names and _TIMEOUT_MESSAGE.match(raised.message):
        return TestVerdict.NOT_CHECKED
    return TestVerdict.REFUTED


def classify_failure(
    when: str, raised: tuple[Raised, ...], environment: frozenset[str] = frozenset()
) -> TestVerdict:
    """What a failed test phase means.

    Only the call phase can refute: an error while setting up or tearing down a fixture, a
    worker lost mid-test (``when`` is ``???`` then) or a collection error never does. In the
    call phase an exception group (several failures at once) refutes when any of its leaves
    does; a failure whose exception is unknown (a report from elsewhere) counts as what a
    failed call phase means.
    """
    if when != "call":
        return TestVerdict.NOT_CHECKED
    if not raised:
        return TestVerdict.REFUTED
    verdicts = [classify_raised(r, environment) for r in raised]
    verdict = verdicts[0]
    for v in verdicts[1:]:
        verdict = worst(verdict, v)
    return verdict


def after_rerun(
    first: Raised | None, second: TestVerdict, second_raised: Raised | None
) -> TestVerdict:
    """A refuting failure, re-run once with the same inputs: what the pair means.

    Reproduced (the re-run refutes with the same exception class) → REFUTED; the re-run
    passed, or failed some other way → FLAKY; the re-run could not check → NOT_CHECKED.
    """
    if second is TestVerdict.REFUTED:
        same = first is None or second_raised is None or first.types[:1] == second_raised.types[:1]
        return TestVerdict.REFUTED if same else TestVerdict.FLAKY
    if second is TestVerdict.NOT_CHECKED:
        return TestVerdict.NOT_CHECKED
    return TestVerdict.FLAKY


def falsifier_outcome(verdicts: Iterable[TestVerdict]) -> Outcome | None:
    """The falsifier outcome that a set of test verdicts forces, or None when only passes and
    skips were seen (the coverage rules of ``plan.aggregate`` decide those)."""
    seen = set(verdicts)
    for verdict, outcome in (
        (TestVerdict.REFUTED, Outcome.FAILED),
        (TestVerdict.NOT_CHECKED, Outcome.NOT_CHECKED),
        (TestVerdict.FLAKY, Outcome.FLAKY),
        (TestVerdict.NOT_WRITTEN, Outcome.NOT_WRITTEN),
    ):
        if verdict in seen:
            return outcome
    return None
