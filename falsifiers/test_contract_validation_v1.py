"""Falsifiers of contract-validation-v1: what ``pv validate`` promises about what it reads."""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from falsifiers.reproducible import reproducible
from provable.contracts.lifecycle import ContractStatus, FalsifierStatus, derive_contract_status
from provable.contracts.validate import Report, discover, validate_paths

SHARED = Path(__file__).resolve().parents[2] / "shared" / "compat" / "provable-contracts"
EXAMPLES = reproducible(150)

Validator = Callable[[list[Path]], Report]


def validate_files(paths: list[Path]) -> Report:
    return validate_paths(paths)


def contract_text(declared: ContractStatus | None, falsifiers: list[FalsifierStatus]) -> str:
    lines = ["metadata:", '  version: "1.0.0"']
    if declared is not None:
        lines.append(f"  status: {declared.value}")
    lines.append("falsification_tests:" if falsifiers else "falsification_tests: []")
    for i, status in enumerate(falsifiers, 1):
        lines += [
            f"  - id: FALSIFY-GEN-{i:03d}",
            '    rule: "r"',
            '    prediction: "p"',
            f"    status: {status.value}",
        ]
        if status in (FalsifierStatus.DISCHARGED, FalsifierStatus.FALSIFIED):
            lines.append(f"    evidence: evidence/{i}.json")
    return "\n".join(lines) + "\n"


def check_status_drift(validate: Validator = validate_files) -> None:
    folder = Path(tempfile.mkdtemp(prefix="pv-drift-"))
    (folder / "pyproject.toml").write_text("")
    (folder / "evidence").mkdir()
    for i in range(1, 9):
        (folder / "evidence" / f"{i}.json").write_text('{"outcome": "passed"}')
    path = folder / "gen-v1.yaml"

    @EXAMPLES
    @given(
        st.sampled_from(list(ContractStatus)),
        st.lists(
            st.sampled_from(
                [FalsifierStatus.PROPOSED, FalsifierStatus.PARTIAL, FalsifierStatus.DISCHARGED]
            ),
            max_size=8,
        ),
    )
    def prop(declared, falsifiers):
        path.write_text(contract_text(declared, falsifiers))
        report = validate([path])
        drift = [f for f in report.findings if f.rule == "status-derived"]
        should = derive_contract_status(falsifiers, declared) is not declared
        assert bool(drift) == should, (declared, falsifiers, [f.render() for f in drift])
        assert report.errors == len(drift), [f.render() for f in report.findings]

    prop()


CLEAN = contract_text(
    ContractStatus.PARTIAL_ALGORITHM_LEVEL, [FalsifierStatus.PARTIAL, FalsifierStatus.PROPOSED]
).encode()


def check_hostile_bytes(validate: Validator = validate_files) -> None:
    folder = Path(tempfile.mkdtemp(prefix="pv-hostile-"))
    path = folder / "hostile-v1.yaml"

    @EXAMPLES
    @given(
        st.one_of(
            st.integers(0, len(CLEAN)).map(lambda n: CLEAN[:n]),
            st.tuples(st.integers(0, len(CLEAN) - 1), st.binary(min_size=1, max_size=4)).map(
                lambda t: CLEAN[: t[0]] + t[1] + CLEAN[t[0] + len(t[1]) :]
            ),
            st.binary(max_size=200),
        )
    )
    def prop(raw):
        path.write_bytes(raw)
        report = validate([path])  # must not raise
        for finding in report.findings:
            assert finding.line >= 1 and finding.path.endswith("hostile-v1.yaml")
            assert "Traceback" not in finding.message

    prop()


def check_public_dialect(validate: Validator = validate_files) -> Report:
    report = validate(discover([str(SHARED)]))
    errors = [f.render() for f in report.findings if f.severity == "error"]
    assert report.files >= 92 and len(report.contracts) >= 91
    assert errors == [], errors[:5]
    assert [f.rule for f in report.findings if f.severity == "note"] == ["binding-registry"]
    return report


@pytest.mark.falsifies("FALSIFY-VALIDATE-001")
def test_public_dialect_validates_with_zero_errors(evidence):
    if not SHARED.is_dir():
        pytest.skip("../shared/compat/provable-contracts is absent (a user's clone)")
    report = check_public_dialect()
    evidence.record(
        files=report.files,
        contracts=len(report.contracts),
        errors=report.errors,
        warnings=report.warnings,
    )


@pytest.mark.falsifies("FALSIFY-VALIDATE-002")
def test_status_drift_is_reported_exactly_when_it_exists():
    check_status_drift()


@pytest.mark.falsifies("FALSIFY-VALIDATE-003")
def test_hostile_bytes_give_findings_not_exceptions():
    check_hostile_bytes()
