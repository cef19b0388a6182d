"""A tiny random Llama with Llama-3.2's rope scaling, for the rope_freqs falsifiers.

head_dim 64 and rope_theta 5e5 as Llama-3.2-1B, so three frequencies sit on the smooth
ramp between the unscaled and the scaled ends (what recovering the scaling from llama.cpp's
``rope_freqs.weight`` needs), and the original context is the default 8192 (the divisors
fix only its ratios to the low/high frequency factors).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

LLAMA3_ROPE: dict[str, Any] = {
    "rope_type": "llama3",
    "rope_theta": 5e5,
    "factor": 32.0,
    "low_freq_factor": 1.0,
    "high_freq_factor": 4.0,
    "original_max_position_embeddings": 8192,
}


def build_llama3_tiny(folder: Path, vocab_size: int = 96, seed: int = 3, context: int = 8192):
    """Every tensor random; GQA (4 heads, 2 kv heads), untied, rows of 256 for Q4_K;
    ``context`` the original context the scaling stretches (16: tokens run past it)."""
    from conftest import build_tiny

    return build_tiny(
        folder,
        "llama",
        tied=False,
        seed=seed,
        vocab_size=vocab_size,
        hidden_size=256,
        intermediate_size=512,
        num_attention_heads=4,
        num_key_value_heads=2,
        rope_theta=LLAMA3_ROPE["rope_theta"],
        rope_parameters={**LLAMA3_ROPE, "original_max_position_embeddings": context},
    )


def hf_rope_scaling() -> dict[str, Any]:
    """The ``rope_scaling`` a config.json carries for ``LLAMA3_ROPE`` (ours, normalised)."""
    return {k: v for k, v in LLAMA3_ROPE.items() if k != "rope_theta"}
