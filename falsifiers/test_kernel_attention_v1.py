"""Falsifiers of kernel-attention-v1: causal GQA flash attention is as exact as HF's eager
attention.
"""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from falsifiers import kernel_cases as kc
from falsifiers.reproducible import reproducible

SETTINGS = reproducible(15)


@pytest.mark.falsifies("FALSIFY-KATTN-001")
@pytest.mark.parametrize("device", kc.DEVICES)
def test_attention_within_earned_bound(device, evidence):
    log = kc.CaseLog()

    @SETTINGS
    @given(
        batch=st.integers(1, 2),
        kv_heads=st.integers(1, 2),
        group=st.sampled_from([1, 2, 3, 5]),
        tq=st.integers(1, 80),
        tk_extra=st.sampled_from([0, 0, 1, 17, 90]),
        dim=st.sampled_from([8, 24, 64, 80]),
        dtype=kc.dtypes,
        log_scale=st.floats(-1, 1.5),
        seed=kc.seeds,
    )
    def run(batch, kv_heads, group, tq, tk_extra, dim, dtype, log_scale, seed):
        log.check(
            kc.attention_case(
                batch, kv_heads, group, tq, tk_extra, dim, dtype, log_scale, seed, device
            )
        )

    run()
    log.record(evidence)
