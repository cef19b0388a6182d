"""ModelConfig extras, Mistral, presets, and the fail-fast shape check; config falsifiers red."""

from __future__ import annotations

import dataclasses

import pytest

from aprlib import ShapeMismatchError, check_weights_match, expected_shapes, qwen2_0_5b
from aprlib.config import modelconfig as config_mod
from aprlib.config import presets
from aprlib.config.modelconfig import from_gguf_kv, from_hf, to_gguf_kv, to_hf
from falsifiers import test_model_config_v1 as fals

MISTRAL_7B = {  # mistralai/Mistral-7B-v0.1
    "architectures": ["MistralForCausalLM"],
    "bos_token_id": 1,
    "eos_token_id": 2,
    "hidden_act": "silu",
    "hidden_size": 4096,
    "intermediate_size": 14336,
    "max_position_embeddings": 32768,
    "model_type": "mistral",
    "num_attention_heads": 32,
    "num_hidden_layers": 32,
    "num_key_value_heads": 8,
    "rms_norm_eps": 1e-05,
    "rope_theta": 10000.0,
    "sliding_window": 4096,
    "tie_word_embeddings": False,
    "vocab_size": 32000,
}


def test_mistral_is_its_own_family_run_by_llama_cpp_as_llama():
    cfg = from_hf(MISTRAL_7B)
    assert cfg.architecture == "mistral" and cfg.gguf_architecture == "llama"
    assert cfg.sliding_window == 4096 and cfg.layer_types is None and not cfg.qkv_bias
    assert [cfg.layer_window(i) for i in (0, 31)] == [4096, 4096]
    assert from_hf(to_hf(cfg)) == cfg
    assert to_hf(cfg)["model_type"] == "mistral"  # as llama, transformers drops the window
    kv = to_gguf_kv(cfg)
    assert kv["general.architecture"] == "llama" and kv["llama.attention.sliding_window"] == 4096
    assert from_gguf_kv(kv, has_output_tensor=True) == cfg


def test_llama_has_no_window_whatever_its_config_holds():
    """transformers' LlamaConfig ignores ``sliding_window``: so do we."""
    cfg = from_hf({**MISTRAL_7B, "model_type": "llama", "architectures": ["LlamaForCausalLM"]})
    assert cfg.architecture == "llama" and cfg.sliding_window is None


def test_transformers5_rope_parameters_normalise_to_the_published_form():
    v5 = {k: v for k, v in presets.LLAMA3_2_1B.items() if k not in ("rope_scaling", "rope_theta")}
    v5["rope_parameters"] = {**presets.LLAMA3_2_1B["rope_scaling"], "rope_theta": 500000.0}
    assert from_hf(v5) == from_hf(presets.LLAMA3_2_1B)
    plain = {**presets.QWEN2_5_0_5B, "rope_parameters": {"rope_type": "default", "rope_theta": 1e6}}
    assert from_hf(plain).rope_scaling is None


def test_qwen2_sliding_window_counts_only_when_in_use_and_from_max_window_layers_on():
    """transformers' Qwen2: windowed layers are those from ``max_window_layers`` on, and only
    with ``use_sliding_window`` (the published 0.5B's 24 of 24 layers: none)."""
    assert from_hf(presets.QWEN2_5_0_5B).sliding_window is None
    assert from_hf({**presets.QWEN2_5_0_5B, "use_sliding_window": True}).sliding_window is None
    cfg = from_hf({**presets.QWEN2_5_0_5B, "use_sliding_window": True, "max_window_layers": 20})
    assert cfg.sliding_window == 32768
    assert [cfg.layer_window(i) for i in (19, 20, 23)] == [None, 32768, 32768]
    assert from_hf(to_hf(cfg)) == cfg
    assert from_gguf_kv(to_gguf_kv(cfg), has_output_tensor=False) == cfg
    every = from_hf({**presets.QWEN2_5_0_5B, "use_sliding_window": True, "max_window_layers": 0})
    assert every.sliding_window == 32768 and every.layer_types is None


def test_layer_types_name_each_layer_and_need_a_window():
    from aprlib.config.modelconfig import ConfigValueError

    types = ["sliding_attention", "full_attention"] * 12
    cfg = from_hf({**presets.QWEN2_5_0_5B, "use_sliding_window": True, "layer_types": types})
    assert cfg.layer_types == tuple(types) and cfg.layer_window(1) is None
    for bad in (types[:-1], ["sliding_attention", "chunked_attention"] * 12):
        with pytest.raises(ConfigValueError, match="layer_types"):
            from_hf({**presets.QWEN2_5_0_5B, "use_sliding_window": True, "layer_types": bad})
    with pytest.raises(ConfigValueError, match="sliding layers need a sliding_window"):
        dataclasses.replace(cfg, sliding_window=None)


def test_llama_cpp_rope_scaling_keys_are_read_without_ours():
    kv = to_gguf_kv(dataclasses.replace(qwen2_0_5b(), rope_scaling=None))
    kv.update({"qwen2.rope.scaling.type": "yarn", "qwen2.rope.scaling.factor": 4.0})
    kv["qwen2.rope.scaling.original_context_length"] = 32768
    got = from_gguf_kv(kv, has_output_tensor=False).rope_scaling
    assert got == {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 32768}


def test_unknown_scaling_type_is_never_written_where_llama_cpp_reads():
    kv = to_gguf_kv(config_mod.llama3_2_1b())
    assert "llama.rope.scaling.type" not in kv  # llama.cpp asserts on an unknown type
    assert from_gguf_kv(kv, has_output_tensor=False) == config_mod.llama3_2_1b()


def test_shape_mismatch_names_every_field():
    cfg = qwen2_0_5b()
    weights = expected_shapes(cfg)
    wrong = dataclasses.replace(
        cfg, hidden_size=1024, intermediate_size=4096, num_key_value_heads=7, vocab_size=1000
    )
    with pytest.raises(ShapeMismatchError) as err:
        check_weights_match(wrong, weights, "m.apr")
    text = str(err.value)
    for needle in (
        "hidden_size: config 1024, weights 896",
        "intermediate_size: config 4096, weights 4864",
        "num_key_value_heads: config 7, weights 2",
        "vocab_size: config 1000, weights 151936",
    ):
        assert needle in text, text
    assert str(err.value).startswith("m.apr")


def test_shape_mismatch_names_tie_bias_and_layer_count():
    cfg = qwen2_0_5b()
    weights = expected_shapes(dataclasses.replace(cfg, tie_word_embeddings=False))
    weights = {k: v for k, v in weights.items() if ".bias" not in k and ".23." not in k}
    with pytest.raises(ShapeMismatchError) as err:
        check_weights_match(cfg, weights)
    fields = [f for f, _, _ in err.value.mismatches]
    assert fields == ["num_hidden_layers", "attention_bias", "tie_word_embeddings"]


def test_single_tensor_mismatch_is_named_when_fields_agree():
    cfg = qwen2_0_5b()
    weights = dict(expected_shapes(cfg))
    weights["model.layers.3.mlp.down_proj.weight"] = (896, 4800)
    with pytest.raises(ShapeMismatchError, match=r"layers\.3\.mlp\.down_proj.*\[896, 4864\]"):
        check_weights_match(cfg, weights)


# --- the model-config falsifiers turn red on injected defects ----------------------------


def test_config_001_catches_an_untied_preset(monkeypatch):
    monkeypatch.setitem(presets.QWEN2_5_0_5B, "tie_word_embeddings", False)
    with pytest.raises(AssertionError, match="tie_word_embeddings"):
        fals.check_preset(config_mod.qwen2_0_5b(), fals.PUBLISHED["qwen2_0_5b"])


def test_config_001_catches_a_dropped_rope_scaling(monkeypatch):
    monkeypatch.setitem(presets.LLAMA3_2_1B, "rope_scaling", None)
    with pytest.raises(AssertionError, match="rope_scaling"):
        fals.check_preset(config_mod.llama3_2_1b(), fals.PUBLISHED["llama3_2_1b"])


def test_config_002_catches_config_json_without_scaling(monkeypatch):
    real = config_mod.to_hf

    def lossy(cfg):
        return {k: v for k, v in real(cfg).items() if k != "rope_scaling"}

    monkeypatch.setattr(fals, "to_hf", lossy)
    with pytest.raises(AssertionError):
        fals.check_transformers_reads_it(config_mod.llama3_2_1b())


@pytest.mark.parametrize("dropped", ["aprlib.rope_scaling", "aprlib.attention_bias"])
def test_config_003_catches_a_field_gguf_drops(monkeypatch, tmp_path, dropped):
    import aprlib.formats.gguf  # the GGUF writer (after issue 8's one module per format)

    monkeypatch.setattr(aprlib.formats.gguf, "to_gguf_kv", _without(config_mod.to_gguf_kv, dropped))
    variant = "llama3-scaling" if "rope" in dropped else "qwen2-nobias-yarn"
    with pytest.raises(AssertionError, match="gguf changed config fields"):
        fals.check_round_trip(fals.VARIANTS[variant], tmp_path)


def _without(fn, key):
    def lossy(cfg):
        kv = fn(cfg)
        kv.pop(key, None)
        return kv

    return lossy
