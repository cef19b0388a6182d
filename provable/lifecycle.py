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
    PASSED = "passed"
    FAILED = "failed"
    SKIPPED = "skipped"
    NOT_RUN = "not_run"
    INCOMPLETE = "incomplete"  # passed, but not every bound test or case ran: never promotes


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
    if outcome in (Outcome.SKIPPED, Outcome.NOT_RUN, Outcome.INCOMPLETE):
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
