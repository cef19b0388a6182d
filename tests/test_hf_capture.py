"""transformers as a bisect side (issue 24, part 4): capture points read off an HF model.

The oracle is our reference ``Transformer`` built on the same weights (``reference_from_hf``),
captured with ``net.capture``: every point the HF forward gives must equal the reference's
within float32 rounding, a planted fault in one module must first show at that module's
point (and nowhere before it), and nothing capture installs may outlive it, also when the
forward raises. Tiny random models (conftest's ``build_tiny``: every tensor random, norms
and biases included, non-square FFN, GQA).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
import transformers

from aprlib.forward.hf_capture import (
    HFCaptureError,
    HFLayoutError,
    attention_registry,
    capture_hf,
    hf_model_from,
    reference_from_hf,
    reference_points,
)
from aprlib.forward.model import Transformer, capture_graph
from conftest import TINY, build_tiny

TOKENS = [3, 17, 42, 5, 88, 1, 60, 29, 11]
#: float32 rounding of two different summation orders, relative to the point's scale
RTOL = 2e-5


def fresh(tmp_path: Path, arch: str = "qwen2", tied: bool = False, **overrides: Any) -> Any:
    """A model of our own (tests here patch modules in place; the session's are shared)."""
    return build_tiny(tmp_path / f"{arch}-{tied}", arch, tied, **overrides).model


def mistral(seed: int = 0) -> Any:
    """A tiny random MistralForCausalLM (build_tiny knows qwen2 and llama only)."""
    from transformers import MistralConfig, MistralForCausalLM

    torch.manual_seed(seed)
    model = MistralForCausalLM(MistralConfig(**TINY, sliding_window=None)).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            base = 1.0 if "norm" in name else 0.0
            p.copy_(base + torch.randn_like(p) * (0.5 if "norm" in name else 0.08))
    return model


def far(a: Any, b: Any) -> float:
    """Max abs difference in units of b's scale (inf for a shape mismatch)."""
    if a.shape != b.shape:
        return float("inf")
    scale = float(b.abs().max()) or 1.0
    return float((a.double() - b.double()).abs().max()) / scale


def first_difference(points: dict[str, Any], reference: dict[str, Any]) -> str | None:
    """The first point, in firing order, where ``points`` leaves ``reference``."""
    for name, ref in reference.items():
        if name in points and far(points[name], ref) > RTOL:
            return name
    return None


def hook_count(model: Any) -> int:
    return sum(
        len(m._forward_hooks)
        + len(m._forward_pre_hooks)
        + len(getattr(m, "_forward_hooks_with_kwargs", {}))
        for m in model.modules()
    )


def registry_state(model: Any) -> dict[str, Any]:
    """The attention registry's instance-level entries (what capture overrides); none of
    them may be capture's own wrapper, whatever ran before (a leaked wrapper would
    otherwise be restored as "the previous entry" by every later capture)."""
    registry = attention_registry(model.model.layers[0].self_attn)
    local = dict(registry._local_mapping)
    assert not [k for k, fn in local.items() if fn.__module__ == "aprlib.forward.hf_capture"]
    return local


# --- (1) every point equals the reference's ----------------------------------------------


@pytest.mark.parametrize(
    ("arch", "tied", "attention"),
    [
        ("qwen2", False, "sdpa"),
        ("qwen2", True, "eager"),
        ("llama", False, "sdpa"),
        ("llama", False, "eager"),
    ],
)
def test_every_point_equals_the_reference_on_the_same_weights(tmp_path, arch, tied, attention):
    model = fresh(tmp_path, arch, tied)
    model.set_attn_implementation(attention)
    cap = capture_hf(model, TOKENS)
    ref = reference_points(reference_from_hf(model), TOKENS)

    assert cap.absent == []
    assert list(cap.points) == list(capture_graph(TINY["num_hidden_layers"]))
    assert list(ref) == list(cap.points)
    bad = {n: far(cap.points[n], r) for n, r in ref.items() if far(cap.points[n], r) > RTOL}
    assert bad == {}
    assert cap.engine_version == transformers.__version__
    assert attention in cap.engine


def test_mistral_is_read_like_llama():
    model = mistral()
    cap = capture_hf(model, TOKENS)
    ref = reference_points(reference_from_hf(model), TOKENS)
    assert cap.absent == []
    assert first_difference(cap.points, ref) is None


def test_points_are_in_the_canonical_layouts(tiny_qwen2):
    t, h, kv, d = len(TOKENS), 4, 2, TINY["hidden_size"] // 4
    cap = capture_hf(tiny_qwen2.model, TOKENS)
    shapes = {n: tuple(x.shape) for n, x in cap.points.items()}
    p = "layers.1."
    assert shapes["embed"] == (t, TINY["hidden_size"])
    assert shapes[p + "attn.q.pre_bias"] == shapes[p + "attn.q.rope"] == (t, h, d)
    assert shapes[p + "attn.k.post_bias"] == shapes[p + "attn.k.rope"] == (t, kv, d)
    assert shapes[p + "attn.v.pre_bias"] == (t, kv, d)
    assert shapes[p + "attn.scores"] == (h, t, t)
    assert shapes[p + "attn.out"] == (t, h, d)
    assert shapes[p + "mlp.swiglu"] == (t, TINY["intermediate_size"])
    assert shapes["logits"] == (t, TINY["vocab_size"])
    assert all(x.device.type == "cpu" for x in cap.points.values())


def test_derived_points_are_named_and_the_rest_observed(tiny_llama):
    cap = capture_hf(tiny_llama.model, TOKENS)
    derived = {n.split(".", 2)[2] for n in cap.derived}
    assert derived == {"attn.q.pre_bias", "attn.k.pre_bias", "attn.v.pre_bias", "attn.scores"}
    assert len(cap.derived) == 4 * TINY["num_hidden_layers"]
    assert "F.linear" in cap.derived["layers.0.attn.k.pre_bias"]
    assert "scaling" in cap.derived["layers.1.attn.scores"]


def test_scores_can_be_left_out(tiny_qwen2):
    cap = capture_hf(tiny_qwen2.model, TOKENS, scores=False)
    assert not [n for n in cap.points if n.endswith("attn.scores")]
    assert not [n for n in cap.derived if n.endswith("attn.scores")]
    assert cap.absent == []


def test_the_reference_copies_config_and_weights(tmp_path):
    model = fresh(tmp_path, "qwen2", tied=True, rope_theta=12345.0)
    net = reference_from_hf(model)
    assert net.config.rope_theta == 12345.0 and net.config.tie_word_embeddings
    assert net.config.qkv_bias and net.config.num_key_value_heads == 2
    weight = model.model.layers[0].self_attn.k_proj.weight
    kept = net.model.layers[0].self_attn.k_proj.weight
    assert torch.equal(kept, weight)
    with torch.no_grad():
        weight.mul_(3)  # an edit to the HF model after the reference was built
    assert not torch.equal(kept, weight)


def test_layouts_agree_with_one_another_not_only_with_the_reference(tiny_qwen2):
    """The reference comparison shares ``canonical`` with capture, so the layouts are also
    checked by the arithmetic that links the points: position 0 is not rotated, scores are
    q·k per head pair, o_proj is attn.out times its weight, the residual adds up."""
    model = tiny_qwen2.model
    cap = capture_hf(model, TOKENS).points
    p, attn = "layers.1.", model.model.layers[1].self_attn
    for x in "qk":
        assert torch.allclose(cap[p + f"attn.{x}.rope"][0], cap[p + f"attn.{x}.post_bias"][0])
        assert not torch.allclose(cap[p + f"attn.{x}.rope"][1], cap[p + f"attn.{x}.post_bias"][1])
    q, k = cap[p + "attn.q.rope"], cap[p + "attn.k.rope"]  # [T, H, D], [T, KV, D]
    d = q.shape[-1]
    scores = torch.einsum("ihd,jhd->hij", q, k.repeat_interleave(2, dim=1)) / d**0.5
    assert torch.allclose(cap[p + "attn.scores"], scores, atol=1e-5)
    out = cap[p + "attn.out"].reshape(len(TOKENS), -1)
    assert torch.allclose(out @ attn.o_proj.weight.detach().T, cap[p + "attn.o_proj"], atol=1e-5)
    assert torch.allclose(cap["layers.0.resid.mlp"] + cap[p + "attn.o_proj"], cap[p + "resid.attn"])


@pytest.mark.parametrize(("arch", "tied"), [("qwen2", True), ("llama", False)])
def test_transformers_built_from_a_model_file_matches_our_forward(tiny_factory, arch, tied):
    """``hf_model_from``: transformers' own model on a file's weights as our reader decodes
    them (what ``--backend-b transformers`` runs) agrees at every point."""
    net = Transformer.from_file(tiny_factory(arch, tied=tied).safetensors)
    model = hf_model_from(net)
    assert type(model).__name__ == {"qwen2": "Qwen2ForCausalLM", "llama": "LlamaForCausalLM"}[arch]
    cap = capture_hf(model, TOKENS)
    assert cap.absent == []
    assert first_difference(cap.points, reference_points(net, TOKENS)) is None


def test_a_config_transformers_cannot_state_is_refused(tiny_qwen2):
    import dataclasses

    cfg = Transformer.from_file(tiny_qwen2.safetensors).config
    no_bias = Transformer(dataclasses.replace(cfg, attention_bias=False))
    with pytest.raises(HFLayoutError, match="attention_bias=false"):
        hf_model_from(no_bias)


# --- (2) a patched module shows at its own point -----------------------------------------


def test_a_k_bias_added_twice_shows_at_that_layers_k_post_bias(tmp_path):
    model = fresh(tmp_path, "qwen2")
    ref = reference_points(reference_from_hf(model), TOKENS)
    k_proj = model.model.layers[1].self_attn.k_proj
    plain = k_proj.forward
    k_proj.forward = lambda x: plain(x) + k_proj.bias  # the seeds' incident: bias twice

    cap = capture_hf(model, TOKENS)
    assert first_difference(cap.points, ref) == "layers.1.attn.k.post_bias"
    assert far(cap.points["layers.1.attn.k.pre_bias"], ref["layers.1.attn.k.pre_bias"]) <= RTOL
    extra = cap.points["layers.1.attn.k.post_bias"] - ref["layers.1.attn.k.post_bias"]
    assert torch.allclose(extra, k_proj.bias.detach().view(2, -1).expand_as(extra), atol=1e-5)
    assert far(cap.points["layers.1.attn.k.rope"], ref["layers.1.attn.k.rope"]) > RTOL


def test_a_custom_linear_subclass_shows_at_its_point(tmp_path):
    model = fresh(tmp_path, "llama", attention_bias=True)
    ref = reference_points(reference_from_hf(model), TOKENS)

    class DoubledBias(torch.nn.Linear):
        def forward(self, x: Any) -> Any:
            return super().forward(x) + self.bias

    old = model.model.layers[0].self_attn.q_proj
    new = DoubledBias(old.in_features, old.out_features, bias=True)
    new.load_state_dict(old.state_dict())
    model.model.layers[0].self_attn.q_proj = new

    cap = capture_hf(model, TOKENS)
    assert first_difference(cap.points, ref) == "layers.0.attn.q.post_bias"


def test_an_edited_weight_shows_at_pre_bias(tmp_path):
    model = fresh(tmp_path, "qwen2")
    ref = reference_points(reference_from_hf(model), TOKENS)
    with torch.no_grad():  # a quantised or mis-converted v weight, bias untouched
        model.model.layers[1].self_attn.v_proj.weight.mul_(1.1)
    assert first_difference(capture_hf(model, TOKENS).points, ref) == "layers.1.attn.v.pre_bias"


def test_a_wrong_attention_scale_shows_at_scores(tmp_path):
    """attn.scores is derived with the scaling the model passes its attention function, so
    a wrong scale is named at scores (q and k agree), not only at attn.out."""
    model = fresh(tmp_path, "llama")
    ref = reference_points(reference_from_hf(model), TOKENS)
    model.model.layers[1].self_attn.scaling *= 2
    assert first_difference(capture_hf(model, TOKENS).points, ref) == "layers.1.attn.scores"


def test_a_quantised_linear_without_a_float_weight_leaves_pre_bias_absent(tmp_path):
    model = fresh(tmp_path, "qwen2")

    class Int8Linear(torch.nn.Module):
        def __init__(self, linear: torch.nn.Linear) -> None:
            super().__init__()
            w = linear.weight.detach()
            self.scale = float(w.abs().max()) / 127
            self.register_buffer("weight", torch.round(w / self.scale).to(torch.int8))
            self.bias = linear.bias

        def forward(self, x: Any) -> Any:
            return torch.nn.functional.linear(x, self.weight.float() * self.scale, self.bias)

    attn = model.model.layers[0].self_attn
    attn.v_proj = Int8Linear(attn.v_proj)
    cap = capture_hf(model, TOKENS)
    assert cap.absent == ["layers.0.attn.v.pre_bias"]
    assert "v_proj" in cap.why["layers.0.attn.v.pre_bias"]
    assert "layers.0.attn.v.pre_bias" not in cap.derived
    assert "layers.0.attn.v.post_bias" in cap.points


# --- (3) nothing outlives a capture ------------------------------------------------------


def test_hooks_and_the_attention_override_are_removed(tiny_qwen2):
    model = tiny_qwen2.model
    hooks, registry = hook_count(model), registry_state(model)
    capture_hf(model, TOKENS)
    assert hook_count(model) == hooks
    assert registry_state(model) == registry


def test_hooks_are_removed_when_the_forward_raises(tmp_path):
    model = fresh(tmp_path, "llama")
    ids = torch.tensor([TOKENS])
    with torch.no_grad():
        before = model(input_ids=ids).logits
    hooks, registry = hook_count(model), registry_state(model)
    up = model.model.layers[1].mlp.up_proj
    plain = up.forward

    def broken(x: Any) -> Any:
        raise RuntimeError("planted failure in up_proj")

    up.forward = broken
    with pytest.raises(RuntimeError, match="planted failure"):
        capture_hf(model, TOKENS)
    assert hook_count(model) == hooks
    assert registry_state(model) == registry
    up.forward = plain
    with torch.no_grad():
        assert torch.equal(model(input_ids=ids).logits, before)


def test_a_module_run_twice_is_an_error_not_a_guess(tmp_path):
    model = fresh(tmp_path, "qwen2")
    mlp = model.model.layers[0].mlp
    plain = mlp.forward

    def twice(x: Any) -> Any:
        mlp.up_proj(x)
        return plain(x)

    mlp.forward = twice
    hooks = hook_count(model)
    with pytest.raises(HFCaptureError, match=r"layers\.0\.mlp\.up fired twice"):
        capture_hf(model, TOKENS)
    assert hook_count(model) == hooks


# --- an unknown layout -------------------------------------------------------------------


def test_an_unknown_layout_names_what_is_missing(tmp_path):
    with pytest.raises(HFLayoutError, match=r"missing model, lm_head"):
        capture_hf(torch.nn.Linear(4, 4), TOKENS)
    model = fresh(tmp_path, "llama")
    del model.model.layers[1].self_attn.k_proj
    with pytest.raises(HFLayoutError, match=r"model\.layers\.1\.self_attn\.k_proj"):
        capture_hf(model, TOKENS)
    model = fresh(tmp_path, "qwen2")
    mlp = model.model.layers[0].mlp
    del mlp.down_proj
    mlp.down_proj = lambda x: x  # a plain function: nothing to hook
    with pytest.raises(HFLayoutError, match=r"layers\.0\.mlp\.down_proj \(a function, not a"):
        capture_hf(model, TOKENS)
    assert issubclass(HFLayoutError, ValueError)
