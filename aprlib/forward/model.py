"""The reference transformer: Qwen2, Llama, Mistral and Qwen3 in one readable forward (the spec
in code).

Read it top to bottom: ``Ops`` holds the arithmetic (a backend such as Triton swaps it);
``Transformer`` holds the weights in the module tree Hugging Face uses, so ``state_dict()``
keys are the HF tensor names, and its ``forward`` says in order what every layer does:

    x = embed(tokens)
    for each layer:
        h = rms_norm(x);   q, k, v = h·Wqᵀ (+bq), h·Wkᵀ (+bk), h·Wvᵀ (+bv)
        q, k = rms_norm(q), rms_norm(k) over each head   (qk_norm families: Qwen3; OLMo 2
                                                          over the whole projection)
        q, k = rope(q), rope(k);   a = causal_gqa_attention(q, k, v)
                                        (keys within the layer's sliding window, if it has one)
        x = x + a·Woᵀ
        h = rms_norm(x);   x = x + (silu(h·Wgᵀ) * h·Wuᵀ)·Wdᵀ
    (OLMo 2 norms after, not before: h = x, x = x + rms_norm(a·Woᵀ), x = x + rms_norm(mlp))
    logits = rms_norm(x)·Wheadᵀ   (Whead = the embedding when tied)

Every intermediate is announced at a named capture point (``CAPTURE`` below) to whatever
hooks are attached (trace); nothing is cloned or computed for them when none are.
``points`` is the forward itself, pausing at each point (bisect steps three in turn).
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import threading
import warnings
import weakref
from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from aprlib.compare.shapes import check_weights_match
from aprlib.config.families import QKV_ORDER
from aprlib.config.modelconfig import ConfigError, ModelConfig, yarn_attention_factor, yarn_factor
from aprlib.errors import ModelFileError
from aprlib.formats.io import LM_HEAD, Model, open_model
from aprlib.forward.weights import ModuleWeights

if TYPE_CHECKING:
    from aprlib.forward.weights import DerivedWeights, StreamedWeights, Transform

Hook = Callable[[str, Tensor], None]
#: the MLP's gate activation by config name → (Ops method, GELU's approximation)
ACTIVATIONS = {
    "silu": ("swiglu", ""),
    "swish": ("swiglu", ""),
    "gelu_pytorch_tanh": ("geglu", "tanh"),
    "gelu_tanh": ("geglu", "tanh"),
    "gelu": ("geglu", "none"),
}
WIDEN_BYTES = 40 << 20  # a weight widened to the activations' dtype (float64) this much at a time
_widening = threading.local()  # one reused buffer per thread: see ``widened_rows``


class Ops:
    """torch eager reference arithmetic; a backend overrides any of these methods.

    Weights are cast to the activations' dtype, so one set of float32 weights can run a
    float64 reference pass (what bisect measures its noise floor against).
    """

    def embedding(self, tokens: Tensor, weight: Tensor) -> Tensor:
        return F.embedding(tokens, weight)

    def rms_norm(self, x: Tensor, weight: Tensor, eps: float, offset: float = 0.0) -> Tensor:
        """``offset``: the family scales by (offset + w) (Gemma's 1 + w); passed only where
        it is not 0."""
        # half precision is normalised in float32, as HF does; float32/64 in their own dtype
        xf = x.float() if x.dtype in (torch.float16, torch.bfloat16) else x
        normed = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
        if offset:  # Gemma: (offset + w) times the normed values in float32, then cast
            return ((weight.to(xf.dtype) + offset) * normed).to(x.dtype)
        return weight.to(x.dtype) * normed.to(x.dtype)

    def qk_norm(self, x: Tensor, weight: Tensor, eps: float, offset: float = 0.0) -> Tensor:
        """RMSNorm of q or k ``[B, T, H, D]`` over the scope its weight states: each head
        (weight ``[D]``, Qwen3) or the whole projection (weight ``[H*D]``, OLMo 2)."""
        more = {"offset": offset} if offset else {}
        if weight.numel() == x.shape[-1]:
            return self.rms_norm(x, weight, eps, **more)
        return self.rms_norm(x.flatten(-2), weight, eps, **more).view_as(x)

    def linear(self, x: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
        if bias is not None:
            bias = bias.to(x.dtype)
        if weight.dtype == x.dtype:
            return F.linear(x, weight, bias)
        out = x.new_empty(*x.shape[:-1], weight.shape[0])
        row = 0
        for w in widened_rows(weight, x.dtype):  # each block straight into its columns
            out[..., row : row + w.shape[0]] = F.linear(x, w)
            row += w.shape[0]
        return out if bias is None else out + bias

    def add_bias(self, y: Tensor, bias: Tensor) -> Tensor:
        """The q/k/v bias, added apart from its matmul so both sides of it are capture
        points (``pre_bias``, ``post_bias``): a backend that fuses it into its GEMM, or adds
        it twice, overrides this and is bisected at ``post_bias``."""
        return y + bias.to(y.dtype)

    def rope(self, x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
        return x * cos + rotate_half(x) * sin

    def attention(
        self,
        q: Tensor,
        k: Tensor,
        v: Tensor,
        window: int | None = None,
        scale: float | None = None,
        softcap: float | None = None,
    ) -> Tensor:
        """Causal GQA: q head h reads kv head h // (Hq // Hkv); query i sits at Tk-Tq+i.

        The forward passes each keyword only where it changes the result: ``window``, query
        i reads only the last ``window`` keys up to its own (a sliding-window layer);
        ``scale``, what q·kᵀ is multiplied by (default 1/√head_dim; Gemma's
        query_pre_attn_scalar^-½); ``softcap``, scores pass through cap·tanh(s / cap)
        before the mask (Gemma 2)."""
        tq, tk = q.shape[-2], k.shape[-2]
        mask = None
        if tq != tk or window is not None:  # a cache: the queries are the last tq positions
            mask = causal_mask(tq, tk, q.device, window)
        if softcap is None:
            return F.scaled_dot_product_attention(
                q, k, v, attn_mask=mask, is_causal=mask is None, enable_gqa=True, scale=scale
            )
        rep = q.shape[1] // k.shape[1]
        k, v = k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1)
        scores = (q @ k.transpose(-1, -2)) * (scale or q.shape[-1] ** -0.5)
        scores = torch.tanh(scores / softcap) * softcap
        allowed = mask if mask is not None else causal_mask(tq, tk, q.device)
        weights = scores.masked_fill(~allowed, float("-inf")).softmax(-1)
        return weights @ v

    def swiglu(self, gate: Tensor, up: Tensor) -> Tensor:
        return F.silu(gate) * up

    def geglu(self, gate: Tensor, up: Tensor, approximate: str = "tanh") -> Tensor:
        """GELU-gated MLP (Gemma: the tanh approximation, ``gelu_pytorch_tanh``)."""
        return F.gelu(gate, approximate=approximate) * up

    def cross_entropy(self, logits: Tensor, targets: Tensor) -> Tensor:
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), targets.reshape(-1))


def widened_rows(weight: Tensor, dtype: torch.dtype) -> Iterator[Tensor]:
    """``weight`` in ``dtype``, a block of rows at a time, each written over the last.

    A float64 pass over float32 weights (bisect's reference) would otherwise allocate a
    fresh widened copy of every weight: a vocab-sized head is >1 GB, and each fresh block
    is new memory the kernel must fault in page by page, which cost as much as the float64
    matmuls themselves. One buffer per thread, reused, is faulted in once. Each block must
    be consumed before the next is asked for.
    """
    rows_per_block = max(1, WIDEN_BYTES // (weight.shape[1] * dtype.itemsize))
    need = min(rows_per_block, weight.shape[0]) * weight.shape[1]
    key = (weight.device, dtype)
    buffers: dict[tuple[torch.device, torch.dtype], Tensor] = _widening.__dict__.setdefault(
        "buffers", {}
    )
    buffer = buffers.get(key)
    if buffer is None or buffer.numel() < need:
        buffer = buffers[key] = torch.empty(need, dtype=dtype, device=weight.device)
    for block in weight.split(rows_per_block):
        widened = buffer[: block.numel()].view(block.shape)
        widened.copy_(block)
        yield widened


def causal_mask(
    tq: int, tk: int, device: torch.device | str = "cpu", window: int | None = None
) -> Tensor:
    """True where query i (at absolute position tk-tq+i) may attend to key j: j <= i, and
    with a sliding ``window`` also j > i - window (transformers' ``sliding_window_overlay``:
    the query's own key and the window - 1 before it)."""
    rows = torch.arange(tk - tq, tk, device=device)[:, None]
    keys = torch.arange(tk, device=device)[None, :]
    allowed = keys <= rows
    return allowed if window is None else allowed & (keys > rows - window)


# --- rotary position embedding -------------------------------------------------------------


def rotate_half(x: Tensor) -> Tensor:
    """HF ``rotate_half``: the first half of each head pairs with the second half."""
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def rope_inv_freq(cfg: ModelConfig, seq_len: int = 0) -> Tensor:
    """Per-pair rotation frequencies (float64), with the config's rope scaling applied.

    ``seq_len``: positions this forward covers; only dynamic NTK scaling depends on it (it
    rescales the base once a sequence outgrows ``max_position_embeddings``, as
    transformers does for the positions it computes).
    """
    dim = cfg.attention_head_dim
    exponents = torch.arange(0, dim, 2, dtype=torch.float64) / dim
    inv_freq = 1.0 / cfg.rope_theta**exponents
    scaling = cfg.rope_scaling
    if scaling is None:
        return inv_freq
    kind = scaling["rope_type"]
    if kind == "linear":
        return inv_freq / scaling["factor"]
    if kind == "llama3":
        return llama3_scaled(
            inv_freq,
            scaling["factor"],
            scaling["low_freq_factor"],
            scaling["high_freq_factor"],
            scaling["original_max_position_embeddings"],
        )
    if kind == "yarn":
        return yarn_scaled(inv_freq, cfg.rope_theta, dim, scaling, cfg.max_position_embeddings)
    if kind == "dynamic":
        longest = max(seq_len, cfg.max_position_embeddings)
        factor = scaling["factor"]
        growth = factor * longest / cfg.max_position_embeddings - (factor - 1)
        return 1.0 / (cfg.rope_theta * growth ** (dim / (dim - 2))) ** exponents
    raise ConfigError(
        f"rope_scaling type {kind!r} is not implemented by the reference forward "
        "(default, linear, llama3, yarn and dynamic are)"
    )


def rope_attention_factor(cfg: ModelConfig) -> float:
    """What cos and sin are multiplied by: YaRN's temperature (1 for every other kind)."""
    scaling = cfg.rope_scaling
    if scaling is None or scaling["rope_type"] != "yarn":
        return 1.0
    return yarn_attention_factor(scaling, cfg.max_position_embeddings)


def yarn_scaled(
    inv_freq: Tensor, base: float, dim: int, scaling: dict[str, Any], max_positions: int
) -> Tensor:
    """YaRN (transformers' ``_compute_yarn_parameters``): frequencies that turn fewer than
    ``beta_slow`` times over the original context are interpolated (divided by the
    factor), those turning more than ``beta_fast`` times are kept, a linear ramp between."""
    factor = yarn_factor(scaling, max_positions)
    original = scaling.get("original_max_position_embeddings") or max_positions
    beta_fast = scaling.get("beta_fast") or 32
    beta_slow = scaling.get("beta_slow") or 1

    def correction_dim(rotations: float) -> float:
        return dim * math.log(original / (rotations * 2 * math.pi)) / (2 * math.log(base))

    low, high = correction_dim(beta_fast), correction_dim(beta_slow)
    if scaling.get("truncate", True):
        low, high = math.floor(low), math.ceil(high)
    low, high = max(low, 0), min(high, dim - 1)
    if low == high:
        high += 0.001  # transformers' guard against a zero-width ramp
    ramp = ((torch.arange(dim // 2, dtype=torch.float64) - low) / (high - low)).clamp(0, 1)
    keep = 1 - ramp  # the share of each frequency extrapolated (kept as it is)
    return inv_freq / factor * (1 - keep) + inv_freq * keep


def llama3_scaled(
    inv_freq: Tensor, factor: float, low: float, high: float, old_context: float
) -> Tensor:
    """HF's llama3 rope scaling in ``inv_freq``'s dtype: long wavelengths slowed by
    ``factor``, short kept, smooth between. One formula for the float64 reference and the
    kernels' float32 tables (which must match transformers bit for bit)."""
    wavelen = 2 * math.pi / inv_freq
    scaled = torch.where(wavelen > old_context / low, inv_freq / factor, inv_freq)
    smooth = (old_context / wavelen - low) / (high - low)
    smoothed = (1 - smooth) * scaled / factor + smooth * scaled
    medium = (wavelen >= old_context / high) & (wavelen <= old_context / low)
    return torch.where(medium, smoothed, scaled)


def rope_tables(cfg: ModelConfig, positions: Tensor, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    """cos/sin ``[T, head_dim]`` for the given absolute positions (computed in float64)."""
    seq_len = int(positions.max()) + 1 if positions.numel() else 0
    inv_freq = rope_inv_freq(cfg, seq_len).to(positions.device)
    angles = positions.to(torch.float64)[:, None] * inv_freq
    angles = torch.cat((angles, angles), dim=-1)
    scale = rope_attention_factor(cfg)
    return (angles.cos() * scale).to(dtype), (angles.sin() * scale).to(dtype)


# --- capture points ------------------------------------------------------------------------


def split_fused(y: Tensor, sizes: tuple[int, ...]) -> tuple[Tensor, ...]:
    """A fused projection's output cut into its parts, in the order its rows hold them
    (``families.QKV_ORDER``: q, k, v; ``GATE_UP_ORDER``: gate, up). Views, not copies.
    Under GQA k and v are the same size, and so are gate and up: parts taken in the wrong
    order run without a shape error, which is why this is one function with one order."""
    return tuple(y.split(list(sizes), dim=-1))


def route(logits: Tensor, k: int, renormalise: bool) -> tuple[Tensor, Tensor]:
    """(weights, experts) of each token: the top ``k`` of the softmax over the router's
    logits (in float32), renormalised to sum to 1 when the config says so, in the logits'
    dtype. One function, so the routing a defect gets wrong is this."""
    probs = torch.softmax(logits, dim=-1, dtype=torch.float32)
    weights, chosen = torch.topk(probs, k, dim=-1)
    if renormalise:
        weights = weights / weights.sum(dim=-1, keepdim=True)
    return weights.to(logits.dtype), chosen


def capture_graph(
    num_layers: int,
    qk_norm: bool = False,
    norms: str = "pre",
    moe_layers: frozenset[int] = frozenset(),
) -> dict[str, tuple[str, ...]]:
    """Every capture point in the order it fires, mapped to the points it is computed from.

    Bisect uses the inputs to tell a point that *introduces* a divergence (inputs agree,
    output does not) from one that only inherits it. ``attn.scores`` is qkᵀ/√d before the
    causal mask and softmax (every query-key pair), a view for statistics beside the path.
    ``qk_norm``: the family normalises q and k before RoPE (``attn.{q,k}.norm``, Qwen3).
    ``norms``: where the family's norms sit (``Family.norms``): "pre" before attention and
    the MLP (``attn_norm``, ``ffn_norm``); "post" after them (``attn.post_norm``,
    ``mlp.post_norm``, OLMo 2); "sandwich" both (Gemma). ``moe_layers``: layers whose
    MLP is a mixture of experts: its router's logits (``mlp.router``, one per expert) and
    the weighted sum of the chosen experts (``mlp.down``) are its points; one expert's
    output covers only the tokens routed to it, so it is no point.
    """
    before, after = norms in ("pre", "sandwich"), norms in ("post", "sandwich")
    graph: dict[str, tuple[str, ...]] = {"embed": ()}
    resid = "embed"
    for i in range(num_layers):
        p = f"layers.{i}."
        attn_in = resid
        if before:
            graph[p + "attn_norm"] = (resid,)
            attn_in = p + "attn_norm"
        for name in "qkv":
            graph[p + f"attn.{name}.pre_bias"] = (attn_in,)
            graph[p + f"attn.{name}.post_bias"] = (p + f"attn.{name}.pre_bias",)
        before_rope = "post_bias"
        if qk_norm:
            graph[p + "attn.q.norm"] = (p + "attn.q.post_bias",)
            graph[p + "attn.k.norm"] = (p + "attn.k.post_bias",)
            before_rope = "norm"
        graph[p + "attn.q.rope"] = (p + f"attn.q.{before_rope}",)
        graph[p + "attn.k.rope"] = (p + f"attn.k.{before_rope}",)
        graph[p + "attn.scores"] = (p + "attn.q.rope", p + "attn.k.rope")
        graph[p + "attn.out"] = (p + "attn.q.rope", p + "attn.k.rope", p + "attn.v.post_bias")
        graph[p + "attn.o_proj"] = (p + "attn.out",)
        attn_out = p + "attn.o_proj"
        if after:
            graph[p + "attn.post_norm"] = (attn_out,)
            attn_out = p + "attn.post_norm"
        graph[p + "resid.attn"] = (resid, attn_out)
        mlp_in = p + "resid.attn"
        if before:
            graph[p + "ffn_norm"] = (p + "resid.attn",)
            mlp_in = p + "ffn_norm"
        if i in moe_layers:
            graph[p + "mlp.router"] = (mlp_in,)
            graph[p + "mlp.down"] = (mlp_in, p + "mlp.router")
        else:
            graph[p + "mlp.gate"] = (mlp_in,)
            graph[p + "mlp.up"] = (mlp_in,)
            graph[p + "mlp.swiglu"] = (p + "mlp.gate", p + "mlp.up")
            graph[p + "mlp.down"] = (p + "mlp.swiglu",)
        mlp_out = p + "mlp.down"
        if after:
            graph[p + "mlp.post_norm"] = (mlp_out,)
            mlp_out = p + "mlp.post_norm"
        graph[p + "resid.mlp"] = (p + "resid.attn", mlp_out)
        resid = p + "resid.mlp"
    graph["final_norm"] = (resid,)
    graph["logits"] = ("final_norm",)
    return graph


def points_of(cfg: ModelConfig) -> dict[str, tuple[str, ...]]:
    """``capture_graph`` of a model of ``cfg`` (its layers, its family's extra points)."""
    moe = frozenset(i for i in range(cfg.num_hidden_layers) if cfg.layer_moe(i))
    return capture_graph(cfg.num_hidden_layers, cfg.qk_norm is not None, cfg.family.norms, moe)


class CaptureError(RuntimeError):
    """A forward under capture that did not fire every declared point (or fired an unknown)."""


# --- the module tree (HF names) ------------------------------------------------------------


class RMSNorm(nn.Module):
    def __init__(self, size: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(size))


def _linear(n_in: int, n_out: int, bias: bool) -> nn.Linear:
    return nn.Linear(n_in, n_out, bias=bias, device="meta")


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        h, d = cfg.hidden_size, cfg.attention_head_dim
        self.n_heads, self.n_kv, self.head_dim = cfg.num_attention_heads, cfg.num_key_value_heads, d
        if cfg.family.fused:  # Phi-3: q, k, v rows of one projection
            self.qkv_proj = _linear(h, (self.n_heads + 2 * self.n_kv) * d, False)
        else:
            self.q_proj = _linear(h, self.n_heads * d, cfg.qkv_bias)
            self.k_proj = _linear(h, self.n_kv * d, cfg.qkv_bias)
            self.v_proj = _linear(h, self.n_kv * d, cfg.qkv_bias)
        self.o_proj = _linear(self.n_heads * d, h, cfg.o_proj_bias)
        if cfg.qk_norm == "head":  # Qwen3: RMSNorm over each head of q and of k
            self.q_norm = RMSNorm(d)
            self.k_norm = RMSNorm(d)
        elif cfg.qk_norm == "proj":  # OLMo 2: over the whole q and k projections
            self.q_norm = RMSNorm(self.n_heads * d)
            self.k_norm = RMSNorm(self.n_kv * d)


class MLP(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        h, i, b = cfg.hidden_size, cfg.intermediate_size, cfg.mlp_bias
        if cfg.family.fused:  # Phi-3: gate, then up, rows of one projection
            self.gate_up_proj = _linear(h, 2 * i, b)
        else:
            self.gate_proj = _linear(h, i, b)
            self.up_proj = _linear(h, i, b)
        self.down_proj = _linear(i, h, b)


class Expert(nn.Module):
    """One expert of a mixture: a SwiGLU MLP of ``moe_intermediate_size``, no biases."""

    def __init__(self, h: int, i: int) -> None:
        super().__init__()
        self.gate_proj = _linear(h, i, False)
        self.up_proj = _linear(h, i, False)
        self.down_proj = _linear(i, h, False)


class SparseMLP(nn.Module):
    """A mixture of experts under HF's names: the router ``gate`` (a row per expert) and
    ``experts.E``."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        experts, i = cfg.num_experts or 0, cfg.moe_intermediate_size or 0
        self.gate = _linear(cfg.hidden_size, experts, False)
        self.experts = nn.ModuleList(Expert(cfg.hidden_size, i) for _ in range(experts))


class DecoderLayer(nn.Module):
    """HF's layer. ``post_attention_layernorm`` is the norm before the MLP in a "pre" family
    and the norm of attention's output in a "post" or "sandwich" one (OLMo 2, Gemma, whose
    norm before the MLP is ``pre_feedforward_layernorm``): HF's names, every way."""

    def __init__(self, cfg: ModelConfig, layer: int = 0) -> None:
        super().__init__()
        norms = cfg.family.norms
        if norms in ("pre", "sandwich"):
            self.input_layernorm = RMSNorm(cfg.hidden_size)
        self.self_attn = Attention(cfg)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size)
        if norms == "sandwich":
            self.pre_feedforward_layernorm = RMSNorm(cfg.hidden_size)
        # a mixture's layer or a dense one: each read by the forward by its own names
        self.mlp: Any = SparseMLP(cfg) if cfg.layer_moe(layer) else MLP(cfg)
        if norms in ("post", "sandwich"):
            self.post_feedforward_layernorm = RMSNorm(cfg.hidden_size)


class Body(nn.Module):
    """HF's ``model``: embeddings, layers, final norm."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        # a given weight skips the random init, which on the meta device imports
        # torch._dynamo (a second per load, half of a cold `apr` command's start)
        shape = (cfg.vocab_size, cfg.hidden_size)
        self.embed_tokens = nn.Embedding(*shape, _weight=torch.empty(shape, device="meta"))
        self.layers = nn.ModuleList(DecoderLayer(cfg, i) for i in range(cfg.num_hidden_layers))
        self.norm = RMSNorm(cfg.hidden_size)


@dataclass
class KVCache:
    """Keys and values (after RoPE) of the positions seen so far, one pair per layer."""

    keys: list[Tensor] = field(default_factory=list)
    values: list[Tensor] = field(default_factory=list)

    @property
    def length(self) -> int:
        return self.keys[0].shape[-2] if self.keys else 0

    def extend(self, layer: int, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        if layer == len(self.keys):
            self.keys.append(k)
            self.values.append(v)
        else:
            self.keys[layer] = torch.cat((self.keys[layer], k), dim=-2)
            self.values[layer] = torch.cat((self.values[layer], v), dim=-2)
        return self.keys[layer], self.values[layer]


class Transformer(nn.Module):
    """A decoder of any family in ``aprlib.config.families`` (Qwen2, Llama, Mistral, Qwen3,
    OLMo 2, Gemma 2 and 3, Phi-3, Qwen3-MoE; sliding windows per layer); parameters are
    built on the meta device and filled by ``from_file`` or ``load_state_dict(...,
    assign=True)`` (or, streamed, never held: ``from_file(stream=True)``).

    A tied model has no ``lm_head`` parameter: the head is the embedding, by construction.
    """

    def __init__(self, config: ModelConfig, ops: Ops | None = None) -> None:
        super().__init__()
        self.config = config
        self.ops = ops or Ops()
        self.model = Body(config)
        if not config.tie_word_embeddings:
            self.lm_head = _linear(config.hidden_size, config.vocab_size, False)
        if config.hidden_act not in ACTIVATIONS:
            raise ConfigError(
                f"hidden_act {config.hidden_act!r} is not implemented by the reference forward "
                f"({', '.join(ACTIVATIONS)} are)"
            )
        rope_inv_freq(config)  # an unsupported rope scaling fails here, not mid-forward
        self._hooks: list[Hook] = []
        self.compute_dtype: torch.dtype | None = None  # None: the weights' dtype
        self.source: Model | None = None  # the open file behind zero-copy or streamed weights
        self.streamed: StreamedWeights | DerivedWeights | None = None  # None: held

    # -- loading --------------------------------------------------------------------------

    @classmethod
    def from_file(
        cls,
        path_or_model: Path | str | Model,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str = "cpu",
        ops: Ops | None = None,
        zero_copy: bool = False,
        stream: bool = False,
    ) -> Transformer:
        """Any format through ``open_model``; refuses weights that disagree with the config.

        ``zero_copy``: float32 tensors of a file opened here stay views of its memory map
        (the file is kept open as ``source``), so ``source.drop_pages()`` can hand their
        pages back while a long run streams through the layers (what bisect does).
        ``stream``: hold no weight; each layer is read from the file when the forward
        reaches it (``aprlib.forward.weights``): a model larger than memory runs.
        """
        if stream:
            return cls._streamed(path_or_model, dtype, device, ops)
        if isinstance(path_or_model, Model):
            return cls._from_model(path_or_model, dtype, device, ops, copy=True)
        model = open_model(path_or_model, mapped=zero_copy)
        try:
            net = cls._from_model(model, dtype, device, ops, copy=not zero_copy)
        except BaseException:
            model.close()
            raise
        if zero_copy:
            net.source = model
        else:
            model.close()
        return net

    @classmethod
    def _streamed(
        cls,
        path_or_model: Path | str | Model,
        dtype: torch.dtype,
        device: torch.device | str,
        ops: Ops | None,
    ) -> Transformer:
        from aprlib.forward.weights import StreamedWeights

        model = path_or_model if isinstance(path_or_model, Model) else open_model(path_or_model)
        try:
            net = cls(checked_config(model), ops)
            net.streamed = StreamedWeights(model, DecoderLayer, dtype, device)
            if model is not path_or_model:  # ours to close, with the last net sharing it
                weakref.finalize(net.streamed, model.close)
        except BaseException:
            if model is not path_or_model:
                model.close()
            raise
        net.source = model
        return net.eval()

    def with_weights(self, transform: Transform, ops: Ops | None = None) -> Transformer:
        """This net's weights, each passed through ``transform(name, tensor)`` (another
        dtype, rounding), on ``ops``: built now when held, as each layer streams when not."""
        other = Transformer(self.config, ops)
        if self.streamed is not None:
            other.streamed = self.streamed.derive(transform)
            return other.eval()
        state = {k: transform(k, v) for k, v in self.state_dict().items()}
        other.load_state_dict(state, strict=True, assign=True)
        return other.eval()

    @property
    def weights(self) -> ModuleWeights | StreamedWeights | DerivedWeights:
        """Where the forward gets its weights: the module tree, or the file a layer at a time."""
        return self.streamed if self.streamed is not None else ModuleWeights(self)

    @property
    def weights_dtype(self) -> torch.dtype:
        return self.weights.dtype

    @classmethod
    def _from_model(
        cls,
        model: Model,
        dtype: torch.dtype,
        device: torch.device | str,
        ops: Ops | None,
        copy: bool,
    ) -> Transformer:
        cfg = checked_config(model)
        net = cls(cfg, ops)
        state = {}
        for name, t in model.tensors.items():
            if name == LM_HEAD and cfg.tie_word_embeddings:
                continue
            values = t.to_float32()
            if copy or not values.flags.aligned:
                values = values.copy()
            with warnings.catch_warnings():  # a read-only map: the forward never writes it
                warnings.simplefilter("ignore", UserWarning)
                state[name] = torch.from_numpy(values).to(device=device, dtype=dtype)
        net.load_state_dict(state, strict=True, assign=True)
        return net.eval()

    # -- capture ----------------------------------------------------------------------------

    @contextlib.contextmanager
    def capture(self, hook: Hook) -> Iterator[None]:
        """Call ``hook(name, tensor)`` at every capture point, with a clone of the tensor.

        On leaving, the hook is removed, and every forward run inside must have fired each
        declared point exactly once, in order (``CaptureError`` otherwise).
        """
        fired: list[str] = []

        def record(name: str, x: Tensor) -> None:
            fired.append(name)
            hook(name, x)

        self._hooks.append(record)
        try:
            yield
        finally:
            self._hooks.remove(record)
        order = list(points_of(self.config))
        runs = len(fired) // len(order)
        if fired != order * runs or len(fired) % len(order):
            missing = sorted(set(order) - set(fired))
            raise CaptureError(
                f"capture points did not fire as declared: missing {missing[:5]}"
                f"{' ...' if len(missing) > 5 else ''}, fired {len(fired)} for {runs} forward(s) "
                f"of {len(order)} points"
            )

    def _emit(self, name: str, x: Tensor) -> None:
        if self._hooks:
            copy = x.detach().clone()  # the caller may overwrite x in place later
            for hook in list(self._hooks):
                hook(name, copy)

    # -- forward ----------------------------------------------------------------------------

    def forward(self, tokens: Tensor, cache: KVCache | None = None) -> Tensor:
        """Logits ``[B, T, vocab]`` for ``tokens`` ``[B, T]`` (after the cache's positions)."""
        points = self.points(tokens, cache, scores=bool(self._hooks))
        while True:
            try:
                name, x = next(points)
            except StopIteration as done:
                return cast(Tensor, done.value)
            self._emit(name, x)

    def points(
        self, tokens: Tensor, cache: KVCache | None = None, scores: bool = True
    ) -> Generator[tuple[str, Tensor], None, Tensor]:
        """The forward itself, pausing at every capture point to yield ``(name, tensor)``
        (the tensor itself: a consumer must not write to it) and returning the logits.

        Bisect steps three of these in lockstep on one thread; ``scores=False`` skips the
        ``attn.scores`` point, which is beside the path and computed only to be looked at.
        """
        cfg, ops = self.config, self.ops
        start = cache.length if cache is not None else 0
        total = start + tokens.shape[1]
        weights = self.weights
        table, index = weights.embedding(tokens)
        x = ops.embedding(index, table)
        if self.compute_dtype is not None:
            x = x.to(self.compute_dtype)
        if cfg.family.embed_scale:  # Gemma: the rows times sqrt(hidden), in their dtype
            x = x * torch.tensor(math.sqrt(cfg.hidden_size), dtype=x.dtype)
        yield "embed", x
        positions = torch.arange(start, total, device=tokens.device)
        tables = {False: rope_tables(cfg, positions, x.dtype)}
        if cfg.rope_local_theta is not None:  # Gemma 3's sliding layers: their own base
            local = dataclasses.replace(cfg, rope_theta=cfg.rope_local_theta, rope_scaling=None)
            tables[True] = rope_tables(local, positions, x.dtype)
        for i in range(cfg.num_hidden_layers):
            layer = cast(DecoderLayer, weights.layer(i))
            cos, sin = tables[len(tables) > 1 and cfg.layer_window(i) is not None]
            x = yield from self._layer(i, layer, weights.stamp(), x, cos, sin, cache, scores)
        x = self._norm(x, weights.final_norm())
        yield "final_norm", x
        logits = self._head(x, weights.head_blocks())
        if cfg.final_logit_softcapping is not None:  # Gemma 2: cap * tanh(logits / cap)
            cap = cfg.final_logit_softcapping
            logits = torch.tanh(logits / cap) * cap
        yield "logits", logits
        return logits

    def _norm(self, x: Tensor, weight: Tensor) -> Tensor:
        """RMSNorm with the family's offset (Gemma's 1 + w), passed only where it is one."""
        offset = self.config.family.norm_offset
        if offset:
            return self.ops.rms_norm(x, weight, self.config.rms_norm_eps, offset=offset)
        return self.ops.rms_norm(x, weight, self.config.rms_norm_eps)

    def _head(self, x: Tensor, blocks: Iterator[Tensor]) -> Tensor:
        """The output head a block of rows at a time (each block's logits into its columns):
        the same blocks held or streamed, so the two give the same bits."""
        blocks = iter(blocks)
        first = self.ops.linear(x, next(blocks))
        vocab = self.config.vocab_size
        if first.shape[-1] == vocab:
            return first
        out = first.new_empty(*x.shape[:-1], vocab)
        out[..., : first.shape[-1]] = first
        row = first.shape[-1]
        for block in blocks:  # a streamed block's buffer is reused: consumed before the next
            out[..., row : row + block.shape[0]] = self.ops.linear(x, block)
            row += block.shape[0]
        return out

    def _layer(
        self,
        i: int,
        layer: DecoderLayer,
        stamp: object,
        x: Tensor,
        cos: Tensor,
        sin: Tensor,
        cache: KVCache | None,
        scores: bool,
    ) -> Generator[tuple[str, Tensor], None, Tensor]:
        cfg, ops, p = self.config, self.ops, f"layers.{i}."
        attn, mlp = layer.self_attn, layer.mlp
        b, t, _ = x.shape
        norms = cfg.family.norms  # "pre", "post" (OLMo 2), "sandwich" (Gemma)
        before, after = norms in ("pre", "sandwich"), norms in ("post", "sandwich")

        h = x
        if before:
            h = self._norm(x, layer.input_layernorm.weight)
            yield p + "attn_norm", h
        heads = {}
        for name, y, bias in self._qkv(h, attn):
            yield p + f"attn.{name}.pre_bias", y
            if bias is not None:
                y = ops.add_bias(y, bias)
            yield p + f"attn.{name}.post_bias", y
            heads[name] = y.view(b, t, -1, attn.head_dim)  # [B, T, H, D]
        if cfg.qk_norm is not None:  # per head (Qwen3) or over the projection (OLMo 2)
            offset = {"offset": cfg.family.norm_offset} if cfg.family.norm_offset else {}
            for name, norm in (("q", attn.q_norm), ("k", attn.k_norm)):
                heads[name] = ops.qk_norm(heads[name], norm.weight, cfg.rms_norm_eps, **offset)
                yield p + f"attn.{name}.norm", heads[name].reshape(b, t, -1)
        heads = {name: x.transpose(1, 2) for name, x in heads.items()}  # [B, H, T, D]
        q = ops.rope(heads["q"], cos, sin)
        k = ops.rope(heads["k"], cos, sin)
        yield p + "attn.q.rope", q
        yield p + "attn.k.rope", k
        v = heads["v"]
        if cache is not None:
            k, v = cache.extend(i, k, v)
        if scores:
            rep = attn.n_heads // attn.n_kv
            qk = q @ k.repeat_interleave(rep, dim=1).transpose(-1, -2)
            if cfg.query_pre_attn_scalar is None:
                yield p + "attn.scores", qk / math.sqrt(attn.head_dim)
            else:
                yield p + "attn.scores", qk * cfg.attention_scale
        a = ops.attention(q, k, v, **self._attention_options(i, k.shape[-2]))
        a = a.transpose(1, 2).reshape(b, t, -1)
        yield p + "attn.out", a
        o = ops.linear(a, attn.o_proj.weight, attn.o_proj.bias)
        yield p + "attn.o_proj", o
        if after:
            o = self._norm(o, layer.post_attention_layernorm.weight)
            yield p + "attn.post_norm", o
        x = x + o
        yield p + "resid.attn", x

        h = x
        if before:
            pre_mlp = layer.pre_feedforward_layernorm if after else layer.post_attention_layernorm
            h = self._norm(x, pre_mlp.weight)
            yield p + "ffn_norm", h
        if cfg.layer_moe(i):
            router = ops.linear(h, mlp.gate.weight)
            yield p + "mlp.router", router
            down = self._mixture(h, router, mlp)
        else:
            down = yield from self._dense_mlp(p, h, mlp)
        yield p + "mlp.down", down
        if after:
            down = self._norm(down, layer.post_feedforward_layernorm.weight)
            yield p + "mlp.post_norm", down
        x = x + down
        self.weights.check_holding(i, stamp)  # a streamed layer still this one's, throughout
        yield p + "resid.mlp", x
        return x

    def _dense_mlp(
        self, p: str, h: Tensor, mlp: Any
    ) -> Generator[tuple[str, Tensor], None, Tensor]:
        """A dense MLP's points up to its down projection, which it returns."""
        cfg, ops = self.config, self.ops
        if cfg.family.fused:  # Phi-3: one product, split after (as transformers does)
            gate, up = split_fused(
                ops.linear(h, mlp.gate_up_proj.weight), (cfg.intermediate_size,) * 2
            )
        else:
            gate = ops.linear(h, mlp.gate_proj.weight, mlp.gate_proj.bias)
            up = ops.linear(h, mlp.up_proj.weight, mlp.up_proj.bias)
        yield p + "mlp.gate", gate
        yield p + "mlp.up", up
        method, approximate = ACTIVATIONS[cfg.hidden_act]
        s = ops.swiglu(gate, up) if method == "swiglu" else ops.geglu(gate, up, approximate)
        yield p + "mlp.swiglu", s
        return ops.linear(s, mlp.down_proj.weight, mlp.down_proj.bias)

    def _mixture(self, h: Tensor, router: Tensor, mlp: Any) -> Tensor:
        """The chosen experts' outputs weighted and summed, as transformers' Qwen3-MoE
        computes them: softmax over the router's logits in float32, the top k, renormalised
        when ``norm_topk_prob``, cast back; each expert runs on the tokens routed to it,
        and a token's outputs are added in the experts' order."""
        cfg, ops = self.config, self.ops
        b, t, hidden = h.shape
        x, logits = h.reshape(-1, hidden), router.reshape(b * t, -1)
        weights, chosen = route(logits, cfg.num_experts_per_tok or 0, bool(cfg.norm_topk_prob))
        out = torch.zeros_like(x)
        for e in chosen.unique().tolist():
            token, slot = torch.where(chosen == e)
            expert = mlp.experts[e]
            y = x[token]
            s = ops.swiglu(
                ops.linear(y, expert.gate_proj.weight), ops.linear(y, expert.up_proj.weight)
            )
            y = ops.linear(s, expert.down_proj.weight) * weights[token, slot, None]
            out.index_add_(0, token, y.to(out.dtype))
        return out.view(b, t, hidden)

    def _qkv(self, h: Tensor, attn: Attention) -> list[tuple[str, Tensor, Tensor | None]]:
        """(name, projection before its bias, the bias) of q, k and v: three products, or
        one fused product split after it (Phi-3, as transformers computes it)."""
        ops = self.ops
        if self.config.family.fused:
            q, kv = attn.n_heads * attn.head_dim, attn.n_kv * attn.head_dim
            parts = split_fused(ops.linear(h, attn.qkv_proj.weight), (q, kv, kv))
            return [(name, y, None) for name, y in zip(QKV_ORDER, parts, strict=True)]
        projections = (attn.q_proj, attn.k_proj, attn.v_proj)
        return [
            (name, ops.linear(h, proj.weight), proj.bias)
            for name, proj in zip(QKV_ORDER, projections, strict=True)
        ]

    def _attention_options(self, layer: int, keys: int) -> dict[str, Any]:
        """The keywords ``Ops.attention`` gets for ``layer``: only those that change its
        result, so a backend without them still runs every model that needs none."""
        cfg = self.config
        options: dict[str, Any] = {}
        window = cfg.layer_window(layer)
        if window is not None and keys > window:  # only where the window masks a key
            options["window"] = window
        scalar = cfg.query_pre_attn_scalar
        if scalar is not None and float(scalar) != float(cfg.attention_head_dim):
            options["scale"] = cfg.attention_scale
        if cfg.attn_logit_softcapping is not None:
            options["softcap"] = cfg.attn_logit_softcapping
        return options

    # -- using it ---------------------------------------------------------------------------

    def loss(self, tokens: Tensor) -> Tensor:
        """Mean next-token cross-entropy over ``tokens`` ``[B, T]`` (T >= 2)."""
        logits = self(tokens[:, :-1])
        return self.ops.cross_entropy(logits, tokens[:, 1:])

    @torch.no_grad()
    def perplexity(self, tokens: Tensor) -> float:
        return math.exp(float(self.loss(tokens)))

    @torch.no_grad()
    def generate(self, tokens: Tensor, max_new_tokens: int, eos: int | None = None) -> Tensor:
        """Greedy continuation with a KV cache: the prompt once, then one token per step."""
        cache = KVCache()
        logits = self(tokens, cache)
        out = tokens
        for _ in range(max_new_tokens):
            nxt = logits[:, -1:].argmax(-1)
            out = torch.cat((out, nxt), dim=1)
            if eos is not None and bool((nxt == eos).all()):
                break
            logits = self(nxt, cache)
        return out


def checked_config(model: Model) -> ModelConfig:
    """A file's config, refused when absent or when its weights disagree with it."""
    if model.config is None:
        raise ModelFileError(model.path, "no architecture config", field="config")
    check_weights_match(model.config, {n: t.shape for n, t in model.tensors.items()}, model.path)
    return model.config


def as_reference64(net: Transformer) -> Transformer:
    """The same weights (shared, not copied) run with float64 activations."""
    twin = Transformer(net.config, Ops())
    if net.streamed is not None:  # one layer read for both: the float64 widens per block
        twin.streamed, twin.source = net.streamed, net.source
    else:
        twin.load_state_dict(net.state_dict(), strict=True, assign=True)
    twin.compute_dtype = torch.float64
    return twin.eval()
