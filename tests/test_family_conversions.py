"""What the review of Phi-3 and Qwen3-MoE found (issue 25), each a test that failed before:
quantised routers, legacy Phi-3 rope names, the original context written where transformers
reads it, experts in mixed dtypes, a hostile norm flag, dense layers the weights deny, and
llama.cpp's longrope factors."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

from aprlib import DType, GgufFormatError, convert, model_from_arrays, open_model, write_model
from aprlib.cli.main import main as apr
from aprlib.compare.shapes import contradictions
from aprlib.config.modelconfig import ConfigError, from_gguf_kv, from_hf, to_gguf_kv, to_hf


@pytest.mark.parametrize("dtype", ["q8_0", "q4_k", "f16"])
def test_a_quantised_conversion_keeps_the_router_as_llama_cpp_does(
    tiny_factory, tmp_path, capsys, dtype
):
    tiny = tiny_factory("qwen3_moe", hidden_size=256, moe_intermediate_size=256)
    capsys.readouterr()
    out = tmp_path / "m.gguf"
    assert apr(["convert", str(tiny.folder), str(out), "--dtype", dtype, "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    with open_model(out) as m:
        assert m.tensors["model.layers.0.mlp.gate.weight"].dtype is DType.F32
        assert m.tensors["model.layers.0.mlp.experts.0.up_proj.weight"].dtype.name == dtype.upper()
    if dtype != "f16":  # a quantisation: the router is a fallback, said why
        routers = [f for f in report["fallbacks"] if f["tensor"].endswith("mlp.gate.weight")]
        assert len(routers) == 2 and "never quantises it" in routers[0]["why"]


@pytest.mark.parametrize("legacy", ["su", "yarn"])
def test_phi3s_legacy_rope_names_are_longrope_as_transformers_reads_them(tiny_factory, legacy):
    with open_model(tiny_factory("phi3").folder) as src:
        hf = to_hf(src.config)
    hf["rope_scaling"] = {"type": legacy, "short_factor": [1.0] * 8, "long_factor": [2.0] * 8}
    hf["original_max_position_embeddings"] = 64
    assert from_hf(hf).rope_scaling["rope_type"] == "longrope"


def test_the_original_context_is_written_where_transformers_reads_it_first(tiny_factory):
    """Phi-3's class defaults a top-level original_max_position_embeddings to 4096 and reads
    it before rope_scaling's: a folder written with it only inside ran another model."""
    from transformers import Phi3Config

    with open_model(tiny_factory("phi3").folder) as src:
        hf = to_hf(src.config)
    factors = [1.0] * 8
    hf.update(
        max_position_embeddings=512,
        original_max_position_embeddings=128,
        rope_scaling={"type": "longrope", "short_factor": factors, "long_factor": factors},
    )
    back = to_hf(from_hf(hf))
    assert back["original_max_position_embeddings"] == 128
    config = Phi3Config(**{k: v for k, v in back.items() if k != "model_type"})
    assert config.rope_parameters["original_max_position_embeddings"] == 128


def test_experts_in_mixed_float_dtypes_stack_in_f32_not_the_first_ones(tiny_factory, tmp_path):
    with open_model(tiny_factory("qwen3_moe").folder) as src:
        arrays = {t.name: (t.dtype, t.shape, t.to_float32()) for t in src}
        config = src.config
    name = "model.layers.0.mlp.experts.0.down_proj.weight"
    _, shape, values = arrays[name]
    bf16 = values.astype(np.float32)
    bf16 = (bf16.view(np.uint32) & 0xFFFF0000).view(np.float32)  # exact in BF16
    arrays[name] = (DType.BF16, shape, bf16)
    from aprlib.formats.dtypes import from_float32

    raw = {k: (d, s, from_float32(v, d)) for k, (d, s, v) in arrays.items()}
    write_model(model_from_arrays(raw, config), tmp_path / "mixed.apr")
    report = convert(tmp_path / "mixed.apr", tmp_path / "m.gguf")
    assert any("written F32 (exact for each)" in n for n in report.notes), report.notes
    with open_model(tmp_path / "mixed.apr") as a, open_model(tmp_path / "m.gguf") as b:
        for t in a:
            assert np.array_equal(t.to_float32(), b.tensors[t.name].to_float32()), t.name


@pytest.mark.parametrize("value", ["false", 7])
def test_a_norm_flag_that_is_not_a_bool_is_refused(tiny_factory, value):
    with open_model(tiny_factory("qwen3_moe").folder) as src:
        kv = to_gguf_kv(src.config)
    kv["qwen3moe.expert_weights_norm"] = value
    with pytest.raises(ConfigError, match="norm_topk_prob is"):
        from_gguf_kv(kv, has_output_tensor=True)


@pytest.mark.parametrize(
    ("dense", "first", "holds"),
    [((1,), 1, "a router and experts"), (None, 1, "a dense MLP")],
    ids=["says-dense", "says-sparse"],
)
def test_dense_layers_the_weights_deny_are_named(tiny_factory, dense, first, holds):
    folder = tiny_factory("qwen3_moe", mlp_only_layers=[] if dense else [1]).folder
    with open_model(folder) as src:
        cfg, shapes = src.config, {n: tuple(t.shape) for n, t in src.tensors.items()}
    wrong = dataclasses.replace(cfg, dense_layers=dense)
    found = {c.field: c for c in contradictions(wrong, shapes)}
    assert found["mlp_only_layers"].message.endswith(f"layer {first} holds {holds}")


def test_llama_cpps_longrope_factors_are_refused_naming_longrope(tiny_factory, tmp_path):
    """Phi-3's 128k models, as llama.cpp's converter writes them, carry longrope's factors
    as tensors: the refusal names longrope, not an unknown tensor."""
    from gguf import GGUFReader, GGUFWriter

    convert(tiny_factory("phi3").folder, tmp_path / "m.gguf")
    r = GGUFReader(tmp_path / "m.gguf")
    w = GGUFWriter(str(tmp_path / "longrope.gguf"), "phi3")
    for key, f in r.fields.items():
        if not key.startswith("GGUF.") and key != "general.architecture":
            sub = f.types[-1] if len(f.types) > 1 else None
            w.add_key_value(key, f.contents(), f.types[0], sub_type=sub)
    w.add_tensor("rope_factors_long.weight", np.ones(8, dtype=np.float32))
    for t in r.tensors:
        w.add_tensor(t.name, t.data, raw_shape=t.data.shape, raw_dtype=t.tensor_type)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    with pytest.raises(GgufFormatError, match="longrope") as caught:
        open_model(tmp_path / "longrope.gguf")
    assert caught.value.tensor == "rope_factors_long.weight"


def test_a_routing_tie_is_found_where_bf16_cannot_decide_it(tiny_factory):
    """The one token of the bf16 Qwen3-MoE case whose layer-1 router separates its 2nd and
    3rd experts by 7e-4 of 3.5 (below BF16's step): LLAMACPP-003 leaves it out, and only it."""
    import falsifiers.test_gguf_llamacpp_parity_v1 as parity

    tiny = parity.wide_tiny(tiny_factory, "qwen3_moe", dtype="bfloat16")
    tokens = parity.tokens_for(2)
    assert parity.routing_ties(tiny.safetensors, tokens, parity.BF16_STEP) == [13]
    assert parity.routing_ties(tiny.safetensors, tokens, 2.0**-24) == []  # F32 decides it
    assert parity.routing_ties(tiny_factory("qwen3").safetensors, tokens, 1.0) == []
