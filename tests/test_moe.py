"""Qwen3-MoE (issue 25): a router and experts per sparse layer, stacked by llama.cpp.

Parity with transformers is FALSIFY-FWD-001..004, llama.cpp on our GGUF FALSIFY-LLAMACPP-001/003,
llama.cpp's converter output FALSIFY-GGUFREAL-001, gguf-py's names FALSIFY-LAYOUT-003; here:
routing defects turn those red, transformers' router gives the capture points, the GGUF holds
llama.cpp's stacks (and is read back one tensor per expert, bit for bit), and what llama.cpp
computes otherwise is a note.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch

import falsifiers.test_forward_parity_hf_v1 as fwd
from aprlib import bisect_module, convert, diff_models, open_model
from aprlib.cli.main import main as apr
from aprlib.config.modelconfig import ConfigError, from_gguf_kv, to_gguf_kv
from aprlib.forward import model as forward_model
from tests.family_checks import (
    check_capture_matches_reference,
    check_every_format_and_back,
    diff_of_edited_gguf,
)

TOKENS = [3, 17, 42, 5, 88, 1, 60, 29, 11, 70, 2]
MOE = fwd.FIXED["qwen3-moe-dense-layer"]


def test_fwd_001_catches_routing_weights_left_unnormalised(monkeypatch):
    real = forward_model.route
    monkeypatch.setattr(forward_model, "route", lambda x, k, _: real(x, k, False))
    with pytest.raises(AssertionError, match="max"):
        fwd.check_parity(MOE)


def test_fwd_001_catches_one_expert_too_few(monkeypatch):
    real = forward_model.route
    monkeypatch.setattr(forward_model, "route", lambda x, k, norm: real(x, k - 1, norm))
    with pytest.raises(AssertionError, match="max"):
        fwd.check_parity(MOE)


def test_fwd_001_catches_norm_topk_prob_read_wrong(monkeypatch):
    """A reader that takes ``norm_topk_prob`` as false where the config says true."""
    real = fwd.ours_from

    def loader(model, ops=None):
        net = real(model, ops)
        net.config = dataclasses.replace(net.config, norm_topk_prob=False)
        return net

    monkeypatch.setattr(fwd, "ours_from", loader)
    with pytest.raises(AssertionError, match="max"):
        fwd.check_parity(MOE)


def moe(tiny_factory, **more):
    return tiny_factory("qwen3_moe", mlp_only_layers=[1], **more)


def test_transformers_router_and_experts_give_every_point_of_the_reference(tiny_factory):
    ref = check_capture_matches_reference(moe(tiny_factory).model, TOKENS)
    assert "layers.0.mlp.router" in ref and "layers.1.mlp.gate" in ref  # sparse, dense


def test_a_patched_router_is_named_at_its_point(tiny_factory):
    """A user's Qwen3-MoE whose layer-0 experts ignore their routing weights."""
    model = moe(tiny_factory).model
    experts = model.model.layers[0].mlp.experts
    plain = experts.forward
    experts.forward = lambda x, index, weights: plain(x, index, torch.ones_like(weights))
    try:
        report = bisect_module(model, TOKENS)
    finally:
        experts.forward = plain
    assert report.findings() == ["introduced in B's engine at layers.0.mlp.down"]


def test_the_gguf_stacks_experts_as_llama_cpp_does_and_reads_them_back(tiny_factory, tmp_path):
    """Twelve experts: the file lists 0, 1, 10, 11, 2, ...; the stack is in expert order."""
    from gguf import GGUFReader

    tiny = moe(tiny_factory, num_experts=12)
    convert(tiny.folder, tmp_path / "m.gguf")
    tensors = {t.name: t for t in GGUFReader(tmp_path / "m.gguf").tensors}
    h, i = tiny.model.config.hidden_size, tiny.model.config.moe_intermediate_size
    assert tuple(int(n) for n in tensors["blk.0.ffn_gate_exps.weight"].shape) == (h, i, 12)
    assert tuple(int(n) for n in tensors["blk.0.ffn_down_exps.weight"].shape) == (i, h, 12)
    assert tuple(int(n) for n in tensors["blk.0.ffn_gate_inp.weight"].shape) == (h, 12)
    assert "blk.1.ffn_gate.weight" in tensors and "blk.1.ffn_gate_exps.weight" not in tensors
    state = tiny.state()
    up = np.asarray(tensors["blk.0.ffn_up_exps.weight"].data)  # [experts, out, in]
    for e in (0, 2, 10, 11):
        assert np.array_equal(up[e], state[f"model.layers.0.mlp.experts.{e}.up_proj.weight"])
    with open_model(tmp_path / "m.gguf") as m, open_model(tiny.folder) as src:
        assert m.config == src.config and set(m.tensors) == set(src.tensors)
        assert diff_models(src, m).clean


@pytest.mark.parametrize("tied", [False, True], ids=["untied", "tied"])
def test_hf_to_gguf_to_apr_to_hf_is_bit_exact_and_transformers_loads_it(
    tiny_factory, tmp_path, tied
):
    tiny = moe(tiny_factory, tied=tied, norm_topk_prob=False)
    back = check_every_format_and_back(tiny, tmp_path, TOKENS)
    assert back.config.mlp_only_layers == [1] and back.config.norm_topk_prob is False
    with torch.no_grad():
        ours = back(torch.tensor([TOKENS])).logits
        theirs = tiny.model(torch.tensor([TOKENS])).logits
    assert torch.equal(ours, theirs)


def test_convert_says_what_llama_cpp_computes_otherwise(tiny_factory, tmp_path, capsys):
    tiny = moe(tiny_factory, norm_topk_prob=False)
    capsys.readouterr()
    assert apr(["convert", str(tiny.folder), str(tmp_path / "m.gguf"), "--json"]) == 0
    notes = json.loads(capsys.readouterr().out)["notes"]
    assert any(n.startswith("norm_topk_prob false: llama.cpp's qwen3moe graph") for n in notes)
    assert any(n.startswith("mlp_only_layers [1]: llama.cpp's qwen3moe graph") for n in notes)
    plain = tiny_factory("qwen3_moe")
    assert apr(["convert", str(plain.folder), str(tmp_path / "p.gguf"), "--json"]) == 0
    notes = json.loads(capsys.readouterr().out)["notes"]
    assert not any("norm_topk_prob" in n or "mlp_only_layers" in n for n in notes), notes


def test_a_llama_gguf_with_experts_is_refused_as_a_mixture_it_cannot_run(tiny_factory):
    """A Mixtral GGUF says "llama" and ``llama.expert_count``: the dense forward would run
    it without its experts, so it is refused by name."""
    with open_model(tiny_factory("llama").folder) as src:
        kv = to_gguf_kv(src.config)
    kv["llama.expert_count"], kv["llama.expert_used_count"] = 8, 2
    with pytest.raises(ConfigError, match="a mixture of experts under llama's name"):
        from_gguf_kv(kv, has_output_tensor=True)


def test_the_experts_testify_to_the_config(tiny_factory):
    from aprlib.compare.shapes import contradictions

    with open_model(moe(tiny_factory).folder) as src:
        cfg, shapes = src.config, {n: tuple(t.shape) for n, t in src.tensors.items()}
    wrong = dataclasses.replace(cfg, num_experts=5, moe_intermediate_size=40)
    found = {c.field: c for c in contradictions(wrong, shapes)}
    assert found["num_experts"].weights == 4 and "router mlp.gate has 4 rows" in (
        found["num_experts"].message
    )
    assert found["moe_intermediate_size"].weights == 48
    assert contradictions(cfg, shapes) == []


def test_a_stack_missing_an_expert_is_refused_naming_it(tiny_factory, tmp_path: Path):
    from aprlib import model_from_arrays, write_model
    from aprlib.errors import ConversionError

    with open_model(tiny_factory("qwen3_moe").folder) as src:
        arrays = {t.name: (t.dtype, t.shape, t.to_float32()) for t in src}
        config = src.config
    for part in ("gate", "up", "down"):
        arrays.pop(f"model.layers.0.mlp.experts.2.{part}_proj.weight")
    with pytest.raises(
        ConversionError, match=r"blk.0.ffn_\w+_exps.weight: expert 2 of 4 is missing"
    ):
        write_model(model_from_arrays(arrays, config), tmp_path / "bad.gguf")
    assert not (tmp_path / "bad.gguf").exists()


def _experts_edited(name, data, kind):
    """Experts 2 and 3 of layer 1 traded places in its down stack; expert 1 of layer 0's up
    projection scaled by 1.5."""
    data = np.array(data)
    if name == "blk.1.ffn_down_exps.weight":
        data[[2, 3]] = data[[3, 2]]
    if name == "blk.0.ffn_up_exps.weight":
        data[1] *= 1.5
    return data, kind


def test_diff_and_bisect_name_the_expert(tiny_factory, tmp_path, capsys):
    tiny = tiny_factory("qwen3_moe")
    report = diff_of_edited_gguf(tiny, tmp_path, _experts_edited, capsys)
    assert report["diagnosis"]["line"].startswith(
        "DIAGNOSIS: SWAPPED experts 2 <-> 3 in layer 1 (down_proj)"
    ), report["diagnosis"]["line"]
    tags = {t["name"]: t["tag"] for t in report["tensors"] if t["tag"] != "IDENTICAL"}
    assert tags == {
        "model.layers.1.mlp.experts.2.down_proj.weight": "SWAPPED",
        "model.layers.1.mlp.experts.3.down_proj.weight": "SWAPPED",
        "model.layers.0.mlp.experts.1.up_proj.weight": "SCALED",
    }
    tokens = ",".join(map(str, TOKENS))
    assert apr(["bisect", str(tiny.folder), str(tmp_path / "bad.gguf"), "--tokens", tokens]) == 1
    assert "introduced by B's weights at layers.0.mlp.down" in capsys.readouterr().out


def test_a_gguf_without_the_norm_key_means_llama_cpps_renormalising(tiny_factory, tmp_path):
    """llama.cpp's converter writes no ``expert_weights_norm``; its graph renormalises. A
    model that does not is then a different model, and diff says which field."""
    from falsifiers.test_gguf_real_files_v1 import rewrite_gguf

    tiny = moe(tiny_factory, norm_topk_prob=False)
    convert(tiny.folder, tmp_path / "m.gguf")
    rewrite_gguf(tmp_path / "m.gguf", tmp_path / "lean.gguf", drop={"qwen3moe.expert_weights_norm"})
    with open_model(tiny.folder) as src, open_model(tmp_path / "lean.gguf") as lean:
        assert lean.config.norm_topk_prob is True
        report = diff_models(src, lean)
        assert [c.field for c in report.config] == ["norm_topk_prob"], report.config
