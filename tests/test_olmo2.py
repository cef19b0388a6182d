"""OLMo 2 (issue 25): norms after attention and the MLP, q/k RMSNorm over the whole projection.

Parity with transformers is FALSIFY-FWD-001..004, llama.cpp on our GGUF FALSIFY-LLAMACPP-001/003,
llama.cpp's converter output FALSIFY-GGUFREAL-001, gguf-py's names FALSIFY-LAYOUT-003; here:
the capture points of transformers' modules and of llama.cpp's graph, bisect naming a
defect in either, and what llama.cpp will not load.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from aprlib import bisect_module, convert, model_from_arrays, open_model, write_model
from aprlib.cli.main import main as apr
from aprlib.forward.model import capture_graph
from falsifiers.llamacpp_oracle import require_llama_cpp
from tests.family_checks import check_capture_matches_reference

TOKENS = [3, 17, 42, 5, 88, 1, 60, 29, 11]


def test_its_points_are_after_the_norms_it_has():
    graph = capture_graph(1, qk_norm=True, norms="post")
    assert "layers.0.attn_norm" not in graph and "layers.0.ffn_norm" not in graph
    assert graph["layers.0.attn.q.pre_bias"] == ("embed",)
    assert graph["layers.0.attn.post_norm"] == ("layers.0.attn.o_proj",)
    assert graph["layers.0.resid.attn"] == ("embed", "layers.0.attn.post_norm")
    assert graph["layers.0.mlp.gate"] == ("layers.0.resid.attn",)
    assert graph["layers.0.resid.mlp"] == ("layers.0.resid.attn", "layers.0.mlp.post_norm")


def test_transformers_modules_give_every_point_of_the_reference(tiny_factory):
    check_capture_matches_reference(tiny_factory("olmo2").model, TOKENS)


def test_a_patched_k_norm_per_head_is_named_at_its_point(tiny_factory):
    """A user's OLMo 2 whose layer-1 k norm is taken per head (Qwen3's scope)."""
    model = tiny_factory("olmo2").model
    norm = model.model.layers[1].self_attn.k_norm
    plain = norm.forward
    heads = model.config.num_key_value_heads

    def per_head(x):
        split = x.unflatten(-1, (heads, -1))
        normed = split * torch.rsqrt(split.pow(2).mean(-1, keepdim=True) + norm.variance_epsilon)
        return norm.weight * normed.flatten(-2)

    norm.forward = per_head
    try:
        report = bisect_module(model, TOKENS)
    finally:
        norm.forward = plain
    assert report.findings() == ["introduced in B's engine at layers.1.attn.k.norm"]


def test_llama_cpp_runs_its_graph_at_the_reference_and_bisect_maps_it(tiny_factory, tmp_path):
    require_llama_cpp()
    tiny = tiny_factory("olmo2")
    gguf = tmp_path / "m.gguf"
    convert(tiny.folder, gguf)
    tokens = ",".join(map(str, TOKENS))
    args = ["bisect", str(tiny.folder), str(gguf), "--backend-b", "llama.cpp", "--tokens", tokens]
    assert apr([*args, "--json"]) == 0


def test_bisect_through_llama_cpp_names_a_k_norm_weight_changed_in_the_gguf(
    tiny_factory, tmp_path, capsys
):
    require_llama_cpp()
    tiny = tiny_factory("olmo2")
    with open_model(tiny.folder) as src:
        arrays = {t.name: (t.dtype, t.shape, t.to_float32()) for t in src}
        config = src.config
    name = "model.layers.1.self_attn.k_norm.weight"
    dtype, shape, values = arrays[name]
    arrays[name] = (dtype, shape, values * np.float32(3.0))
    gguf = tmp_path / "bad.gguf"
    write_model(model_from_arrays(arrays, config), gguf)
    capsys.readouterr()
    tokens = ",".join(map(str, TOKENS))
    args = ["bisect", str(tiny.folder), str(gguf), "--backend-b", "llama.cpp", "--tokens", tokens]
    assert apr([*args, "--json"]) == 1
    report = json.loads(capsys.readouterr().out)
    assert report["findings"][0].startswith("introduced by B's weights at layers.1.attn.k.norm")


def test_a_tied_olmo2_gguf_says_llama_cpp_will_refuse_it(tiny_factory, tmp_path, capsys):
    tiny = tiny_factory("olmo2", tied=True)
    capsys.readouterr()
    assert apr(["convert", str(tiny.folder), str(tmp_path / "m.gguf"), "--json"]) == 0
    notes = json.loads(capsys.readouterr().out)["notes"]
    assert any(n.startswith("tie_word_embeddings: llama.cpp's olmo2 graph") for n in notes)
    untied = tiny_factory("olmo2")
    assert apr(["convert", str(untied.folder), str(tmp_path / "u.gguf"), "--json"]) == 0
    notes = json.loads(capsys.readouterr().out)["notes"]
    assert not any("tie_word_embeddings" in n for n in notes), notes


def test_an_unknown_census_is_refused_with_the_shapes_it_knows():
    from aprlib.forward import llamacpp_points as lp

    assert lp.qkv_bias_from_census({"Qcur-0": 2, "Kcur-0": 2, "Vcur-0": 2}, "olmo2") is False
    with pytest.raises(ValueError, match=r"2/2/2 \(none\)"):
        lp.qkv_bias_from_census({"Qcur-0": 3, "Kcur-0": 3, "Vcur-0": 2}, "olmo2")


def test_its_gguf_names_are_llama_cpps_and_read_back(tiny_factory, tmp_path: Path):
    from gguf import GGUFReader

    tiny = tiny_factory("olmo2")
    convert(tiny.folder, tmp_path / "m.gguf")
    names = {t.name for t in GGUFReader(tmp_path / "m.gguf").tensors}
    assert {"blk.0.post_attention_norm.weight", "blk.0.post_ffw_norm.weight"} <= names
    assert not any(n.endswith(("attn_norm.weight", ".ffn_norm.weight")) for n in names)
    with open_model(tmp_path / "m.gguf") as m, open_model(tiny.folder) as src:
        assert m.config == src.config and set(m.tensors) == set(src.tensors)
