"""Falsifiers of kernel-swiglu-v1: the SwiGLU kernel is as exact as torch eager."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from falsifiers import kernel_cases as kc
from falsifiers.reproducible import reproducible

SETTINGS = reproducible(25)


@pytest.mark.falsifies("FALSIFY-KSWIGLU-001")
@pytest.mark.parametrize("device", kc.DEVICES)
def test_swiglu_within_earned_bound(device, evidence):
    log = kc.CaseLog()

    @SETTINGS
    @given(
        rows=st.integers(1, 9),
        cols=st.one_of(st.integers(1, 700), st.sampled_from([4864, 8960])),
        dtype=kc.dtypes,
        log_scale=st.floats(-3, 2),
        seed=kc.seeds,
        poison=st.booleans(),
    )
    def run(rows, cols, dtype, log_scale, seed, poison):
        log.check(kc.swiglu_case(rows, cols, dtype, log_scale, seed, device, poison))

    run()
    log.record(evidence)
