"""Falsifiers of model-config-v1: presets are the published configs; configs survive files."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from aprlib import (
    ConversionError,
    DType,
    ModelConfig,
    llama3_2_1b,
    model_from_arrays,
    open_model,
    qwen2_0_5b,
    qwen2_1_5b,
    qwen2_7b,
    write_model,
)
from aprlib.compare.shapes import expected_shapes
from aprlib.config.modelconfig import hf_cannot_say, to_hf

LLAMA3_SCALING = {
    "rope_type": "llama3",
    "factor": 32.0,
    "low_freq_factor": 1.0,
    "high_freq_factor": 4.0,
    "original_max_position_embeddings": 8192,
}

#: the published values, typed in from the hub's config.json files (not from aprlib)
PUBLISHED: dict[str, dict[str, Any]] = {
    "qwen2_0_5b": dict(
        architecture="qwen2",
        hidden_size=896,
        intermediate_size=4864,
        num_hidden_layers=24,
        num_attention_heads=14,
        num_key_value_heads=2,
        vocab_size=151936,
        rope_theta=1e6,
        rms_norm_eps=1e-6,
        tie_word_embeddings=True,
        max_position_embeddings=32768,
        attention_head_dim=64,
        qkv_bias=True,
        hidden_act="silu",
        sliding_window=None,
        rope_scaling=None,
    ),
    "qwen2_1_5b": dict(
        architecture="qwen2",
        hidden_size=1536,
        intermediate_size=8960,
        num_hidden_layers=28,
        num_attention_heads=12,
        num_key_value_heads=2,
        vocab_size=151936,
        rope_theta=1e6,
        rms_norm_eps=1e-6,
        tie_word_embeddings=True,
        attention_head_dim=128,
        qkv_bias=True,
        sliding_window=None,
        rope_scaling=None,
    ),
    "qwen2_7b": dict(
        architecture="qwen2",
        hidden_size=3584,
        intermediate_size=18944,
        num_hidden_layers=28,
        num_attention_heads=28,
        num_key_value_heads=4,
        vocab_size=152064,
        rope_theta=1e6,
        rms_norm_eps=1e-6,
        tie_word_embeddings=False,
        attention_head_dim=128,
        qkv_bias=True,
        sliding_window=None,
        rope_scaling=None,
    ),
    "llama3_2_1b": dict(
        architecture="llama",
        hidden_size=2048,
        intermediate_size=8192,
        num_hidden_layers=16,
        num_attention_heads=32,
        num_key_value_heads=8,
        vocab_size=128256,
        rope_theta=5e5,
        rms_norm_eps=1e-5,
        tie_word_embeddings=True,
        attention_head_dim=64,
        qkv_bias=False,
        mlp_bias=False,
        rope_scaling=LLAMA3_SCALING,
    ),
}

PRESETS: dict[str, Callable[[], ModelConfig]] = {
    "qwen2_0_5b": qwen2_0_5b,
    "qwen2_1_5b": qwen2_1_5b,
    "qwen2_7b": qwen2_7b,
    "llama3_2_1b": llama3_2_1b,
}


def check_preset(cfg: ModelConfig, published: dict[str, Any]) -> None:
    wrong = {k: (getattr(cfg, k), v) for k, v in published.items() if getattr(cfg, k) != v}
    assert not wrong, f"preset disagrees with the published config (ours, published): {wrong}"


def check_transformers_reads_it(cfg: ModelConfig) -> None:
    """transformers' own config class, fed our config.json, must describe the same model."""
    from transformers import AutoConfig

    hf = to_hf(cfg)
    theirs = AutoConfig.for_model(hf.pop("model_type"), **hf)
    for ours, key in (
        ("vocab_size", "vocab_size"),
        ("hidden_size", "hidden_size"),
        ("intermediate_size", "intermediate_size"),
        ("num_hidden_layers", "num_hidden_layers"),
        ("num_attention_heads", "num_attention_heads"),
        ("num_key_value_heads", "num_key_value_heads"),
        ("rms_norm_eps", "rms_norm_eps"),
        ("tie_word_embeddings", "tie_word_embeddings"),
    ):
        assert getattr(cfg, ours) == getattr(theirs, key), ours
    rope = dict(theirs.rope_parameters)
    assert rope.pop("rope_theta") == cfg.rope_theta
    if cfg.rope_scaling is None:
        assert rope.get("rope_type") == "default", rope
    else:
        assert rope == cfg.rope_scaling, (rope, cfg.rope_scaling)
    head_dim = getattr(theirs, "head_dim", None) or theirs.hidden_size // theirs.num_attention_heads
    assert head_dim == cfg.attention_head_dim
    if cfg.architecture == "llama":
        assert theirs.attention_bias == cfg.qkv_bias
        assert theirs.mlp_bias == cfg.mlp_bias
    assert getattr(theirs, "sliding_window", None) in (None, cfg.sliding_window) or not getattr(
        theirs, "use_sliding_window", True
    )


@pytest.mark.falsifies("FALSIFY-CONFIG-001")
@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_preset_equals_published_config(name):
    check_preset(PRESETS[name](), PUBLISHED[name])


@pytest.mark.falsifies("FALSIFY-CONFIG-002")
@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_transformers_reads_our_config_the_same(name):
    check_transformers_reads_it(PRESETS[name]())


def random_model(cfg: ModelConfig, seed: int = 0):
    """Random float32 weights of exactly the shapes ``cfg`` implies, in memory."""
    rng = np.random.default_rng(seed)
    arrays = {
        name: (DType.F32, shape, rng.standard_normal(shape, dtype=np.float32))
        for name, shape in expected_shapes(cfg).items()
    }
    return model_from_arrays(arrays, cfg)


TINY = dict(
    vocab_size=96,
    hidden_size=64,
    intermediate_size=160,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    head_dim=16,
    max_position_embeddings=256,
    rope_theta=10000.0,
    rms_norm_eps=1e-6,
)

VARIANTS: dict[str, ModelConfig] = {
    "qwen2-untied": ModelConfig("qwen2", tie_word_embeddings=False, **TINY),
    "qwen2-tied-window": ModelConfig("qwen2", tie_word_embeddings=True, sliding_window=64, **TINY),
    "llama3-scaling": ModelConfig(
        "llama",
        tie_word_embeddings=True,
        rope_scaling={**LLAMA3_SCALING, "original_max_position_embeddings": 64},
        **TINY,
    ),
    "llama-bias-linear": ModelConfig(
        "llama",
        tie_word_embeddings=False,
        attention_bias=True,
        mlp_bias=True,
        rope_scaling={"rope_type": "linear", "factor": 2.0},
        **TINY,
    ),
    "qwen2-nobias-yarn": ModelConfig(
        "qwen2",
        tie_word_embeddings=False,
        attention_bias=False,
        rope_scaling={"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 64},
        **TINY,
    ),
}


def round_trip_configs(cfg: ModelConfig, work: Path) -> dict[str, ModelConfig | None]:
    model = random_model(cfg)
    (work / "st").mkdir(parents=True, exist_ok=True)
    out = {}
    for fmt, path in (
        ("apr", work / "m.apr"),
        ("gguf", work / "m.gguf"),
        ("safetensors", work / "st" / "model.safetensors"),
    ):
        if fmt == "safetensors" and hf_cannot_say(cfg):
            # an HF config.json cannot say it (transformers' Qwen2 ignores the key): the
            # writer must refuse by name rather than write a folder transformers misreads
            with pytest.raises(ConversionError, match=hf_cannot_say(cfg) or ""):
                write_model(model, path)
            assert not path.exists() and not (path.parent / "config.json").exists()
            continue
        write_model(model, path)
        with open_model(path) as back:
            out[fmt] = back.config
    return out


def check_round_trip(cfg: ModelConfig, work: Path) -> None:
    for fmt, back in round_trip_configs(cfg, work).items():
        assert back is not None, f"{fmt}: config lost"
        diff = {
            f.name: (getattr(cfg, f.name), getattr(back, f.name))
            for f in dataclasses.fields(cfg)
            if getattr(cfg, f.name) != getattr(back, f.name) and f.name != "torch_dtype"
        }
        assert not diff, f"{fmt} changed config fields (written, read): {diff}"


@pytest.mark.falsifies("FALSIFY-CONFIG-003")
@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_config_round_trips_through_every_format(variant, tmp_path):
    check_round_trip(VARIANTS[variant], tmp_path)
