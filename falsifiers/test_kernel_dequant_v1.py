"""Falsifiers of kernel-dequant-v1: Q8_0/Q4_K dequantisation is bit-exact against the gguf package;
the fused matvec is as exact as torch eager.
"""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from falsifiers import kernel_cases as kc
from falsifiers.reproducible import reproducible

SETTINGS = reproducible(15)


@pytest.mark.falsifies("FALSIFY-KDEQUANT-001")
@pytest.mark.parametrize("device", kc.DEVICES)
@pytest.mark.parametrize("kind", ["q8_0", "q4_k"])
def test_dequantize_bit_exact_against_gguf(kind, device, evidence):
    checked: list[int] = []

    @SETTINGS
    @given(
        rows=st.integers(1, 6),
        blocks=st.integers(1, 9),
        log_scale=st.floats(-7, 4),
        seed=kc.seeds,
    )
    def run(rows, blocks, log_scale, seed):
        checked.append(seed)
        wrong = kc.dequant_mismatches(kind, rows, blocks, log_scale, seed, device)
        assert wrong == 0, f"{kind} seed {seed}: {wrong} elements differ from gguf's"

    run()
    evidence.record(cases=len(checked), seeds=sorted(set(checked)), mismatched_elements=0)


@pytest.mark.falsifies("FALSIFY-KDEQUANT-002")
@pytest.mark.parametrize("device", kc.DEVICES)
def test_dequantize_matvec_within_earned_bound(device, evidence):
    log = kc.CaseLog()

    @SETTINGS
    @given(
        kind=st.sampled_from(["q8_0", "q4_k"]),
        rows=st.integers(1, 40),
        blocks=st.integers(1, 12),
        log_scale=st.floats(-3, 2),
        seed=kc.seeds,
    )
    def run(kind, rows, blocks, log_scale, seed):
        log.check(kc.matvec_case(kind, rows, blocks, log_scale, seed, device))

    run()
    log.record(evidence)
