"""How each family's config is read and written as transformers and llama.cpp read it: the
cases a review of the families change found (each failed before its fix)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch

from aprlib import GgufFormatError, Transformer, convert, open_model
from aprlib.config.modelconfig import (
    ConfigError,
    UnsupportedArchitecture,
    from_gguf_kv,
    from_hf,
    llama_cpp_graph_gaps,
    to_gguf_kv,
    to_hf,
)
from aprlib.formats.norm_offset import shifted, unshifted
from falsifiers.test_gguf_real_files_v1 import rewrite_gguf

TOKENS = [3, 17, 42, 5, 88, 1, 60, 29, 11, 70, 2, 9]
BASE = dict(
    vocab_size=96,
    hidden_size=64,
    intermediate_size=96,
    num_hidden_layers=6,
    num_attention_heads=4,
    num_key_value_heads=2,
    head_dim=16,
    rope_theta=1e4,
)


def hf(model_type: str, cls: str, **more) -> dict:
    return {**BASE, "model_type": model_type, "architectures": [cls], **more}


def windows(cfg) -> list:
    return [cfg.layer_window(i) for i in range(cfg.num_hidden_layers)]


@pytest.mark.parametrize(
    ("arch", "layers", "want"),
    [
        ("gemma3_text", 6, [8, 8, 8, 8, 8, None]),  # llama.cpp's default: 5 of 6
        ("gemma2", 4, [8, None, 8, None]),  # every other
    ],
)
def test_a_gemma_gguf_without_a_pattern_key_gets_llama_cpps_pattern(
    tiny_factory, tmp_path, arch, layers, want
):
    """llama.cpp's converter writes the window and no pattern: llama.cpp applies its
    family's default pattern, and so must we (we windowed every layer)."""
    tiny = tiny_factory(
        arch,
        tied=True,
        num_hidden_layers=layers,
        sliding_window=8,
        query_pre_attn_scalar=16,
    )
    convert(tiny.folder, tmp_path / "m.gguf")
    lean = rewrite_gguf(
        tmp_path / "m.gguf",
        tmp_path / "lean.gguf",
        {f"{'gemma3' if arch == 'gemma3_text' else arch}.attention.sliding_window_pattern"},
    )
    with open_model(lean) as m:
        assert windows(m.config) == want
    net = Transformer.from_file(lean)
    with torch.no_grad():
        gap = (net(torch.tensor([TOKENS])) - tiny.model(torch.tensor([TOKENS])).logits).abs()
    assert float(gap.max()) < 1e-4


def test_a_gemma3_with_no_windowed_layer_opens_and_round_trips(tiny_factory, tmp_path):
    tiny = tiny_factory("gemma3_text", sliding_window_pattern=1, query_pre_attn_scalar=16)
    convert(tiny.folder, tmp_path / "m.gguf")
    with open_model(tmp_path / "m.gguf") as m, open_model(tiny.folder) as src:
        assert m.config == src.config and m.config.sliding_window is None
        back = from_hf(to_hf(m.config))
    assert back == src.config


def test_gemma2_soft_caps_turned_off_stay_off_and_the_note_says_llama_cpp_caps(tiny_factory):
    cfg = from_hf(
        hf("gemma2", "Gemma2ForCausalLM", attn_logit_softcapping=None, final_logit_softcapping=None)
    )
    assert cfg.attn_logit_softcapping is None and cfg.final_logit_softcapping is None
    assert from_gguf_kv(to_gguf_kv(cfg), has_output_tensor=False) == cfg
    gaps = llama_cpp_graph_gaps(cfg)
    assert any(g.startswith("attn_logit_softcapping none: llama.cpp's gemma2") for g in gaps)


def test_defaults_are_the_transformers_classes():
    gemma = from_hf(hf("gemma3_text", "Gemma3ForCausalLM", hidden_act="silu"))
    assert gemma.hidden_act == "gelu_pytorch_tanh"  # Gemma reads hidden_activation only
    assert from_hf(hf("mistral", "MistralForCausalLM")).sliding_window == 4096
    gemma2 = from_hf(
        hf("gemma2", "Gemma2ForCausalLM", num_hidden_layers=4, sliding_window_pattern=3)
    )
    assert windows(gemma2) == [4096, None, 4096, None]  # Gemma 2 ignores the key
    assert from_hf(hf("olmo2", "Olmo2ForCausalLM")).rms_norm_eps == 1e-5


@pytest.mark.parametrize(
    ("config", "error", "said"),
    [
        (
            hf(
                "qwen2",
                "Qwen2ForCausalLM",
                use_sliding_window=False,
                sliding_window=4,
                layer_types=["sliding_attention"] * 6,
            ),
            ConfigError,
            "use_sliding_window is false",
        ),
        (
            hf("gemma2", "Gemma2ForCausalLM", sliding_window=None),
            UnsupportedArchitecture,
            "sliding layers and no sliding_window",
        ),
        (
            hf(
                "gemma3_text",
                "Gemma3ForCausalLM",
                rope_parameters={
                    "full_attention": {"rope_type": "default", "rope_theta": 1e6},
                    "sliding_attention": {"rope_type": "linear", "factor": 2.0, "rope_theta": 1e4},
                },
            ),
            ConfigError,
            "sliding_attention.rope_type 'linear'",
        ),
    ],
    ids=["qwen-sliding-types-off", "gemma2-no-window", "gemma3-scaled-local-rope"],
)
def test_configs_transformers_cannot_run_as_said_are_refused(config, error, said):
    with pytest.raises(error, match=said):
        from_hf(config)


def gguf_kv(arch: str = "gemma3_text", **changes) -> dict:
    cfg = from_hf(
        hf(
            arch,
            {
                "gemma3_text": "Gemma3ForCausalLM",
                "mistral": "MistralForCausalLM",
                "olmo2": "Olmo2ForCausalLM",
            }[arch],
            sliding_window=8,
        )
    )
    kv = to_gguf_kv(cfg)
    kv.update(changes)
    return kv


@pytest.mark.parametrize("pattern", [[1.5] * 6, ["a"] * 6, [True] * 5, "six", -3], ids=repr)
def test_a_hostile_window_pattern_is_named(pattern):
    with pytest.raises(ConfigError, match="sliding_window_pattern") as info:
        from_gguf_kv(gguf_kv(**{"gemma3.attention.sliding_window_pattern": pattern}), False)
    assert info.value.field == "layer_types"


def test_windows_a_family_cannot_say_are_refused():
    kv = gguf_kv("mistral", **{"llama.attention.sliding_window_pattern": [True, False] * 3})
    with pytest.raises(ConfigError, match="windows every layer"):
        from_gguf_kv(kv, True)
    olmo = to_gguf_kv(from_hf(hf("olmo2", "Olmo2ForCausalLM")))
    olmo["olmo2.attention.sliding_window"] = 8  # how llama.cpp's converter writes OLMo 3
    with pytest.raises(UnsupportedArchitecture, match="OLMo 3"):
        from_gguf_kv(olmo, True)


def test_gemma_only_keys_are_not_read_for_a_family_llama_cpp_does_not_read_them_for():
    kv = to_gguf_kv(from_hf(hf("qwen2", "Qwen2ForCausalLM")))
    kv.update({"qwen2.final_logit_softcapping": 5.0, "qwen2.rope.freq_base_swa": 10.0})
    cfg = from_gguf_kv(kv, True)
    assert cfg.final_logit_softcapping is None and cfg.rope_local_theta is None


def _with_residual(src: Path, dst: Path, values) -> Path:
    from gguf import GGUFValueType

    key = "aprlib.norm_residual.blk.0.attn_norm.weight"
    sub = {str: GGUFValueType.STRING, bool: GGUFValueType.BOOL}.get(
        type(values[0]), GGUFValueType.FLOAT32
    )
    return rewrite_gguf(src, dst, add={key: (values, GGUFValueType.ARRAY, sub)})


@pytest.mark.parametrize("kind", ["strings", "bools", "nan", "moves-the-weight"])
def test_a_residual_that_is_not_a_rounding_is_refused(tiny_factory, tmp_path, kind):
    tiny = tiny_factory("gemma3_text", query_pre_attn_scalar=16)
    convert(tiny.folder, tmp_path / "m.gguf")
    n = tiny.model.config.hidden_size
    values = {
        "strings": ["0.25"] * n,
        "bools": [True] * n,
        "nan": [float("nan")] * n,
        "moves-the-weight": [-0.25] * n,  # a stored +0.25 hidden by its "residual"
    }[kind]
    bad = _with_residual(tmp_path / "m.gguf", tmp_path / "bad.gguf", values)
    with pytest.raises(GgufFormatError) as info, open_model(bad) as m:
        m.tensors["model.layers.0.input_layernorm.weight"].to_float32()
    assert info.value.field == "aprlib.norm_residual.blk.0.attn_norm.weight"


def test_a_quantised_gemma_norm_is_refused_not_quantised_again(tiny_factory, tmp_path):
    from gguf import GGMLQuantizationType
    from gguf.quants import quantize

    tiny = tiny_factory("gemma3_text", hidden_size=64, query_pre_attn_scalar=16)
    convert(tiny.folder, tmp_path / "m.gguf")

    def quantised(name: str, data, kind):
        if name != "blk.0.attn_norm.weight":
            return data, kind
        values = np.asarray(data, dtype=np.float32).reshape(1, -1)
        return quantize(values, GGMLQuantizationType.Q8_0), GGMLQuantizationType.Q8_0

    rewrite_gguf(tmp_path / "m.gguf", tmp_path / "q.gguf", tensor=quantised)
    with pytest.raises(GgufFormatError, match="cannot be taken off") as info:
        open_model(tmp_path / "q.gguf")
    assert info.value.field == "type"


def test_a_negative_zero_norm_weight_comes_back_negative_zero():
    w = np.array([-0.0, 0.0, 1e-30, -1e-30], dtype=np.float32)
    s, r = shifted(w, 1.0)
    back = unshifted(s, 1.0, r)
    assert np.array_equal(np.signbit(back), np.signbit(w)) and np.array_equal(back, w)


def test_the_attention_scale_is_passed_only_where_it_is_not_head_dims():
    cfg = from_hf(hf("gemma3_text", "Gemma3ForCausalLM", query_pre_attn_scalar=16))
    net = Transformer(cfg)
    assert "scale" not in net._attention_options(0, 3)
    other = Transformer(dataclasses.replace(cfg, query_pre_attn_scalar=24))
    assert other._attention_options(0, 3)["scale"] == 24**-0.5
