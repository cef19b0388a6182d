"""Falsifiers of trace-capture-points-v1: capture names are true; only like points pair."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from aprlib.forward.model import capture_graph
from aprlib.forward.trace import SCOPES, Trace, TraceMismatchError, compare_traces, trace_forward
from falsifiers.test_forward_parity_hf_v1 import FIXED, Spec, hf_model, ours_from

SPECS = {
    "qwen2-bias-untied": FIXED["qwen2-gqa-untied"],
    "llama-tied-3-layers": dataclasses.replace(
        FIXED["llama3-scaled-tied-bias"],
        hf={**FIXED["llama3-scaled-tied-bias"].hf, "num_hidden_layers": 3, "attention_bias": False},
    ),
}


def check_all_points_fire(spec: Spec) -> None:
    net = ours_from(hf_model(spec))
    fired: list[str] = []
    tokens = torch.randint(0, spec.hf["vocab_size"], (1, 6))
    with torch.no_grad():
        for _ in range(2):  # twice: once per forward, no leftovers between runs
            fired.clear()
            with net.capture(lambda name, x: fired.append(name)):
                net(tokens)
            assert fired == list(capture_graph(spec.hf["num_hidden_layers"])), fired
            assert not net._hooks, "a hook was left attached"


@pytest.mark.falsifies("FALSIFY-TRACE-001")
@pytest.mark.parametrize("name", sorted(SPECS))
def test_every_declared_point_fires_in_order(name):
    check_all_points_fire(SPECS[name])


def hf_intermediates(model: torch.nn.Module, tokens: torch.Tensor) -> dict[str, torch.Tensor]:
    """transformers' own intermediates, by our capture names, from module forward hooks."""
    got: dict[str, torch.Tensor] = {}
    handles = []

    def keep(name, fn=lambda out: out):
        def hook(module, args, out):
            got[name] = fn(out if isinstance(out, torch.Tensor) else out[0]).detach().clone()

        return hook

    body = model.model
    handles.append(body.embed_tokens.register_forward_hook(keep("embed")))
    for i, layer in enumerate(body.layers):
        p = f"layers.{i}."
        attn, mlp = layer.self_attn, layer.mlp
        handles.append(layer.input_layernorm.register_forward_hook(keep(p + "attn_norm")))
        for n in "qkv":
            proj = getattr(attn, f"{n}_proj")
            handles.append(proj.register_forward_hook(keep(p + f"attn.{n}.post_bias")))
            bias = proj.bias

            def pre(out, bias=bias):
                return out - bias if bias is not None else out

            handles.append(proj.register_forward_hook(keep(p + f"attn.{n}.pre_bias", pre)))
        handles.append(attn.o_proj.register_forward_hook(keep(p + "attn.o_proj")))
        handles.append(layer.post_attention_layernorm.register_forward_hook(keep(p + "ffn_norm")))
        handles.append(mlp.gate_proj.register_forward_hook(keep(p + "mlp.gate")))
        handles.append(mlp.up_proj.register_forward_hook(keep(p + "mlp.up")))
        handles.append(mlp.down_proj.register_forward_hook(keep(p + "mlp.down")))
        handles.append(layer.register_forward_hook(keep(p + "resid.mlp")))
    handles.append(body.norm.register_forward_hook(keep("final_norm")))
    handles.append(model.lm_head.register_forward_hook(keep("logits")))
    try:
        with torch.no_grad():
            model(tokens)
    finally:
        for h in handles:
            h.remove()
    return got


def check_points_hold_their_values(spec: Spec) -> None:
    model = hf_model(spec)
    net = ours_from(model)
    tokens = torch.randint(
        0, spec.hf["vocab_size"], (1, 9), generator=torch.Generator().manual_seed(5)
    )
    theirs = hf_intermediates(model, tokens)
    ours: dict[str, torch.Tensor] = {}
    with torch.no_grad(), net.capture(lambda name, x: ours.__setitem__(name, x)):
        net(tokens)
    assert len(theirs) > 10
    for name, expected in theirs.items():
        got = ours[name]
        assert got.shape == expected.shape, (
            f"{name}: shape {tuple(got.shape)} vs {tuple(expected.shape)}"
        )
        diff = float((got - expected).abs().max())
        assert diff < 1e-5, f"{name}: max |ours - transformers| = {diff:.3g}"


@pytest.mark.falsifies("FALSIFY-TRACE-002")
@pytest.mark.parametrize("name", sorted(SPECS))
def test_points_hold_what_their_names_say(name):
    check_points_hold_their_values(SPECS[name])


def check_like_points_only(trace: Trace) -> None:
    rows = compare_traces(trace, trace)
    assert all(
        r.status == "compared" and r.a.name == r.b.name and r.a.scope == r.b.scope for r in rows
    )
    assert len(rows) == len(trace.points)
    # B lacks one point in one scope: it is reported, never paired with a neighbour
    gone = trace.points[5]
    partial = dataclasses.replace(trace, points=[p for p in trace.points if p is not gone])
    rows = compare_traces(trace, partial)
    missing = [r for r in rows if r.status != "compared"]
    assert [(r.name, r.scope, r.status) for r in missing] == [
        (gone.name, gone.scope, "missing in B")
    ]
    for r in rows:
        if r.b is not None:
            assert (r.a.name, r.a.scope) == (r.b.name, r.b.scope)
    # only last-token statistics on one side: nothing compares with all-token ones
    last = dataclasses.replace(trace, points=[p for p in trace.points if p.scope == "last"])
    rows = compare_traces(trace, last)
    assert {r.status for r in rows if r.scope == "all"} == {"missing in B"}
    assert {r.status for r in rows if r.scope == "last"} == {"compared"}
    other = dataclasses.replace(trace, tokens=[*trace.tokens[:-1], trace.tokens[-1] + 1])
    with pytest.raises(TraceMismatchError):
        compare_traces(trace, other)


@pytest.mark.falsifies("FALSIFY-TRACE-003")
def test_only_like_points_are_compared():
    spec = SPECS["qwen2-bias-untied"]
    trace = trace_forward(ours_from(hf_model(spec)), [3, 1, 4, 1, 5, 9, 2, 6])
    assert {p.scope for p in trace.points} == set(SCOPES)
    check_like_points_only(trace)
