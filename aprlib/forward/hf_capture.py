"""transformers as a bisect side: our capture points, read off an HF model's module tree.

A user's engine is often a transformers model with something of their own inside it (a
patched attention, a quantisation library's Linear). Bisecting it needs the same named
activations our reference ``Transformer`` announces (``capture_graph``), taken from *their*
forward, not recomputed by ours. So every point is read at a module boundary with forward
hooks: the module's own output (or, for a residual sum and ``attn.out``, the next module's
own input) is what the model computed. Hooks see whatever module sits at that path, a
patched one included, and are removed when the forward ends, also when it raises.

Three kinds of point (``HFCapture.derived`` says which and how, ``absent`` lists the rest):

* observed: a module's output or input, exactly as the forward passed it on;
* derived: ``attn.{q,k,v}.pre_bias`` (HF's Linear adds its bias inside one call, so the
  product before the bias never exists: it is ``F.linear(input, weight)`` of the Linear's
  own input and weight) and ``attn.scores`` (never formed by sdpa/flash: q·kᵀ × the
  ``scaling`` the model passed to its attention function, from the observed q and k);
* ``attn.{q,k}.rope``: transformers applies RoPE as a plain function inside the attention
  module's forward, not a module, so no hook sees it. They are observed where they leave
  that forward: the query and key handed to the attention function, caught by wrapping the
  model's configured implementation (sdpa, eager, ...) in transformers'
  ``AttentionInterface`` for the duration of the forward, then delegating to it unchanged.

``reference_from_hf`` builds our reference ``Transformer`` on the HF model's own config and
weights, so a patched module can be bisected against the reference on the same weights;
``hf_model_from`` goes the other way (transformers' own model on a file's weights as our
reader decodes them), for ``--backend-b transformers``.
"""

from __future__ import annotations

import contextlib
import math
import sys
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from aprlib.config.families import GATE_UP_ORDER, QKV_ORDER
from aprlib.config.modelconfig import from_hf, hf_cannot_say, to_hf
from aprlib.forward.model import Transformer, capture_graph, split_fused

#: the attention-function override is process-wide (transformers keeps one registry), so
#: one capture runs at a time; other models' calls pass through the override untouched
_CAPTURE_LOCK = threading.Lock()

#: per layer: module path under ``model.model.layers.N`` -> what the spec needs from it
#: (and its two norms: ``PRE_NORMS`` or, OLMo 2, ``POST_NORMS``)
LAYER_MODULES = ("self_attn", "self_attn.o_proj", "mlp")
#: q, k and v by whether the family fuses them (``Family.fused``: Phi-3's ``qkv_proj``,
#: split after its product as the model does)
PROJECTIONS = {
    False: ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"),
    True: ("self_attn.qkv_proj",),
}
#: a layer's MLP modules by its kind: dense, fused (Phi-3's ``gate_up_proj``), or a
#: mixture of experts (a router ``gate`` and ``experts``: Qwen3-MoE)
MLP_MODULES = {
    "dense": ("mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"),
    "fused": ("mlp.gate_up_proj", "mlp.down_proj"),
    "experts": ("mlp.gate", "mlp.experts"),
}
#: a layer's norm modules by where its family puts them (``Family.norms``)
NORMS = {
    "pre": ("input_layernorm", "post_attention_layernorm"),
    "post": ("post_attention_layernorm", "post_feedforward_layernorm"),  # OLMo 2
    "sandwich": (  # Gemma
        "input_layernorm",
        "post_attention_layernorm",
        "pre_feedforward_layernorm",
        "post_feedforward_layernorm",
    ),
}
#: model types whose q/k norm runs on ``[B, H, T, D]`` (after the heads are moved first:
#: transformers' Gemma 3), not on ``[B, T, H, D]`` (Qwen3): capture moves them back
QK_NORM_HEADS_FIRST = frozenset({"gemma3_text"})
#: points read from the attention function (absent when the model never calls one)
ATTENTION_FUNCTION_POINTS = ("attn.q.rope", "attn.k.rope", "attn.scores")


class HFLayoutError(ValueError):
    """A transformers model whose module tree is not the Llama/Qwen2 layout capture reads
    (``model.model.embed_tokens``, ``.layers[N].self_attn.q_proj``, ..., ``lm_head``)."""


class HFCaptureError(RuntimeError):
    """A forward under capture that cannot be read as one value per point (a module that
    ran twice in one forward, or a batch other than one sequence)."""


@dataclass
class HFCapture:
    """Capture points of one transformers forward, in the canonical layouts (docs: dump).

    ``points``: name -> tensor on the CPU, batch dropped, tokens first, in the model's own
    dtype, in ``capture_graph`` order. ``derived``: point -> how it was computed rather than
    observed. ``absent``: capture points the forward did not give, with ``why`` for each.
    """

    tokens: list[int]
    points: dict[str, Tensor]
    derived: dict[str, str]
    absent: list[str]
    why: dict[str, str] = field(default_factory=dict)
    engine: str = "transformers"
    engine_version: str = ""


def canonical(name: str, x: Tensor, heads: int, kv_heads: int) -> Tensor:
    """The canonical layout of point ``name`` from its forward layout (batch of one first).

    Our reference ``Transformer`` and transformers agree on the forward layouts:
    projections and ``attn.out`` are ``[B, T, heads*head_dim]``, rope'd q/k
    ``[B, H, T, D]``, scores ``[B, H, T, T]``, the rest ``[B, T, dim]``. The canonical
    layouts are tokens first: ``[T, H, D]`` for per-head points, ``[H, T, T]`` for scores.
    """
    if x.shape[0] != 1:
        raise HFCaptureError(f"{name}: a batch of {x.shape[0]} sequences; capture reads one")
    x = x[0]
    if name.endswith(("attn.q.rope", "attn.k.rope")):
        return x.transpose(0, 1).contiguous()  # [H, T, D] -> [T, H, D]
    if name.endswith(("attn.out", "_bias", "attn.q.norm", "attn.k.norm")):
        n = heads if name.endswith("attn.out") or ".attn.q." in name else kv_heads
        return x.reshape(x.shape[0], n, -1)
    return x


def reference_points(
    net: Transformer, tokens: Sequence[int], scores: bool = True
) -> dict[str, Tensor]:
    """Our reference forward's capture points on ``tokens``, canonical as ``capture_hf``'s.

    The other half of a transformers bisect: the same names and layouts from the spec's
    forward, so two dicts compare point by point.
    """
    cfg = net.config
    out: dict[str, Tensor] = {}

    def record(name: str, x: Tensor) -> None:
        out[name] = canonical(name, x, cfg.num_attention_heads, cfg.num_key_value_heads).cpu()

    device = next(net.parameters()).device
    ids = torch.tensor([list(tokens)], dtype=torch.long, device=device)
    with torch.no_grad(), net.capture(record):
        net(ids)
    if not scores:
        out = {k: v for k, v in out.items() if not k.endswith("attn.scores")}
    return out


# --- the module tree -----------------------------------------------------------------------


@dataclass
class Layout:
    """The modules capture hooks, found (and checked present) before anything runs."""

    embed: nn.Module
    layers: list[Any]  # each a decoder layer with the LAYER_MODULES paths (checked)
    norm: nn.Module
    lm_head: nn.Module
    heads: int
    kv_heads: int
    qk_norm: bool = False  # every attention has q_norm and k_norm modules (Qwen3)
    norms: str = "pre"  # where the norms sit: "pre", "post" (OLMo 2), "sandwich" (Gemma)
    qk_heads_first: bool = False  # the q/k norms' output is [B, H, T, D] (Gemma 3)
    fused: bool = False  # q/k/v and gate/up are one projection each (Phi-3)
    moe_layers: frozenset[int] = frozenset()  # layers whose MLP is a mixture of experts


def find_layout(model: nn.Module) -> Layout:
    """The Llama/Qwen2 module tree of ``model``; ``HFLayoutError`` naming every path missing.

    A path is checked, not its class: a user's own module at ``layers.1.self_attn.k_proj``
    is exactly what capture is for.
    """
    missing: list[str] = []

    def get(root: Any, path: str, shown: str) -> Any:
        node = root
        for part in path.split("."):
            node = getattr(node, part, None)
            if node is None:
                missing.append(shown)
                return None
        if not isinstance(node, nn.Module):  # hooks go on modules only
            missing.append(f"{shown} (a {type(node).__name__}, not a module)")
            return None
        return node

    body = get(model, "model", "model")
    embed: Any = None
    layers: Any = None
    norm: Any = None
    if body is not None:  # without it, "model" alone is named
        embed = get(body, "embed_tokens", "model.embed_tokens")
        layers = get(body, "layers", "model.layers")
        norm = get(body, "norm", "model.norm")
    lm_head = get(model, "lm_head", "lm_head")
    if layers is not None and not isinstance(layers, (nn.ModuleList, list, tuple)):
        missing.append("model.layers (a ModuleList)")
        layers = None
    norms = _norms_of(layers or [])
    fused = bool(layers) and isinstance(getattr(layers[0].self_attn, "qkv_proj", None), nn.Module)
    moe = frozenset(
        i
        for i, layer in enumerate(layers or ())
        if isinstance(getattr(getattr(layer, "mlp", None), "experts", None), nn.Module)
    )
    for i, layer in enumerate(layers or ()):
        mlp = MLP_MODULES["experts" if i in moe else "fused" if fused else "dense"]
        for path in (*LAYER_MODULES, *PROJECTIONS[fused], *mlp, *NORMS[norms]):
            get(layer, path, f"model.layers.{i}.{path}")
    config = getattr(model, "config", None)
    heads: Any = getattr(config, "num_attention_heads", None)
    if heads is None:
        missing.append("config.num_attention_heads")
    if missing:
        raise HFLayoutError(
            f"{type(model).__name__} is not a layout capture knows (a Llama/Qwen2/Mistral "
            f"ForCausalLM): missing {', '.join(missing[:8])}"
            f"{f' and {len(missing) - 8} more' if len(missing) > 8 else ''}"
        )
    kv_heads = getattr(config, "num_key_value_heads", None) or heads
    qk_norm = bool(layers) and all(
        isinstance(getattr(layer.self_attn, n, None), nn.Module)
        for layer in layers or ()
        for n in ("q_norm", "k_norm")
    )
    heads_first = getattr(config, "model_type", None) in QK_NORM_HEADS_FIRST
    return Layout(
        embed,
        list(layers or ()),
        norm,
        lm_head,
        int(heads),
        int(kv_heads),
        qk_norm,
        norms,
        heads_first,
        fused,
        moe,
    )


def _norms_of(layers: Any) -> str:
    """Where the layers' norms sit, from the modules the first layer has (each layer is then
    checked to have that family's norms)."""
    if not layers:
        return "pre"
    first = layers[0]

    def has(name: str) -> bool:
        return isinstance(getattr(first, name, None), nn.Module)

    if has("pre_feedforward_layernorm") and has("post_feedforward_layernorm"):
        return "sandwich"
    if has("post_feedforward_layernorm") and not has("input_layernorm"):
        return "post"
    return "pre"


def first_tensor(args: tuple[Any, ...], kwargs: dict[str, Any]) -> Tensor:
    """A module's main input: its first positional tensor, else its first tensor keyword
    (transformers calls some modules with ``hidden_states=...``)."""
    for value in (*args, *kwargs.values()):
        if isinstance(value, Tensor):
            return value
    raise HFCaptureError("a hooked module was called without a tensor input")


def main_output(output: Any) -> Tensor:
    """A module's main output: the tensor itself or the first of a tuple (decoder layers
    return a tuple in transformers 4 and a tensor in transformers 5)."""
    if isinstance(output, (tuple, list)):
        output = output[0]
    if not isinstance(output, Tensor):
        raise HFCaptureError(f"a hooked module returned {type(output).__name__}, not a tensor")
    return output


def pre_bias(module: nn.Module, x: Tensor) -> Tensor | None:
    """``x·Wᵀ`` with the Linear's own weight, or None when it has no float weight of the
    right shape (a quantised Linear's packed weight cannot be multiplied as it is)."""
    weight = getattr(module, "weight", None)
    if (
        not isinstance(weight, Tensor)
        or not weight.is_floating_point()
        or weight.ndim != 2
        or weight.shape[1] != x.shape[-1]
    ):
        return None
    return F.linear(x, weight.to(x.dtype))


# --- the attention function --------------------------------------------------------------


def attention_registry(attention: nn.Module) -> Any:
    """The ``AttentionInterface`` the attention module's forward looks its function up in:
    the one its modeling file imported, else transformers' global one (None without one:
    transformers before 4.48)."""
    for cls in type(attention).__mro__:
        registry = getattr(sys.modules.get(cls.__module__), "ALL_ATTENTION_FUNCTIONS", None)
        if registry is not None:
            return registry
    try:
        from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
    except ImportError:
        return None
    return ALL_ATTENTION_FUNCTIONS


def eager_function(attention: nn.Module) -> Callable[..., Any] | None:
    """The ``eager_attention_forward`` of the attention module's modeling file: what
    ``get_interface("eager", default)`` returns when nothing is registered for eager."""
    for cls in type(attention).__mro__:
        fn = getattr(sys.modules.get(cls.__module__), "eager_attention_forward", None)
        if fn is not None:
            return fn
    return None


@contextlib.contextmanager
def attention_override(
    registry: Any, implementation: str, delegate: Callable[..., Any], record: Callable[..., None]
) -> Iterator[None]:
    """Route ``implementation`` in ``registry`` through ``record`` then ``delegate``.

    transformers' ``AttentionInterface`` is a mapping whose instance entries override its
    class-wide ones (``registry[key] = fn``; ``del registry[key]`` drops the override), so
    the model's configured implementation is wrapped for this forward without changing its
    config (and so its mask, which transformers builds per implementation). A previous
    instance-level entry is put back afterwards.
    """
    local = getattr(registry, "_local_mapping", {})  # the instance-level entries
    had_local = implementation in local
    previous = local.get(implementation)

    def wrapper(
        module: nn.Module, query: Tensor, key: Tensor, value: Tensor, *args: Any, **kwargs: Any
    ) -> Any:
        record(module, query, key, kwargs.get("scaling"))
        return delegate(module, query, key, value, *args, **kwargs)

    registry[implementation] = wrapper
    try:
        yield
    finally:
        if had_local:
            registry[implementation] = previous
        else:
            del registry[implementation]


# --- capture -------------------------------------------------------------------------------


def capture_hf(model: nn.Module, tokens: Sequence[int], scores: bool = True) -> HFCapture:
    """Run ``model`` (a transformers Llama/Qwen2/Mistral ``ForCausalLM``) on ``tokens`` once
    and read every capture point off its module tree.

    ``scores=False`` skips ``attn.scores`` (``[H, T, T]`` per layer, derived only to be
    looked at). Hooks and the attention-function override are removed before this returns
    or raises. ``HFLayoutError`` names the module paths a model lacks.
    """
    layout = find_layout(model)
    graph = list(capture_graph(len(layout.layers), layout.qk_norm, layout.norms, layout.moe_layers))
    raw: dict[str, Tensor] = {}
    derived: dict[str, str] = {}
    why: dict[str, str] = {}

    def keep(name: str, x: Tensor) -> None:
        if name in raw:
            raise HFCaptureError(
                f"{name} fired twice in one forward: its module ran more than once, so which "
                "call is the point cannot be told"
            )
        raw[name] = x.detach().to("cpu", copy=True)

    handles: list[Any] = []

    def on_output(module: nn.Module, name: str, heads_first: bool = False) -> None:
        def hook(_m: nn.Module, _args: Any, output: Any) -> None:
            x = main_output(output)
            keep(name, x.transpose(1, 2) if heads_first else x)  # [B, H, T, D] → [B, T, H, D]

        handles.append(module.register_forward_hook(hook))

    def capped(cap: float) -> Any:
        def hook(_m: nn.Module, _args: Any, output: Any) -> None:
            keep("logits", torch.tanh(main_output(output) / cap) * cap)

        return hook

    def on_input(module: nn.Module, name: str) -> None:
        def hook(_m: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
            keep(name, first_tensor(args, kwargs))

        handles.append(module.register_forward_pre_hook(hook, with_kwargs=True))

    def on_projection(module: nn.Module, p: str, which: str) -> None:
        owner = f"{p}{which}_proj"

        def hook(m: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], output: Any) -> None:
            x = first_tensor(args, kwargs)
            with torch.no_grad():
                product = pre_bias(m, x)
            if product is None:
                why[f"{p}attn.{which}.pre_bias"] = (
                    f"{owner} has no float weight [out, in] to multiply its input by"
                )
            else:
                keep(f"{p}attn.{which}.pre_bias", product)
            keep(f"{p}attn.{which}.post_bias", main_output(output))

        handles.append(module.register_forward_hook(hook, with_kwargs=True))

    def on_fused_qkv(module: nn.Module, p: str) -> None:
        """q, k and v cut from one product (Phi-3's ``qkv_proj``), in ``QKV_ORDER``."""

        def hook(m: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], output: Any) -> None:
            y = main_output(output)
            d = y.shape[-1] // (layout.heads + 2 * layout.kv_heads)
            sizes = (layout.heads * d, layout.kv_heads * d, layout.kv_heads * d)
            with torch.no_grad():
                product = pre_bias(m, first_tensor(args, kwargs))
            befores = split_fused(product, sizes) if product is not None else (None,) * 3
            for which, after, before in zip(QKV_ORDER, split_fused(y, sizes), befores, strict=True):
                if before is None:
                    why[f"{p}attn.{which}.pre_bias"] = (
                        "qkv_proj has no float weight [out, in] to multiply its input by"
                    )
                else:
                    keep(f"{p}attn.{which}.pre_bias", before)
                keep(f"{p}attn.{which}.post_bias", after)

        handles.append(module.register_forward_hook(hook, with_kwargs=True))

    def on_fused_gate_up(module: nn.Module, p: str) -> None:
        """gate and up, the halves of one product (Phi-3's ``gate_up_proj``)."""

        def hook(_m: nn.Module, _args: Any, output: Any) -> None:
            y = main_output(output)
            half = y.shape[-1] // 2
            for which, part in zip(GATE_UP_ORDER, split_fused(y, (half, half)), strict=True):
                keep(f"{p}mlp.{which}", part)

        handles.append(module.register_forward_hook(hook))

    def on_router(module: nn.Module, p: str) -> None:
        """The router's logits, one per expert: transformers' router flattens the batch to
        [B*T, experts] and returns (logits, weights, experts chosen)."""

        def hook(_m: nn.Module, _args: Any, output: Any) -> None:
            logits = main_output(output)
            keep(p + "mlp.router", logits.reshape(1, -1, logits.shape[-1]))

        handles.append(module.register_forward_hook(hook))

    layer_of: dict[int, int] = {}

    def register() -> None:
        """Every hook of the module tree (the layer map first: the attention function's
        record reads it)."""
        for i, layer in enumerate(layout.layers):
            p = f"layers.{i}."
            attn, mlp = layer.self_attn, layer.mlp
            layer_of[id(attn)] = i
            if layout.norms != "post":
                on_output(layer.input_layernorm, p + "attn_norm")
            if layout.fused:
                on_fused_qkv(attn.qkv_proj, p)
            for which in "qkv":
                proj = "qkv_proj" if layout.fused else f"{which}_proj"
                if not layout.fused:
                    on_projection(getattr(attn, proj), p, which)
                derived[f"{p}attn.{which}.pre_bias"] = (
                    f"F.linear({proj}'s input, {proj}.weight): HF adds the bias inside "
                    "the Linear, so the product before it is recomputed from the module's own "
                    "input and weight"
                    + (f" ({which}'s rows of the product)" if layout.fused else "")
                )
            if layout.qk_norm:
                on_output(attn.q_norm, p + "attn.q.norm", layout.qk_heads_first)
                on_output(attn.k_norm, p + "attn.k.norm", layout.qk_heads_first)
            on_input(attn.o_proj, p + "attn.out")
            on_output(attn.o_proj, p + "attn.o_proj")
            if layout.norms == "pre":
                on_input(layer.post_attention_layernorm, p + "resid.attn")
                on_output(layer.post_attention_layernorm, p + "ffn_norm")
            else:  # OLMo 2, Gemma: o_proj's output normed, then added
                on_output(layer.post_attention_layernorm, p + "attn.post_norm")
            if layout.norms == "post":
                on_input(mlp, p + "resid.attn")
            if layout.norms == "sandwich":
                on_input(layer.pre_feedforward_layernorm, p + "resid.attn")
                on_output(layer.pre_feedforward_layernorm, p + "ffn_norm")
            if i in layout.moe_layers:  # the router's logits, the experts' weighted sum
                on_router(mlp.gate, p)
                on_output(mlp, p + "mlp.down")
            else:
                if layout.fused:
                    on_fused_gate_up(mlp.gate_up_proj, p)
                else:
                    on_output(mlp.gate_proj, p + "mlp.gate")
                    on_output(mlp.up_proj, p + "mlp.up")
                on_input(mlp.down_proj, p + "mlp.swiglu")
                on_output(mlp.down_proj, p + "mlp.down")
            if layout.norms != "pre":
                on_output(layer.post_feedforward_layernorm, p + "mlp.post_norm")
            on_output(layer, p + "resid.mlp")
            if scores:
                derived[p + "attn.scores"] = (
                    "query·keyᵀ × the scaling the model passed its attention function (keys "
                    "repeated per GQA group), from the observed attn.q.rope and attn.k.rope"
                )
        on_output(layout.embed, "embed")
        on_output(layout.norm, "final_norm")
        cap = getattr(getattr(model, "config", None), "final_logit_softcapping", None)
        if cap:  # Gemma 2: ForCausalLM caps the head's output after the module returns
            handles.append(layout.lm_head.register_forward_hook(capped(float(cap))))
            derived["logits"] = (
                f"lm_head's output through {cap:g}·tanh(x / {cap:g}), as the model's forward "
                "applies it after the module"
            )
        else:
            on_output(layout.lm_head, "logits")

    def record_attention(module: nn.Module, query: Tensor, key: Tensor, scaling: Any) -> None:
        i = layer_of.get(id(module))
        if i is None:
            return  # another model's attention, or a module outside the layer list
        p = f"layers.{i}."
        keep(p + "attn.q.rope", query)
        keep(p + "attn.k.rope", key)
        if scores:
            scale = float(scaling) if scaling is not None else 1 / math.sqrt(query.shape[-1])
            keys = key.repeat_interleave(query.shape[1] // key.shape[1], dim=1)
            with torch.no_grad():
                keep(p + "attn.scores", (query @ keys.transpose(-1, -2)) * scale)

    config = getattr(model, "config", None)
    implementation = getattr(config, "_attn_implementation", None) or "eager"
    override: contextlib.AbstractContextManager[None] = contextlib.nullcontext()
    first_attn = layout.layers[0].self_attn if layout.layers else None
    registry = attention_registry(first_attn) if first_attn is not None else None
    attention_note = ""
    if registry is None:
        attention_note = "this transformers has no AttentionInterface to observe q/k through"
    else:
        delegate = registry.get(implementation)
        if delegate is None and implementation == "eager" and first_attn is not None:
            delegate = eager_function(first_attn)
        if delegate is None:
            attention_note = f"no attention function found for {implementation!r} to wrap"
        else:
            override = attention_override(registry, implementation, delegate, record_attention)

    ids = torch.tensor([list(tokens)], dtype=torch.long, device=parameter_device(model))
    with _CAPTURE_LOCK:
        try:  # hooks go on inside the try: one that fails to go on takes the rest off
            register()
            with override, torch.no_grad():
                model(input_ids=ids, use_cache=False)
        finally:
            for handle in handles:
                handle.remove()

    wanted = [n for n in graph if scores or not n.endswith("attn.scores")]
    points = {n: canonical(n, raw[n], layout.heads, layout.kv_heads) for n in wanted if n in raw}
    absent = [n for n in wanted if n not in raw]
    for name in absent:
        if name.endswith(ATTENTION_FUNCTION_POINTS):
            why.setdefault(
                name,
                attention_note
                or "the attention module never called the configured attention function",
            )
        why.setdefault(name, "its module did not run in this forward")
    derived = {n: text for n, text in derived.items() if n in points}
    return HFCapture(
        tokens=list(tokens),
        points=points,
        derived=derived,
        absent=absent,
        why={n: why[n] for n in absent},
        engine=f"transformers {type(model).__name__} (attention: {implementation})",
        engine_version=transformers_version(),
    )


def parameter_device(model: nn.Module) -> torch.device:
    """Where the model's weights are (the input ids go there); the CPU for a weightless one."""
    for p in model.parameters():
        return p.device
    return torch.device("cpu")


def transformers_version() -> str:
    try:
        import transformers
    except ImportError:
        return ""
    return str(transformers.__version__)


# --- the reference on the same weights ---------------------------------------------------


def reference_from_hf(
    model: nn.Module, dtype: torch.dtype = torch.float32, device: torch.device | str | None = None
) -> Transformer:
    """Our reference ``Transformer`` on ``model``'s own config and weights (copied).

    The weights are copied, so a module patched (or a weight edited) in ``model`` after
    this call leaves the reference as it was. The config goes through ``from_hf`` like a
    ``config.json``, so what our forward cannot run (an unsupported family, a rope scaling
    it lacks) is refused here. Keys beyond the reference's (an adapter's own parameters)
    are not the reference's business and are left out; a key it needs and the model lacks
    is an ``HFLayoutError``.
    """
    config = getattr(model, "config", None)
    if config is None or not hasattr(config, "to_dict"):
        raise HFLayoutError(f"{type(model).__name__} has no transformers config (.config)")
    cfg = from_hf(config.to_dict())
    net = Transformer(cfg)
    expected = list(net.state_dict())
    state = unstacked_experts(model.state_dict())
    missing = [k for k in expected if k not in state]
    if missing:
        raise HFLayoutError(
            f"{type(model).__name__} lacks weights the reference needs: {', '.join(missing[:8])}"
        )
    target = device if device is not None else parameter_device(model)
    weights = {k: state[k].detach().to(device=target, dtype=dtype, copy=True) for k in expected}
    net.load_state_dict(weights, strict=True, assign=True)
    return net.eval()


#: transformers 5 holds a mixture's experts stacked in memory (``Qwen3MoeExperts``): gate
#: and up of every expert in one [experts, 2 x width, hidden] tensor (gate first, as its
#: forward's ``chunk(2)`` reads it), down in one [experts, hidden, width]; files hold them
#: one tensor per expert (``mlp.experts.E.{gate,up,down}_proj.weight``), as it saves them
STACKED = ("mlp.experts.gate_up_proj", "mlp.experts.down_proj")


def eager_experts(model: Any) -> Any:
    """A transformers mixture computing its experts with the modeling file's own loop
    (``eager``), not its default grouped matmul, which raises "strides should be multiple
    of 16 bytes" at the expert widths of small models; a model without experts as it is."""
    if hasattr(getattr(model, "config", None), "_experts_implementation"):
        model.config._experts_implementation = "eager"
    return model


def unstacked_experts(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """``state`` with transformers' in-memory expert stacks as the per-expert tensors a
    file holds (views); every other tensor as it is."""
    out: dict[str, Tensor] = {}
    for name, value in state.items():
        prefix = name.removesuffix(STACKED[0]).removesuffix(STACKED[1])
        if name.endswith(STACKED[0]):
            for e, (gate, up) in enumerate(v.chunk(2, dim=0) for v in value):
                out[f"{prefix}mlp.experts.{e}.gate_proj.weight"] = gate
                out[f"{prefix}mlp.experts.{e}.up_proj.weight"] = up
        elif name.endswith(STACKED[1]):
            for e, down in enumerate(value):
                out[f"{prefix}mlp.experts.{e}.down_proj.weight"] = down
        else:
            out[name] = value
    return out


def stacked_experts(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """The inverse of ``unstacked_experts``: per-expert tensors stacked as transformers 5
    holds them in memory."""
    out: dict[str, Tensor] = {}
    groups: dict[str, dict[int, dict[str, Tensor]]] = {}
    for name, value in state.items():
        head, sep, tail = name.partition("mlp.experts.")
        index, _, part = tail.partition(".")
        if not sep or not index.isdigit():
            out[name] = value
            continue
        groups.setdefault(head, {}).setdefault(int(index), {})[part] = value
    for head, experts in groups.items():
        ordered = [experts[e] for e in sorted(experts)]
        out[head + STACKED[0]] = torch.stack(
            [torch.cat([x["gate_proj.weight"], x["up_proj.weight"]]) for x in ordered]
        )
        out[head + STACKED[1]] = torch.stack([x["down_proj.weight"] for x in ordered])
    return out


def hf_model_from(net: Transformer) -> nn.Module:
    """transformers' own ``ForCausalLM`` on our ``Transformer``'s config and weights (copied,
    in their dtype and on their device): transformers as the other side of a bisect of a
    model file, its modules run on exactly the weights our reference reads.

    A config that a transformers config cannot state (a Qwen2 without q/k/v bias) is a
    ``ValueError`` here rather than a model with random biases; so is a weight transformers'
    model has no place for, or one it has and we do not give.
    """
    from transformers import AutoConfig, AutoModelForCausalLM

    cfg = net.config
    why = hf_cannot_say(cfg)
    if why is not None:
        raise HFLayoutError(f"transformers cannot build this {cfg.architecture}: {why}")
    hf = to_hf(cfg)
    weight = net.model.embed_tokens.weight
    config = AutoConfig.for_model(hf.pop("model_type"), **hf)
    model = AutoModelForCausalLM.from_config(config, dtype=weight.dtype).eval()
    eager_experts(model)
    state = {k: v.detach().clone() for k, v in net.state_dict().items()}
    if any(k.endswith(STACKED[0]) for k in model.state_dict()):
        state = stacked_experts(state)
    result = model.load_state_dict(state, strict=False)
    missing = [
        k for k in result.missing_keys if not (cfg.tie_word_embeddings and k == "lm_head.weight")
    ]
    if missing or result.unexpected_keys:
        raise HFLayoutError(
            f"transformers' {type(model).__name__} and our {cfg.architecture} disagree on "
            f"weights: missing {missing[:5]}, unexpected {result.unexpected_keys[:5]}"
        )
    if cfg.tie_word_embeddings:
        model.tie_weights()
    return model.to(weight.device)
