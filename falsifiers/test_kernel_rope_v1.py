"""Falsifiers of kernel-rope-v1: RoPE (rotate_half, llama3 scaling) is as exact as torch eager, and
its cos/sin are transformers'.
"""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from falsifiers import kernel_cases as kc
from falsifiers.reproducible import reproducible

SETTINGS = reproducible(25)


@pytest.mark.falsifies("FALSIFY-KROPE-001")
@pytest.mark.parametrize("device", kc.DEVICES)
def test_rope_within_earned_bound(device, evidence):
    log = kc.CaseLog()

    @SETTINGS
    @given(
        batch=st.integers(1, 2),
        heads=st.integers(1, 5),
        seq=st.integers(1, 70),
        half=st.integers(1, 40),
        dtype=kc.dtypes,
        llama3=st.booleans(),
        offset=st.integers(0, 300),
        seed=kc.seeds,
    )
    def run(batch, heads, seq, half, dtype, llama3, offset, seed):
        log.check(kc.rope_case(batch, heads, seq, half, dtype, llama3, offset, seed, device))

    run()
    log.record(evidence)


@pytest.mark.falsifies("FALSIFY-KROPE-002")
@pytest.mark.parametrize("scaling", [None, "llama3"])
def test_cos_sin_equal_transformers(scaling, evidence):
    import torch
    from transformers import LlamaConfig
    from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding

    import provable_kernels

    rope_scaling = (
        {
            "rope_type": "llama3",
            "factor": 8.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 8192,
        }
        if scaling
        else None
    )
    config = LlamaConfig(
        hidden_size=256,
        num_attention_heads=2,
        rope_theta=500000.0,
        rope_scaling=rope_scaling,
        max_position_embeddings=131072,
    )
    positions = torch.tensor([0, 1, 7, 100, 2047, 8191, 8192, 20000, 131071])
    cos_hf, sin_hf = LlamaRotaryEmbedding(config)(
        torch.zeros(1, 1, len(positions)), positions[None]
    )
    cos, sin = provable_kernels.rope_cos_sin(128, positions, 500000.0, rope_scaling)
    evidence.record(
        positions=len(positions),
        max_abs_diff=float(max((cos - cos_hf[0]).abs().max(), (sin - sin_hf[0]).abs().max())),
    )
    assert torch.equal(cos, cos_hf[0]) and torch.equal(sin, sin_hf[0])
