"""Falsifiers of forward-parity-hf-v1: our reference forward equals transformers'.

The oracle is transformers' own implementation of each family (Qwen2, Llama, Mistral, Qwen3,
OLMo 2, Gemma 2, Gemma 3, Phi-3, Qwen3-MoE), fed the same random weights (every tensor
random, norms and biases too). Hypothesis draws the structure: heads, kv heads, head size,
FFN width, layers, vocab, tie, biases, rope base and scaling, sliding windows (Mistral's and
Phi-3's on every layer, Qwen's from ``max_window_layers`` or per ``layer_types``, Gemma's by
pattern or per layer, often shorter than the tokens), Gemma's query scale and soft-caps, a
mixture's experts (count, per token, width, renormalised or not, dense layers), tokens.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from aprlib import Ops, Transformer
from aprlib.config.modelconfig import from_hf
from falsifiers.reproducible import reproducible

TOLERANCE = 1e-4  # float32; the bound (observed ~1e-6)


@dataclass(frozen=True)
class Spec:
    """One small architecture and one token batch."""

    architecture: str
    hf: dict[str, Any]
    batch: int
    length: int
    seed: int


@st.composite
def specs(draw: st.DrawFn) -> Spec:
    families = ["qwen2", "llama", "mistral", "qwen3", "olmo2", *GEMMAS, "phi3", "qwen3_moe"]
    arch = draw(st.sampled_from(families))
    n_kv = draw(st.sampled_from([1, 2, 3]))
    n_heads = n_kv * draw(st.sampled_from([1, 2, 4]))
    head_dim = draw(st.sampled_from([4, 8, 16]))
    # transformers wants hidden % heads == 0; Llama may still set head_dim independently
    per_head = head_dim if arch == "qwen2" else draw(st.sampled_from([4, 6, 12]))
    hidden = n_heads * per_head
    hf: dict[str, Any] = dict(
        vocab_size=draw(st.integers(17, 130)),
        hidden_size=hidden,
        intermediate_size=draw(st.integers(8, 100)),
        num_hidden_layers=draw(st.integers(1, 3)),
        num_attention_heads=n_heads,
        num_key_value_heads=n_kv,
        head_dim=head_dim,
        max_position_embeddings=64,
        rms_norm_eps=draw(st.sampled_from([1e-6, 1e-5])),
        tie_word_embeddings=draw(st.booleans()),
    )
    theta = draw(st.sampled_from([10000.0, 500000.0, 1e6]))
    scaling = draw(st.sampled_from(["default", "linear", "llama3", "yarn", "dynamic"]))
    rope: dict[str, Any] = {"rope_type": scaling, "rope_theta": theta}
    if scaling == "linear":
        rope["factor"] = draw(st.sampled_from([2.0, 4.0]))
    elif scaling == "llama3":
        rope.update(
            factor=draw(st.sampled_from([8.0, 32.0])),
            low_freq_factor=1.0,
            high_freq_factor=4.0,
            original_max_position_embeddings=draw(st.sampled_from([8, 32])),
        )
    elif scaling == "yarn":
        rope.update(
            factor=draw(st.sampled_from([2.0, 4.0, 16.0])),
            original_max_position_embeddings=draw(st.sampled_from([8, 16, 32])),
        )
        if draw(st.booleans()):
            rope.update(beta_fast=draw(st.sampled_from([8.0, 32.0])), beta_slow=2.0)
    elif scaling == "dynamic":
        rope["factor"] = draw(st.sampled_from([2.0, 4.0]))
        hf["max_position_embeddings"] = draw(st.sampled_from([4, 8, 64]))  # outgrown or not
    hf["rope_parameters"] = rope
    if arch == "phi3":  # its class takes longrope or none (longrope: refused, not drawn)
        hf.update(rope_parameters={"rope_type": "default", "rope_theta": theta})
        hf["max_position_embeddings"] = 64
    if arch == "llama":
        hf["attention_bias"] = draw(st.booleans())
        hf["mlp_bias"] = draw(st.booleans())
    if arch == "qwen3_moe":
        draw_experts(draw, hf)
    if arch in ("qwen3", "olmo2", "qwen3_moe"):  # no MLP bias; attention bias covers o_proj
        hf["attention_bias"] = draw(st.booleans())
    window = draw(st.one_of(st.none(), st.integers(1, 12)))
    if arch in GEMMAS:
        draw_gemma(draw, arch, hf)
    elif arch in ("mistral", "phi3"):  # on every layer
        hf["sliding_window"] = window
    if arch == "phi3":  # its class's ids (32000) would be past the vocab
        hf.update(pad_token_id=0, bos_token_id=1, eos_token_id=2)
    elif arch in ("qwen2", "qwen3", "qwen3_moe") and window is not None:
        layers = hf["num_hidden_layers"]
        hf.update(use_sliding_window=True, sliding_window=window)
        if draw(st.booleans()):
            hf["max_window_layers"] = draw(st.integers(0, layers))
        else:
            kinds = st.sampled_from(["sliding_attention", "full_attention"])
            hf["layer_types"] = draw(st.lists(kinds, min_size=layers, max_size=layers))
    return Spec(
        arch, hf, draw(st.integers(1, 2)), draw(st.integers(1, 24)), draw(st.integers(0, 2**16))
    )


GEMMAS = ("gemma2", "gemma3_text")


def draw_experts(draw: st.DrawFn, hf: dict[str, Any]) -> None:
    """A mixture: how many experts, how many run per token (all of them, or one), their
    width, whether the k weights are renormalised, and which layers stay dense (listed
    in ``mlp_only_layers`` or off ``decoder_sparse_step``)."""
    experts = draw(st.integers(1, 6))
    hf.update(
        num_experts=experts,
        num_experts_per_tok=draw(st.integers(1, experts)),
        moe_intermediate_size=draw(st.integers(4, 40)),
        norm_topk_prob=draw(st.booleans()),
    )
    layers = hf["num_hidden_layers"]
    dense = draw(st.sampled_from(["none", "listed", "step"]))
    if dense == "listed":
        hf["mlp_only_layers"] = draw(st.lists(st.integers(0, layers - 1), unique=True))
    elif dense == "step":
        hf["decoder_sparse_step"] = draw(st.integers(1, 2))


def draw_gemma(draw: st.DrawFn, arch: str, hf: dict[str, Any]) -> None:
    """What Gemma adds: (1 + w) norms and sqrt(hidden) embeddings need no draw; the query
    scale, the window and which layers have it, soft-caps (Gemma 2), the sliding layers'
    RoPE base (Gemma 3)."""
    layers = hf["num_hidden_layers"]
    if hf["rope_parameters"]["rope_type"] not in ("default", "linear"):  # Gemma's kinds
        hf["rope_parameters"] = {"rope_type": "default", "rope_theta": 1e4}
        hf["max_position_embeddings"] = 64
    hf["query_pre_attn_scalar"] = draw(st.sampled_from([hf["head_dim"], 12, 64]))
    hf["sliding_window"] = draw(st.integers(1, 12))
    if draw(st.booleans()):
        kinds = st.sampled_from(["sliding_attention", "full_attention"])
        hf["layer_types"] = draw(st.lists(kinds, min_size=layers, max_size=layers))
    else:
        hf["sliding_window_pattern"] = draw(st.integers(1, 3))
    caps = st.one_of(st.none(), st.sampled_from([2.0, 5.0, 30.0]))
    hf["final_logit_softcapping"] = draw(caps)
    if arch == "gemma2":
        hf["attn_logit_softcapping"] = draw(caps)
        return
    global_rope = hf.pop("rope_parameters")
    local = {"rope_type": "default", "rope_theta": draw(st.sampled_from([1e4, 5e4]))}
    hf["rope_parameters"] = {"full_attention": global_rope, "sliding_attention": local}


def hf_model(spec: Spec) -> torch.nn.Module:
    """transformers' model with every parameter random (norms around 1, with spread)."""
    from aprlib.forward.hf_capture import eager_experts
    from conftest import hf_classes

    config_cls, model_cls = hf_classes()[spec.architecture]
    torch.manual_seed(spec.seed)
    model = eager_experts(model_cls(config_cls(**spec.hf)).eval())
    with torch.no_grad():
        for name, p in model.named_parameters():
            base = 1.0 if "norm" in name else 0.0
            p.copy_(base + torch.randn_like(p) * (0.5 if "norm" in name else 0.1))
    return model


def ours_from(model: torch.nn.Module, ops: Ops | None = None) -> Transformer:
    """Our Transformer built from transformers' config.json and its state dict (copied;
    a mixture of experts as transformers saves it, one tensor per expert, where in memory
    transformers 5 stacks them)."""
    cfg = from_hf({**model.config.to_dict(), "architectures": model.config.architectures})
    net = Transformer(cfg, ops)
    state = saved_state(model)
    if cfg.tie_word_embeddings:
        state.pop("lm_head.weight", None)
    net.load_state_dict(state, strict=True, assign=True)
    return net.eval()


def saved_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The tensors transformers writes for ``model`` (its own save, so its own conversion
    of in-memory stacked experts into the published one-tensor-per-expert names)."""
    state = model.state_dict()
    if not any(".experts." in name for name in state):
        return {k: v.detach().clone() for k, v in state.items()}
    import tempfile

    from safetensors.torch import load_file

    with tempfile.TemporaryDirectory() as folder:
        model.save_pretrained(folder)
        return load_file(str(Path(folder) / "model.safetensors"))


def parity(spec: Spec, ops: Ops | None = None) -> float:
    model = hf_model(spec)
    net = ours_from(model, ops)
    gen = torch.Generator().manual_seed(spec.seed)
    tokens = torch.randint(0, spec.hf["vocab_size"], (spec.batch, spec.length), generator=gen)
    with torch.no_grad():
        theirs = model(tokens).logits
        ours = net(tokens)
    assert ours.shape == theirs.shape and ours.dtype == torch.float32
    return float((ours - theirs).abs().max())


def check_parity(spec: Spec, ops: Ops | None = None) -> None:
    diff = parity(spec, ops)
    assert diff < TOLERANCE, f"max |ours - transformers| = {diff:.3g} >= {TOLERANCE} for {spec}"


@pytest.mark.falsifies("FALSIFY-FWD-001")
@reproducible(max_examples=40)
@given(spec=specs())
def test_logits_equal_transformers(spec, evidence):
    check_parity(spec)


FIXED = {
    "qwen2-gqa-untied": Spec(
        "qwen2",
        dict(
            vocab_size=96,
            hidden_size=64,
            intermediate_size=160,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=64,
            rope_parameters={"rope_type": "default", "rope_theta": 1e6},
            tie_word_embeddings=False,
        ),
        2,
        19,
        1,
    ),
    "llama3-scaled-tied-bias": Spec(
        "llama",
        dict(
            vocab_size=80,
            hidden_size=48,
            intermediate_size=72,
            num_hidden_layers=2,
            num_attention_heads=6,
            num_key_value_heads=2,
            head_dim=16,
            max_position_embeddings=64,
            rope_parameters={
                "rope_type": "llama3",
                "rope_theta": 5e5,
                "factor": 32.0,
                "low_freq_factor": 1.0,
                "high_freq_factor": 4.0,
                "original_max_position_embeddings": 16,
            },
            attention_bias=True,
            mlp_bias=True,
            tie_word_embeddings=True,
        ),
        1,
        23,
        2,
    ),
    "yarn-untied": Spec(
        "qwen2",
        dict(
            vocab_size=70,
            hidden_size=64,
            intermediate_size=40,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=64,
            rope_parameters={
                "rope_type": "yarn",
                "rope_theta": 1e4,
                "factor": 8.0,
                "original_max_position_embeddings": 8,
            },
            tie_word_embeddings=False,
        ),
        1,
        21,
        4,
    ),
    "qwen3-qk-norm-bias": Spec(
        "qwen3",
        dict(
            vocab_size=88,
            hidden_size=48,
            intermediate_size=100,
            num_hidden_layers=2,
            num_attention_heads=6,
            num_key_value_heads=2,
            head_dim=12,  # explicit, not hidden / heads
            max_position_embeddings=64,
            rope_parameters={"rope_type": "default", "rope_theta": 1e6},
            attention_bias=True,
            tie_word_embeddings=False,
        ),
        2,
        17,
        6,
    ),
    "mistral-window-untied": Spec(
        "mistral",
        dict(
            vocab_size=72,
            hidden_size=48,
            intermediate_size=56,
            num_hidden_layers=2,
            num_attention_heads=6,
            num_key_value_heads=2,
            head_dim=8,  # explicit, not hidden / heads
            max_position_embeddings=64,
            rope_parameters={"rope_type": "default", "rope_theta": 1e4},
            sliding_window=5,  # 21 tokens: most queries lose keys to the window
            tie_word_embeddings=False,
        ),
        2,
        21,
        7,
    ),
    "qwen2-window-from-layer-1-tied": Spec(
        "qwen2",
        dict(
            vocab_size=64,
            hidden_size=32,
            intermediate_size=48,
            num_hidden_layers=3,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=64,
            rope_parameters={"rope_type": "default", "rope_theta": 1e6},
            use_sliding_window=True,
            sliding_window=4,
            max_window_layers=1,  # layer 0 full, layers 1 and 2 windowed
            tie_word_embeddings=True,
        ),
        1,
        18,
        8,
    ),
    "olmo2-post-norms-bias": Spec(
        "olmo2",
        dict(
            vocab_size=76,
            hidden_size=48,
            intermediate_size=88,
            num_hidden_layers=2,
            num_attention_heads=6,
            num_key_value_heads=3,
            max_position_embeddings=64,
            rope_parameters={"rope_type": "default", "rope_theta": 5e5},
            attention_bias=True,
            tie_word_embeddings=False,
        ),
        2,
        15,
        9,
    ),
    "phi3-fused-gqa-window": Spec(  # k and v, gate and up: same sizes, so a swap is silent
        "phi3",
        dict(
            vocab_size=84,
            hidden_size=48,
            intermediate_size=56,
            num_hidden_layers=2,
            num_attention_heads=6,
            num_key_value_heads=2,
            max_position_embeddings=64,
            rope_parameters={"rope_type": "default", "rope_theta": 1e4},
            sliding_window=7,
            tie_word_embeddings=False,
            pad_token_id=0,
            bos_token_id=1,
            eos_token_id=2,
        ),
        2,
        17,
        11,
    ),
    "qwen3-moe-dense-layer": Spec(  # two of five experts per token; layer 1 dense
        "qwen3_moe",
        dict(
            vocab_size=78,
            hidden_size=48,
            intermediate_size=60,
            num_hidden_layers=3,
            num_attention_heads=6,
            num_key_value_heads=2,
            head_dim=8,
            max_position_embeddings=64,
            rope_parameters={"rope_type": "default", "rope_theta": 1e6},
            num_experts=5,
            num_experts_per_tok=2,
            moe_intermediate_size=24,
            norm_topk_prob=True,
            mlp_only_layers=[1],
            tie_word_embeddings=False,
        ),
        2,
        16,
        13,
    ),
    "gemma3-sandwich-local-rope": Spec(
        "gemma3_text",
        dict(
            vocab_size=70,
            hidden_size=48,
            intermediate_size=80,
            num_hidden_layers=3,
            num_attention_heads=4,
            num_key_value_heads=2,
            head_dim=16,
            max_position_embeddings=64,
            query_pre_attn_scalar=24,  # not head_dim: the scale is the config's
            sliding_window=5,
            layer_types=["sliding_attention", "full_attention", "sliding_attention"],
            rope_parameters={
                "full_attention": {"rope_type": "linear", "factor": 2.0, "rope_theta": 1e6},
                "sliding_attention": {"rope_type": "default", "rope_theta": 1e4},
            },
            final_logit_softcapping=8.0,
            tie_word_embeddings=True,
        ),
        2,
        17,
        10,
    ),
    "gemma2-softcaps-untied-bias": Spec(
        "gemma2",
        dict(
            vocab_size=66,
            hidden_size=32,
            intermediate_size=72,
            num_hidden_layers=3,
            num_attention_heads=4,
            num_key_value_heads=1,
            head_dim=8,
            max_position_embeddings=64,
            query_pre_attn_scalar=12,
            sliding_window=4,  # layers 0 and 2 windowed (Gemma 2's pattern of 2)
            attn_logit_softcapping=2.0,  # small caps: most scores and logits saturate
            final_logit_softcapping=3.0,
            rope_parameters={"rope_type": "default", "rope_theta": 1e4},
            attention_bias=True,
            tie_word_embeddings=False,
        ),
        1,
        19,
        11,
    ),
    "dynamic-tied-bias": Spec(
        "llama",
        dict(
            vocab_size=60,
            hidden_size=32,
            intermediate_size=48,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=1,
            max_position_embeddings=6,  # the 20 positions outgrow it: the base rescales
            rope_parameters={"rope_type": "dynamic", "rope_theta": 1e4, "factor": 4.0},
            attention_bias=True,
            tie_word_embeddings=True,
        ),
        1,
        20,
        5,
    ),
}


def check_generation_and_loss(spec: Spec) -> None:
    """Greedy generation with our KV cache equals transformers' greedy; so does the loss."""
    model = hf_model(spec)
    net = ours_from(model)
    gen = torch.Generator().manual_seed(spec.seed)
    tokens = torch.randint(0, spec.hf["vocab_size"], (1, 7), generator=gen)
    ours = net.generate(tokens, 12)
    with torch.no_grad():
        # the mask stated: generate would infer one from pad_token_id, masking a prompt's 0s
        theirs = model.generate(
            tokens,
            attention_mask=torch.ones_like(tokens),
            max_new_tokens=12,
            do_sample=False,
            eos_token_id=None,
            pad_token_id=0,
        )
        full = net(ours[:, :-1]).argmax(-1)[:, tokens.shape[1] - 1 :]
        hf_logits = model(ours[:, :-1]).logits  # the forward loss runs (dynamic rope: same length)
    assert torch.equal(ours, theirs), (ours.tolist(), theirs.tolist())
    rope = spec.hf["rope_parameters"]
    if rope.get("rope_type", rope.get("full_attention", {}).get("rope_type")) != "dynamic":
        # dynamic NTK rescales the base as the sequence grows: keys cached at a shorter
        # length keep their old rotation, so a cached decode and a full forward differ
        # in transformers too; what holds is the greedy equality with transformers above
        assert torch.equal(full, ours[:, tokens.shape[1] :]), "cached decode != full forward"
    expected = torch.nn.functional.cross_entropy(hf_logits[0], ours[0, 1:])
    with torch.no_grad():
        loss = net.loss(ours)
    assert abs(float(loss) - float(expected)) < TOLERANCE
    assert np.isclose(net.perplexity(ours), float(expected.exp()), rtol=1e-4)


@pytest.mark.falsifies("FALSIFY-FWD-002")
@pytest.mark.parametrize("name", sorted(FIXED))
def test_cached_greedy_generation_and_loss_equal_transformers(name):
    check_generation_and_loss(FIXED[name])


def float64_oracle(model: torch.nn.Module) -> torch.nn.Module:
    """transformers in float64 end to end: its RMSNorm casts to float32 by design, so the
    norms (x·rsqrt(mean(x²)+eps)·w, nothing else) are made to stay in float64."""
    model = model.double()
    for module in model.modules():
        kind = type(module).__name__
        if isinstance(getattr(module, "embed_scale", None), torch.Tensor):  # Gemma's sqrt(h)
            module.embed_scale = torch.tensor(module.scalar_embed_scale, dtype=torch.float64)
        if kind.endswith("RMSNorm"):
            eps = getattr(module, "variance_epsilon", None) or module.eps
            offset = 1.0 if kind.startswith("Gemma") else 0.0  # Gemma scales by (1 + w)

            def norm(x, m=module, eps=eps, offset=offset):
                normed = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps)
                return (offset + m.weight) * normed

            module.forward = norm
    return model


FLOAT64_TOLERANCE = 1e-9  # float64 rounding through a few layers is ~1e-13


def check_float64(spec: Spec) -> None:
    """float64 weights run in float64 at every capture point, and agree with transformers in
    float64 far below float32 error. transformers builds its rope tables in float32 by design,
    so the value check runs at position 0 (rope is the identity in any precision), batched."""
    model = hf_model(spec)
    net64 = ours_from(model).double()
    dtypes: dict[str, torch.dtype] = {}
    tokens = torch.randint(0, spec.hf["vocab_size"], (1, spec.length))
    with torch.no_grad(), net64.capture(lambda name, x: dtypes.__setitem__(name, x.dtype)):
        net64(tokens)
    wrong = {k: v for k, v in dtypes.items() if v != torch.float64}
    assert not wrong, f"capture points not in float64: {wrong}"
    first = torch.randint(0, spec.hf["vocab_size"], (8, 1))  # eight sequences, position 0
    with torch.no_grad():
        ref = float64_oracle(model)(first).logits
        e64 = float((net64(first) - ref).abs().max())
        e32 = float((ours_from(hf_model(spec))(first).double() - ref).abs().max())
    assert e64 < FLOAT64_TOLERANCE, f"float64 forward off by {e64:.3g} (float32: {e32:.3g})"


@pytest.mark.falsifies("FALSIFY-FWD-003")
@pytest.mark.parametrize("name", sorted(FIXED))
def test_float64_forward_equals_transformers(name):
    check_float64(FIXED[name])


def check_streamed(spec: Spec, folder: Path) -> None:
    """The model saved by transformers, streamed a layer at a time from the file (head in
    several row blocks): equal to transformers, and bit for bit the held forward."""
    from aprlib.forward import weights

    model = hf_model(spec)
    model.save_pretrained(folder)
    gen = torch.Generator().manual_seed(spec.seed)
    tokens = torch.randint(0, spec.hf["vocab_size"], (spec.batch, spec.length), generator=gen)
    rows = max(1, spec.hf["vocab_size"] // 3)  # the head in >= 3 blocks, held and streamed
    block_bytes, weights.HEAD_BLOCK_BYTES = (
        weights.HEAD_BLOCK_BYTES,
        rows * spec.hf["hidden_size"] * 4,
    )
    try:
        streamed = Transformer.from_file(folder, stream=True)
        held = Transformer.from_file(folder)
        with torch.no_grad():
            theirs = model(tokens).logits
            ours = streamed(tokens)
            again = held(tokens)
    finally:
        weights.HEAD_BLOCK_BYTES = block_bytes
    diff = float((ours - theirs).abs().max())
    assert diff < TOLERANCE, f"streamed: max |ours - transformers| = {diff:.3g} for {spec}"
    assert torch.equal(ours, again), "the streamed forward's logits are not the held forward's bits"


@pytest.mark.falsifies("FALSIFY-FWD-004")
@pytest.mark.parametrize("name", sorted(FIXED))
def test_streamed_forward_equals_transformers(name, tmp_path):
    check_streamed(FIXED[name], tmp_path)
