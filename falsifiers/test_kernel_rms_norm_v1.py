"""Falsifiers of kernel-rms-norm-v1: the RMSNorm kernel is as exact as torch eager."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from falsifiers import kernel_cases as kc
from falsifiers.reproducible import reproducible

SETTINGS = reproducible(25)


@pytest.mark.falsifies("FALSIFY-KRMS-001")
@pytest.mark.parametrize("device", kc.DEVICES)
def test_rms_norm_within_earned_bound(device, evidence):
    log = kc.CaseLog()

    @SETTINGS
    @given(
        rows=st.integers(1, 40),
        cols=st.one_of(st.integers(1, 300), st.sampled_from([896, 1536, 4097])),
        dtype=kc.dtypes,
        log_scale=st.floats(-4, 2),
        eps=st.sampled_from([1e-6, 1e-5]),
        seed=kc.seeds,
        poison=st.booleans(),
    )
    def run(rows, cols, dtype, log_scale, eps, seed, poison):
        log.check(kc.rms_norm_case(rows, cols, dtype, log_scale, eps, seed, device, poison))

    run()
    log.record(evidence)
