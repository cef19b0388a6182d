"""Phi-3 (issue 25): q/k/v one ``qkv_proj`` and gate/up one ``gate_up_proj``, split after.

Parity with transformers is FALSIFY-FWD-001..004, llama.cpp on our GGUF FALSIFY-LLAMACPP-001/003,
llama.cpp's converter output FALSIFY-GGUFREAL-001, gguf-py's names FALSIFY-LAYOUT-003; here:
a split in the wrong order (silent under GQA: k and v, gate and up, are the same size) turns
those red, transformers' fused modules give every capture point, the GGUF keeps llama.cpp's
fused tensors, and what llama.cpp does otherwise is a note.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

import falsifiers.test_forward_parity_hf_v1 as fwd
from aprlib import bisect_module, convert, open_model
from aprlib.cli.main import main as apr
from aprlib.compare.shapes import contradictions
from aprlib.config.modelconfig import from_gguf_kv, to_gguf_kv
from aprlib.forward import model as forward_model
from tests.family_checks import (
    check_capture_matches_reference,
    check_every_format_and_back,
    diff_of_edited_gguf,
)

TOKENS = [3, 17, 42, 5, 88, 1, 60, 29, 11, 70, 2]
PHI3 = fwd.FIXED["phi3-fused-gqa-window"]


def swapping(parts: int):
    """``split_fused`` that exchanges the last two parts of a ``parts``-way split only."""
    real = forward_model.split_fused

    def split(y, sizes):
        out = real(y, sizes)
        return (*out[:-2], out[-1], out[-2]) if len(sizes) == parts else out

    return split


@pytest.mark.parametrize("parts", [3, 2], ids=["k-v-swapped", "gate-up-swapped"])
def test_fwd_001_catches_a_fused_projection_split_in_the_wrong_order(monkeypatch, parts):
    fwd.check_parity(PHI3)  # the spec passes as it is
    monkeypatch.setattr(forward_model, "split_fused", swapping(parts))
    with pytest.raises(AssertionError, match="max"):
        fwd.check_parity(PHI3)


def test_the_parts_are_cut_in_the_order_of_the_rows():
    y = torch.arange(10.0).view(1, 10)
    q, k, v = forward_model.split_fused(y, (4, 3, 3))
    assert q.tolist() == [[0, 1, 2, 3]] and k.tolist() == [[4, 5, 6]] and v.tolist() == [[7, 8, 9]]
    gate, up = forward_model.split_fused(y, (5, 5))
    assert gate[0, 0] == 0 and up[0, 0] == 5


def test_transformers_fused_modules_give_every_point_of_the_reference(tiny_factory):
    check_capture_matches_reference(tiny_factory("phi3", sliding_window=4).model, TOKENS)


def test_a_patched_mlp_that_gates_with_the_wrong_half_is_named_at_its_point(tiny_factory):
    """A user's Phi-3 whose layer-1 MLP takes up as the gate: the projection's product is
    right, what is made of it is not."""
    model = tiny_factory("phi3").model
    mlp = model.model.layers[1].mlp
    plain = mlp.forward

    def swapped(x):
        up, gate = mlp.gate_up_proj(x).chunk(2, dim=-1)
        return mlp.down_proj(up * mlp.activation_fn(gate))

    mlp.forward = swapped
    try:
        report = bisect_module(model, TOKENS)
    finally:
        mlp.forward = plain
    assert report.findings() == ["introduced in B's engine at layers.1.mlp.swiglu"]


def test_its_gguf_keeps_llama_cpps_fused_tensors_and_reads_back(tiny_factory, tmp_path: Path):
    from gguf import GGUFReader

    tiny = tiny_factory("phi3", sliding_window=4)
    convert(tiny.folder, tmp_path / "m.gguf")
    shapes = {
        t.name: tuple(int(n) for n in t.shape) for t in GGUFReader(tmp_path / "m.gguf").tensors
    }
    h, i = tiny.model.config.hidden_size, tiny.model.config.intermediate_size
    assert shapes["blk.0.ffn_up.weight"] == (h, 2 * i)  # ne[]: gate and up, one tensor
    assert shapes["blk.0.attn_qkv.weight"] == (h, h + 2 * h // 2)  # 4 heads, 2 kv heads
    assert not any("attn_q." in n or "ffn_gate" in n for n in shapes)
    with open_model(tmp_path / "m.gguf") as m, open_model(tiny.folder) as src:
        assert m.config == src.config and set(m.tensors) == set(src.tensors)
        for name in src.tensors:
            assert np.array_equal(m.tensors[name].to_float32(), src.tensors[name].to_float32())


def test_a_window_of_zero_from_llama_cpps_converter_means_none(tiny_factory):
    with open_model(tiny_factory("phi3").folder) as src:
        kv = to_gguf_kv(src.config)
    kv["phi3.attention.sliding_window"] = 0  # "distinguish Phi-4": no window
    assert from_gguf_kv(kv, has_output_tensor=True).sliding_window is None


def test_convert_says_llama_cpp_turns_phis_window_off(tiny_factory, tmp_path, capsys):
    capsys.readouterr()
    tiny = tiny_factory("phi3", sliding_window=4)
    assert apr(["convert", str(tiny.folder), str(tmp_path / "m.gguf"), "--json"]) == 0
    notes = json.loads(capsys.readouterr().out)["notes"]
    assert any(n.startswith("sliding_window 4: llama.cpp's phi3 graph") for n in notes), notes


def test_the_fused_rows_testify_to_the_config(tiny_factory):
    with open_model(tiny_factory("phi3").folder) as src:
        cfg, shapes = src.config, {n: tuple(t.shape) for n, t in src.tensors.items()}
    import dataclasses

    wrong = dataclasses.replace(
        cfg, num_key_value_heads=1, intermediate_size=cfg.intermediate_size + 8
    )
    found = {c.field: c for c in contradictions(wrong, shapes)}
    assert found["num_key_value_heads"].weights == 2
    assert "qkv_proj has 128 rows" in found["num_key_value_heads"].message
    assert found["intermediate_size"].weights == cfg.intermediate_size
    assert "gate_up_proj" in found["intermediate_size"].message
    assert contradictions(cfg, shapes) == []


def _parts_swapped(name, data, kind):
    """k and v exchanged in layer 0's qkv_proj, gate and up in layer 1's gate_up_proj."""
    data = np.array(data)
    if name == "blk.0.attn_qkv.weight":
        q, k, v = np.split(data, [64, 96])  # 4 heads x 16, then 2 kv heads x 16 each
        return np.concatenate([q, v, k]), kind
    if name == "blk.1.ffn_up.weight":
        gate, up = np.split(data, 2)
        return np.concatenate([up, gate]), kind
    return data, kind


def test_diff_names_fused_parts_joined_in_the_wrong_order(tiny_factory, tmp_path, capsys):
    report = diff_of_edited_gguf(tiny_factory("phi3"), tmp_path, _parts_swapped, capsys)
    pairs = {p["name"]: p for p in report["tensors"]}
    qkv = pairs["model.layers.0.self_attn.qkv_proj.weight"]
    gate_up = pairs["model.layers.1.mlp.gate_up_proj.weight"]
    assert qkv["tag"] == gate_up["tag"] == "PERMUTED"
    assert qkv["detail"] == "fused parts in another order: B holds q, v, k where A holds q, k, v"
    assert gate_up["detail"].startswith("fused parts in another order: B holds up, gate where")


@pytest.mark.parametrize("tied", [False, True], ids=["untied", "tied"])
def test_hf_to_gguf_to_apr_to_hf_is_bit_exact_and_transformers_loads_it(
    tiny_factory, tmp_path, tied
):
    tiny = tiny_factory("phi3", tied=tied, sliding_window=5)
    back = check_every_format_and_back(tiny, tmp_path, TOKENS)
    assert type(back).__name__ == "Phi3ForCausalLM" and back.config.sliding_window == 5
    with torch.no_grad():
        ours = back(torch.tensor([TOKENS])).logits
        theirs = tiny.model(torch.tensor([TOKENS])).logits
    assert torch.equal(ours, theirs)
