"""Falsifiers of kernel-linear-v1: the tiled linear kernel (with and without bias) is as exact as
torch eager.
"""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from falsifiers import kernel_cases as kc
from falsifiers.reproducible import reproducible

SETTINGS = reproducible(20)


@pytest.mark.falsifies("FALSIFY-KLINEAR-001")
@pytest.mark.parametrize("device", kc.DEVICES)
def test_linear_within_earned_bound(device, evidence):
    log = kc.CaseLog()

    @SETTINGS
    @given(
        m=st.integers(1, 80),
        k=st.integers(1, 300),
        n=st.integers(1, 150),
        bias=st.booleans(),
        dtype=kc.dtypes,
        seed=kc.seeds,
        poison=st.booleans(),
    )
    def run(m, k, n, bias, dtype, seed, poison):
        log.check(kc.linear_case(m, k, n, bias, dtype, seed, device, poison))

    run()
    log.record(evidence)
