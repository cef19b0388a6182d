"""Falsifiers of kernel-cross-entropy-v1: fused chunked cross-entropy (loss and gradient) is as
exact as torch eager.
"""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from falsifiers import kernel_cases as kc
from falsifiers.reproducible import reproducible

SETTINGS = reproducible(20)


@pytest.mark.falsifies("FALSIFY-KXENT-001")
@pytest.mark.parametrize("device", kc.DEVICES)
def test_cross_entropy_within_earned_bound(device, evidence):
    log = kc.CaseLog()

    @SETTINGS
    @given(
        rows=st.integers(1, 20),
        vocab=st.one_of(st.integers(2, 5000), st.sampled_from([4097, 12289])),
        dtype=kc.dtypes,
        log_scale=st.floats(-2, 2.5),
        seed=kc.seeds,
    )
    def run(rows, vocab, dtype, log_scale, seed):
        log.check(*kc.cross_entropy_case(rows, vocab, dtype, log_scale, seed, device))

    run()
    log.record(evidence)
