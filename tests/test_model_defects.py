"""The forward-parity and arch-polymorphic falsifiers turn red on injected defects."""

from __future__ import annotations

import pytest
import torch

from aprlib import Ops
from aprlib.compare import shapes as shapes_mod
from aprlib.formats import layout
from aprlib.forward import model as model_mod
from falsifiers import test_arch_polymorphic_v1 as arch
from falsifiers import test_forward_parity_hf_v1 as fwd

QWEN = fwd.FIXED["qwen2-gqa-untied"]
LLAMA3 = fwd.FIXED["llama3-scaled-tied-bias"]


class InterleavedRope(Ops):
    """GPT-J pairing (adjacent elements) instead of HF's rotate_half."""

    def rope(self, x, cos, sin):
        pairs = x.unflatten(-1, (-1, 2))
        rotated = torch.stack((-pairs[..., 1], pairs[..., 0]), dim=-1).flatten(-2)
        return x * cos + rotated * sin


class TiledGqa(Ops):
    """q head h reads kv head h % Hkv (repeat instead of repeat_interleave)."""

    def attention(self, q, k, v):
        rep = q.shape[1] // k.shape[1]
        k, v = k.repeat(1, rep, 1, 1), v.repeat(1, rep, 1, 1)
        return torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)


class Float32Linear(Ops):
    def linear(self, x, weight, bias=None):
        return super().linear(x.float(), weight.float(), bias).to(x.dtype)


@pytest.mark.parametrize("ops", [InterleavedRope(), TiledGqa()], ids=["rope-pairs", "gqa-map"])
def test_fwd_001_catches_wrong_ops(ops):
    with pytest.raises(AssertionError, match="max"):
        fwd.check_parity(QWEN, ops)


@pytest.mark.parametrize("scale", [0.0, 2.0, 10.0], ids=["dropped", "doubled", "x10"])
def test_fwd_001_catches_a_mis_scaled_bias(monkeypatch, scale):
    real = fwd.ours_from

    def loader(model, ops=None):
        net = real(model, ops)
        with torch.no_grad():
            for layer in net.model.layers:
                layer.self_attn.q_proj.bias.mul_(scale)
        return net

    monkeypatch.setattr(fwd, "ours_from", loader)
    with pytest.raises(AssertionError, match="max"):
        fwd.check_parity(QWEN)


@pytest.mark.parametrize("name", ["llama3", "yarn-untied", "dynamic-tied-bias"])
def test_fwd_001_catches_ignored_rope_scaling(monkeypatch, name):
    real = model_mod.rope_inv_freq
    monkeypatch.setattr(
        model_mod,
        "rope_inv_freq",
        lambda cfg, seq_len=0: real(type(cfg)(**{**cfg.to_dict(), "rope_scaling": None})),
    )
    with pytest.raises(AssertionError, match="max"):
        fwd.check_parity(LLAMA3 if name == "llama3" else fwd.FIXED[name])


def test_fwd_001_catches_yarn_without_its_attention_factor(monkeypatch):
    monkeypatch.setattr(model_mod, "rope_attention_factor", lambda cfg: 1.0)
    with pytest.raises(AssertionError, match="max"):
        fwd.check_parity(fwd.FIXED["yarn-untied"])


def test_fwd_001_catches_dynamic_scaling_that_ignores_the_length(monkeypatch):
    real = model_mod.rope_inv_freq
    monkeypatch.setattr(model_mod, "rope_inv_freq", lambda cfg, seq_len=0: real(cfg, 0))
    with pytest.raises(AssertionError, match="max"):
        fwd.check_parity(fwd.FIXED["dynamic-tied-bias"])


def test_fwd_002_catches_a_cache_that_forgets(monkeypatch):
    def forgetful(self, layer, k, v):
        if layer == len(self.keys):
            self.keys.append(k)
            self.values.append(v)
        else:
            self.keys[layer] = torch.cat((self.keys[layer][..., :1, :], k), dim=-2)
            self.values[layer] = torch.cat((self.values[layer][..., :1, :], v), dim=-2)
        return self.keys[layer], self.values[layer]

    monkeypatch.setattr(model_mod.KVCache, "extend", forgetful)
    with pytest.raises(AssertionError):
        fwd.check_generation_and_loss(QWEN)


def test_fwd_002_catches_a_loss_shifted_by_one(monkeypatch):
    def shifted(self, tokens):
        return self.ops.cross_entropy(self(tokens[:, :-1]), tokens[:, :-1])

    monkeypatch.setattr(model_mod.Transformer, "loss", shifted)
    with pytest.raises(AssertionError):
        fwd.check_generation_and_loss(QWEN)


def test_fwd_003_catches_a_silent_downcast(monkeypatch):
    real = fwd.ours_from
    monkeypatch.setattr(fwd, "ours_from", lambda model, ops=None: real(model, Float32Linear()))
    with pytest.raises(AssertionError):
        fwd.check_float64(LLAMA3)


def test_arch_001_catches_a_loader_that_names_one_field(monkeypatch, tiny_factory, tmp_path):
    real = shapes_mod.field_mismatches
    monkeypatch.setattr(shapes_mod, "field_mismatches", lambda cfg, s: real(cfg, s)[:1])
    changes, expected = arch.EDITS["layers+ffn"]
    with pytest.raises(AssertionError, match="not named"):
        arch.check_mismatch_named(tiny_factory("qwen2"), tmp_path, changes, expected)


def test_arch_001_catches_a_loader_that_does_not_check(monkeypatch, tiny_factory, tmp_path):
    monkeypatch.setattr(model_mod, "check_weights_match", lambda *a, **k: None)
    changes, expected = arch.EDITS["hidden"]
    with pytest.raises((pytest.fail.Exception, RuntimeError)):
        arch.check_mismatch_named(tiny_factory("qwen2"), tmp_path, changes, expected)


def test_arch_002_catches_a_gguf_loader_that_keeps_llama_permutation(
    monkeypatch, tiny_factory, tmp_path
):
    monkeypatch.setattr(layout, "unpermute_qk", lambda rows, heads: rows)
    with pytest.raises(AssertionError, match=r"m\.gguf"):
        arch.check_every_format(tiny_factory("llama"), tmp_path)


def test_capture_fires_every_point_in_order_and_leaves_no_hook():
    model = fwd.hf_model(LLAMA3)
    net = fwd.ours_from(model)
    seen: list[str] = []
    tokens = torch.randint(0, 80, (1, 9))
    with torch.no_grad(), net.capture(lambda name, x: seen.append(name)):
        net(tokens)
    assert seen == list(model_mod.capture_graph(2))
    assert not net._hooks


def test_capture_refuses_a_forward_that_skips_a_point(monkeypatch):
    net = fwd.ours_from(fwd.hf_model(QWEN))
    real = net._emit
    monkeypatch.setattr(net, "_emit", lambda n, x: None if n.endswith("mlp.up") else real(n, x))
    with (
        pytest.raises(model_mod.CaptureError, match=r"mlp\.up"),
        torch.no_grad(),
        net.capture(lambda name, x: None),
    ):
        net(torch.randint(0, 96, (1, 5)))
    assert not net._hooks


def test_capture_hands_out_clones():
    net = fwd.ours_from(fwd.hf_model(QWEN))
    kept: dict[str, torch.Tensor] = {}
    tokens = torch.randint(0, 96, (1, 5))
    with torch.no_grad(), net.capture(lambda n, x: kept.__setitem__(n, x)):
        net(tokens)
    emb = net.model.embed_tokens.weight[tokens]
    kept["embed"].add_(1.0)  # a hook that writes in place must not reach the model
    assert torch.equal(net.model.embed_tokens.weight[tokens], emb)


def test_llamacpp_parity_catches_a_gguf_writer_that_drops_yarn(monkeypatch, tmp_path):
    """FALSIFY-LLAMACPP-001's rope-scaling case turns red when the writer forgets yarn."""
    from aprlib.config import modelconfig as config_mod
    from falsifiers import test_gguf_llamacpp_parity_v1 as lcpp
    from falsifiers.llamacpp_oracle import require_llama_cpp

    require_llama_cpp()  # found, not imported: llama.cpp runs in a child
    monkeypatch.setattr(config_mod, "GGUF_ROPE_SCALING_TYPES", frozenset())
    with pytest.raises(AssertionError, match="F32: failed"):
        lcpp.test_f32_gguf_with_rope_scaling_in_llamacpp_equals_reference(
            tmp_path, "qwen2", "yarn", _NoEvidence()
        )


class _NoEvidence:
    def record(self, **_: object) -> None:
        pass


@pytest.mark.parametrize(
    ("rope", "says"),
    [
        ({"rope_type": "dynamic", "factor": 4.0}, "dynamic has no llama.cpp equivalent"),
        (
            {
                "rope_type": "yarn",
                "factor": 4.0,
                "original_max_position_embeddings": 8,
                "beta_fast": 8.0,
            },
            "beta_fast=8.0: llama.cpp does not read",
        ),
        ({"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 8}, None),
    ],
)
def test_gguf_convert_says_where_llamacpp_will_not_rotate_as_the_source(tmp_path, rope, says):
    from aprlib import convert
    from conftest import build_tiny

    tiny = build_tiny(tmp_path / "src", "llama", rope_parameters={**rope, "rope_theta": 1e4})
    report = convert(tiny.safetensors, tmp_path / "out.gguf")
    notes = " ".join(report.notes)
    assert (says in notes) if says else ("rope_scaling" not in notes), report.notes


def test_config_003_catches_a_writer_that_writes_a_qwen2_hf_cannot_describe(tmp_path, monkeypatch):
    """CONFIG-003 holds the refusal: a safetensors writer that writes a bias-less Qwen2
    anyway (transformers would load other weights) turns it red."""
    import aprlib.formats.safetensors as st_format
    from falsifiers import test_model_config_v1 as config_falsifier

    monkeypatch.setattr(st_format, "hf_cannot_say", lambda cfg: None)
    with pytest.raises(pytest.fail.Exception, match="DID NOT RAISE"):
        config_falsifier.check_round_trip(config_falsifier.VARIANTS["qwen2-nobias-yarn"], tmp_path)


def test_fwd_004_catches_a_streamed_layer_that_skips_its_bias(monkeypatch, tmp_path):
    from aprlib.forward.weights import StreamedWeights

    real = StreamedWeights.layer

    def without_bias(self, i):
        layer = real(self, i)
        if i == 1:
            with torch.no_grad():
                layer.self_attn.k_proj.bias.zero_()
        return layer

    monkeypatch.setattr(StreamedWeights, "layer", without_bias)
    with pytest.raises(AssertionError, match="streamed: max"):
        fwd.check_streamed(QWEN, tmp_path)


def test_fwd_004_catches_head_blocks_in_the_wrong_columns(monkeypatch, tmp_path):
    from aprlib.forward.weights import StreamedWeights

    real = StreamedWeights.head_blocks

    def reversed_blocks(self):
        yield from reversed([block.clone() for block in real(self)])

    monkeypatch.setattr(StreamedWeights, "head_blocks", reversed_blocks)
    with pytest.raises(AssertionError, match="streamed: max"):
        fwd.check_streamed(LLAMA3, tmp_path)


def test_fwd_004_catches_a_streamed_forward_that_is_not_the_held_bits(monkeypatch, tmp_path):
    """Within transformers' 1e-4 but not the held forward's bits: a streamed embedding
    rounded through bfloat16 on its way in."""
    from aprlib.forward.weights import StreamedWeights

    real = StreamedWeights.embedding

    def rounded(self, tokens):
        rows, index = real(self, tokens)
        return rows + (rows.to(torch.bfloat16).float() - rows) * 1e-3, index

    monkeypatch.setattr(StreamedWeights, "embedding", rounded)
    with pytest.raises(AssertionError, match="held forward's bits"):
        fwd.check_streamed(QWEN, tmp_path)


QWEN3 = fwd.FIXED["qwen3-qk-norm-bias"]


class QkNormOverTheProjection(Ops):
    """Qwen3's q/k norm taken over the whole projection (OLMo 2's scope), not each head."""

    def rms_norm(self, x, weight, eps):
        if x.dim() != 4:  # [B, T, H, D]: the q/k norm; everything else as it is
            return super().rms_norm(x, weight, eps)
        flat = x.flatten(-2)
        normed = flat * torch.rsqrt(flat.pow(2).mean(-1, keepdim=True) + eps)
        return weight * normed.view_as(x)


class QkNormSkipped(Ops):
    def rms_norm(self, x, weight, eps):
        return x if x.dim() == 4 else super().rms_norm(x, weight, eps)


@pytest.mark.parametrize(
    "ops", [QkNormOverTheProjection(), QkNormSkipped()], ids=["wrong-scope", "skipped"]
)
def test_fwd_001_catches_a_qk_norm_defect(ops):
    with pytest.raises(AssertionError, match="max"):
        fwd.check_parity(QWEN3, ops)


MISTRAL = fwd.FIXED["mistral-window-untied"]
QWEN2_WINDOWED = fwd.FIXED["qwen2-window-from-layer-1-tied"]


class WindowOffByOne(Ops):
    """One key too many in the window: j >= i - window."""

    def attention(self, q, k, v, window=None):
        return super().attention(q, k, v, None if window is None else window + 1)


class WindowIgnored(Ops):
    """Full causal attention on a windowed layer (what llama.cpp's llama graph computes)."""

    def attention(self, q, k, v, window=None):
        return super().attention(q, k, v)


@pytest.mark.parametrize("spec", [MISTRAL, QWEN2_WINDOWED], ids=["mistral", "qwen2-layers"])
@pytest.mark.parametrize("ops", [WindowOffByOne(), WindowIgnored()], ids=["off-by-one", "off"])
def test_fwd_001_catches_a_window_defect(spec, ops):
    with pytest.raises(AssertionError, match="max"):
        fwd.check_parity(spec, ops)


def test_fwd_001_catches_windows_on_the_wrong_layers(monkeypatch):
    """Qwen2's window read as covering layers below ``max_window_layers`` (the old rule)."""
    import dataclasses

    real = fwd.ours_from

    def loader(model, ops=None):
        net = real(model, ops)
        net.config = dataclasses.replace(net.config, layer_types=None)  # every layer windowed
        return net

    monkeypatch.setattr(fwd, "ours_from", loader)
    with pytest.raises(AssertionError, match="max"):
        fwd.check_parity(QWEN2_WINDOWED)


@pytest.mark.parametrize("ops", [WindowOffByOne(), WindowIgnored()], ids=["off-by-one", "off"])
def test_fwd_002_catches_a_window_defect_in_the_cached_decode(monkeypatch, ops):
    real = fwd.ours_from
    monkeypatch.setattr(fwd, "ours_from", lambda model, _=None: real(model, ops))
    with pytest.raises(AssertionError):
        fwd.check_generation_and_loss(MISTRAL)


OLMO2 = fwd.FIXED["olmo2-post-norms-bias"]


class QkNormPerHead(Ops):
    """OLMo 2's q/k norm taken per head (Qwen3's scope) with the projection's weights."""

    def qk_norm(self, x, weight, eps):
        return self.rms_norm(x, weight.view(x.shape[-2:]), eps)


def test_fwd_001_catches_olmo2s_qk_norm_per_head():
    with pytest.raises(AssertionError, match="max"):
        fwd.check_parity(OLMO2, QkNormPerHead())


@pytest.mark.parametrize("norm", ["post_attention_layernorm", "post_feedforward_layernorm"])
def test_fwd_001_catches_an_olmo2_post_norm_skipped(monkeypatch, norm):
    """A backend that computes OLMo 2's layer as a pre-norm family would: one of the norms
    on the outputs of attention and the MLP left out."""
    real = fwd.ours_from
    skipped: set[int] = set()

    class SkipsIt(Ops):
        def rms_norm(self, x, weight, eps):
            return x if weight.data_ptr() in skipped else super().rms_norm(x, weight, eps)

    def loader(model, ops=None):
        net = real(model, SkipsIt())
        skipped.update(getattr(layer, norm).weight.data_ptr() for layer in net.model.layers)
        return net

    monkeypatch.setattr(fwd, "ours_from", loader)
    with pytest.raises(AssertionError, match="max"):
        fwd.check_parity(OLMO2)


GEMMA3 = fwd.FIXED["gemma3-sandwich-local-rope"]
GEMMA2 = fwd.FIXED["gemma2-softcaps-untied-bias"]


class NormOffsetDropped(Ops):
    """Gemma's RMSNorm computed as everyone else's: w, not 1 + w."""

    def rms_norm(self, x, weight, eps, offset=0.0):
        return super().rms_norm(x, weight, eps)


class NormOffsetTwice(Ops):
    """1 added to a weight that already holds it (llama.cpp's stored w + 1, plus 1)."""

    def rms_norm(self, x, weight, eps, offset=0.0):
        return super().rms_norm(x, weight, eps, offset=2 * offset)


class GeluErf(Ops):
    """Exact GELU where Gemma's config says the tanh approximation."""

    def geglu(self, gate, up, approximate="tanh"):
        return super().geglu(gate, up, approximate="none")


class AttnSoftcapDropped(Ops):
    def attention(self, q, k, v, window=None, scale=None, softcap=None):
        return super().attention(q, k, v, window=window, scale=scale)


class ScaleIgnored(Ops):
    """Queries scaled by 1/sqrt(head_dim) whatever query_pre_attn_scalar says."""

    def attention(self, q, k, v, window=None, scale=None, softcap=None):
        return super().attention(q, k, v, window=window, softcap=softcap)


@pytest.mark.parametrize(
    ("spec", "ops"),
    [
        (GEMMA3, NormOffsetDropped()),
        (GEMMA2, NormOffsetDropped()),
        (GEMMA3, NormOffsetTwice()),
        (GEMMA3, GeluErf()),
        (GEMMA2, AttnSoftcapDropped()),
        (GEMMA3, ScaleIgnored()),
    ],
    ids=["no-offset", "no-offset-gemma2", "offset-twice", "gelu-erf", "no-attn-cap", "scale"],
)
def test_fwd_001_catches_a_gemma_op_defect(spec, ops):
    with pytest.raises(AssertionError, match="max"):
        fwd.check_parity(spec, ops)


@pytest.mark.parametrize(
    "change",
    [
        {"final_logit_softcapping": None},  # the logits left uncapped
        {"rope_local_theta": None},  # sliding layers turned with the global base
    ],
    ids=["no-final-cap", "no-local-rope"],
)
def test_fwd_001_catches_a_gemma_config_read_wrong(monkeypatch, change):
    import dataclasses

    real = fwd.ours_from

    def loader(model, ops=None):
        net = real(model, ops)
        net.config = dataclasses.replace(net.config, **change)
        return net

    monkeypatch.setattr(fwd, "ours_from", loader)
    with pytest.raises(AssertionError, match="max"):
        fwd.check_parity(GEMMA3)


@pytest.mark.parametrize("spec", [GEMMA3, GEMMA2], ids=["gemma3", "gemma2"])
def test_fwd_001_catches_the_embedding_scale_dropped(monkeypatch, spec):
    """The family described without its sqrt(hidden) embedding scale."""
    import dataclasses

    from aprlib.config import families

    name = spec.architecture
    plain = dataclasses.replace(families.FAMILIES[name], embed_scale=False)
    monkeypatch.setitem(families.FAMILIES, name, plain)
    with pytest.raises(AssertionError, match="max"):
        fwd.check_parity(spec)
