"""What tensors a config implies, and which config fields a set of weights contradicts.

A loader that trusts one and not the other truncates or broadcasts silently (an incident:
a trainer hard-coded one architecture's constants and "loaded" another). The check reads
each field back from the weights themselves and names every field that disagrees.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from aprlib.config.families import GATE_UP_PROJ, QKV_PROJ
from aprlib.config.modelconfig import ModelConfig
from aprlib.errors import ShapeMismatchError
from aprlib.formats.modelfile import EMBED, LM_HEAD

FINAL_NORM = "model.norm.weight"
_LAYER = re.compile(r"^model\.layers\.(\d+)\.")


#: a layer's norm weights (HF names) by where its family puts them (``Family.norms``)
LAYER_NORMS = {
    "pre": ("input_layernorm", "post_attention_layernorm"),
    "post": ("post_attention_layernorm", "post_feedforward_layernorm"),  # OLMo 2
    "sandwich": (  # Gemma: before and after attention and the MLP
        "input_layernorm",
        "post_attention_layernorm",
        "pre_feedforward_layernorm",
        "post_feedforward_layernorm",
    ),
}


def expected_shapes(cfg: ModelConfig) -> dict[str, tuple[int, ...]]:
    """Every tensor (HF name → row-major shape) that a model of ``cfg`` holds."""
    h, d = cfg.hidden_size, cfg.attention_head_dim
    q, kv, i = cfg.num_attention_heads * d, cfg.num_key_value_heads * d, cfg.intermediate_size
    out: dict[str, tuple[int, ...]] = {EMBED: (cfg.vocab_size, h), FINAL_NORM: (h,)}
    if not cfg.tie_word_embeddings:
        out[LM_HEAD] = (cfg.vocab_size, h)
    norms = LAYER_NORMS[cfg.family.norms]
    for n in range(cfg.num_hidden_layers):
        p = f"model.layers.{n}."
        for norm in norms:
            out[p + f"{norm}.weight"] = (h,)
        if cfg.family.fused:  # Phi-3: q, k, v one projection (no bias)
            out[p + QKV_PROJ + ".weight"] = (q + 2 * kv, h)
        for proj, rows in () if cfg.family.fused else (("q", q), ("k", kv), ("v", kv)):
            out[p + f"self_attn.{proj}_proj.weight"] = (rows, h)
            if cfg.qkv_bias:
                out[p + f"self_attn.{proj}_proj.bias"] = (rows,)
        if cfg.qk_norm == "head":  # Qwen3: one RMSNorm weight per head dimension
            out[p + "self_attn.q_norm.weight"] = (d,)
            out[p + "self_attn.k_norm.weight"] = (d,)
        elif cfg.qk_norm == "proj":  # OLMo 2: over the whole projection
            out[p + "self_attn.q_norm.weight"] = (q,)
            out[p + "self_attn.k_norm.weight"] = (kv,)
        out[p + "self_attn.o_proj.weight"] = (h, q)
        if cfg.o_proj_bias:
            out[p + "self_attn.o_proj.bias"] = (h,)
        if cfg.layer_moe(n):  # a router and the experts, each a SwiGLU MLP
            out.update(expert_shapes(cfg, p))
            continue
        if cfg.family.fused:  # Phi-3: gate and up one projection
            out[p + GATE_UP_PROJ + ".weight"] = (2 * i, h)
        else:
            out[p + "mlp.gate_proj.weight"] = (i, h)
            out[p + "mlp.up_proj.weight"] = (i, h)
        out[p + "mlp.down_proj.weight"] = (h, i)
        if cfg.mlp_bias:
            for proj, rows in (("gate", i), ("up", i), ("down", h)):
                out[p + f"mlp.{proj}_proj.bias"] = (rows,)
    return out


def expert_shapes(cfg: ModelConfig, p: str) -> dict[str, tuple[int, ...]]:
    """A sparse layer's MLP tensors (``p``: ``model.layers.N.``): the router's rows, one
    per expert, and each expert's gate, up and down projections."""
    h, i, experts = cfg.hidden_size, cfg.moe_intermediate_size or 0, cfg.num_experts or 0
    out: dict[str, tuple[int, ...]] = {p + "mlp.gate.weight": (experts, h)}
    for e in range(experts):
        out[p + f"mlp.experts.{e}.gate_proj.weight"] = (i, h)
        out[p + f"mlp.experts.{e}.up_proj.weight"] = (i, h)
        out[p + f"mlp.experts.{e}.down_proj.weight"] = (h, i)
    return out


@dataclass(frozen=True)
class Contradiction:
    """One config field the weights say otherwise about."""

    field: str
    config: object  # what the config says
    weights: object  # what the weights imply
    tensor: str  # the tensor that testifies ("" when it is a count of layers)
    message: str  # ``num_key_value_heads=4 but k_proj has 32 rows = 2 heads x 16``


def contradictions(cfg: ModelConfig, shapes: Mapping[str, tuple[int, ...]]) -> list[Contradiction]:
    """Every config field that the weights' own shapes contradict, one finding per field
    (at the first layer that contradicts it). The one check behind the loader's fail-fast
    (``check_weights_match``) and ``apr diff``'s CONFIG_CONTRADICTS_WEIGHTS."""
    found: list[Contradiction] = []
    said: set[str] = set()

    def add(field: str, ours: object, theirs: object, tensor: str, message: str) -> None:
        if field not in said:
            said.add(field)
            found.append(Contradiction(field, ours, theirs, tensor, message))

    embed = shapes.get(EMBED)
    if embed is not None and len(embed) == 2:
        if embed[0] != cfg.vocab_size:
            add(
                "vocab_size",
                cfg.vocab_size,
                embed[0],
                EMBED,
                f"vocab_size={cfg.vocab_size} but {EMBED} has {embed[0]} rows",
            )
        if embed[1] != cfg.hidden_size:
            add(
                "hidden_size",
                cfg.hidden_size,
                embed[1],
                EMBED,
                f"hidden_size={cfg.hidden_size} but {EMBED} has {embed[1]} columns",
            )
    # a layer is a block with its projections; a stray norm under a new index is an extra
    # tensor (the tensor-by-tensor check names it), not a layer
    layers = sorted(
        {
            int(m.group(1))
            for n in shapes
            if (m := _LAYER.match(n)) and n.endswith(("q_proj.weight", "down_proj.weight"))
        }
    )
    if layers and len(layers) != cfg.num_hidden_layers:
        add(
            "num_hidden_layers",
            cfg.num_hidden_layers,
            len(layers),
            "",
            f"num_hidden_layers={cfg.num_hidden_layers} but the file holds {len(layers)} layers",
        )
    d = cfg.attention_head_dim
    rows_of = {
        "self_attn.q_proj.weight": ("num_attention_heads", cfg.num_attention_heads * d),
        "self_attn.k_proj.weight": ("num_key_value_heads", cfg.num_key_value_heads * d),
        "self_attn.v_proj.weight": ("num_key_value_heads", cfg.num_key_value_heads * d),
        "mlp.gate_proj.weight": ("intermediate_size", cfg.intermediate_size),
        "mlp.up_proj.weight": ("intermediate_size", cfg.intermediate_size),
    }
    for layer in layers:
        p = f"model.layers.{layer}."
        fused_contradictions(cfg, shapes, p, said, add)
        expert_contradictions(cfg, shapes, p, said, add)
        for suffix, (field, rows) in rows_of.items():
            shape = shapes.get(p + suffix)
            if field in said or not shape or len(shape) != 2 or shape[0] == rows:
                continue
            proj = suffix.split(".")[1]
            if field == "intermediate_size":
                add(
                    field,
                    rows,
                    shape[0],
                    p + suffix,
                    f"{field}={rows} but {proj} has {shape[0]} rows",
                )
                continue
            heads: object = shape[0] // d if shape[0] % d == 0 else None
            held = f" = {heads} heads x {d}" if heads is not None else ""
            implied = heads if heads is not None else f"{shape[0]} rows (not a multiple of {d})"
            add(
                field,
                getattr(cfg, field),
                implied,
                p + suffix,
                f"{field}={getattr(cfg, field)} but {proj} has {shape[0]} rows{held}",
            )
        for field, ours, name in (
            ("attention_bias", cfg.qkv_bias, "self_attn.q_proj"),
            ("mlp_bias", cfg.mlp_bias, "mlp.gate_proj"),
        ):
            if p + name + ".weight" not in shapes:
                continue
            has = p + name + ".bias" in shapes
            if has != ours:
                add(
                    field,
                    ours,
                    has,
                    p + name + ".bias",
                    f"{field}={ours} but {p}{name}.weight {'has' if has else 'has no'} bias",
                )
    if cfg.family.moe and layers:
        dense_layer_contradictions(cfg, shapes, layers, add)
    if not cfg.tie_word_embeddings and LM_HEAD not in shapes and embed is not None:
        add(
            "tie_word_embeddings",
            False,
            True,
            LM_HEAD,
            f"tie_word_embeddings=false but there is no {LM_HEAD}",
        )
    if cfg.tie_word_embeddings and LM_HEAD in shapes:
        # transformers and llama.cpp both omit a tied head; a file that stores one anyway
        # holds a copy that a loader honouring the file may train or quantise on its own
        add(
            "tie_word_embeddings",
            True,
            False,
            LM_HEAD,
            f"tie_word_embeddings=true but the file also stores {LM_HEAD} (a tied head is "
            f"{EMBED}; drop the copy or untie the config)",
        )
    return found


def fused_contradictions(
    cfg: ModelConfig,
    shapes: Mapping[str, tuple[int, ...]],
    p: str,
    said: set[str],
    add: Callable[[str, object, object, str, str], None],
) -> None:
    """What a fused layer's projections say (Phi-3): ``qkv_proj``'s rows are q's heads and
    twice k's (o_proj's columns testify to q's, so the rest are k/v heads), ``gate_up_proj``'s
    twice the intermediate size. Unfused layers have neither tensor: nothing to say."""
    d, heads = cfg.attention_head_dim, cfg.num_attention_heads
    qkv = shapes.get(p + QKV_PROJ + ".weight")
    want = (heads + 2 * cfg.num_key_value_heads) * d
    if qkv and len(qkv) == 2 and qkv[0] != want and "num_key_value_heads" not in said:
        rest, step = qkv[0] - heads * d, 2 * d
        kv: object = rest // step if rest > 0 and rest % step == 0 else f"{qkv[0]} rows"
        add(
            "num_key_value_heads",
            cfg.num_key_value_heads,
            kv,
            p + QKV_PROJ + ".weight",
            f"num_key_value_heads={cfg.num_key_value_heads} but qkv_proj has {qkv[0]} rows "
            f"(q: {heads} heads x {d}, then k and v: {kv} heads each)",
        )
    gate_up = shapes.get(p + GATE_UP_PROJ + ".weight")
    want = 2 * cfg.intermediate_size
    if gate_up and len(gate_up) == 2 and gate_up[0] != want and "intermediate_size" not in said:
        add(
            "intermediate_size",
            cfg.intermediate_size,
            gate_up[0] / 2 if gate_up[0] % 2 else gate_up[0] // 2,
            p + GATE_UP_PROJ + ".weight",
            f"intermediate_size={cfg.intermediate_size} but gate_up_proj has {gate_up[0]} "
            "rows (gate, then up)",
        )


def expert_contradictions(
    cfg: ModelConfig,
    shapes: Mapping[str, tuple[int, ...]],
    p: str,
    said: set[str],
    add: Callable[[str, object, object, str, str], None],
) -> None:
    """What a sparse layer says: the router has a row per expert, an expert's gate a row
    per intermediate unit. A layer without a router says nothing here."""
    router = shapes.get(p + "mlp.gate.weight")
    if router and len(router) == 2 and router[0] != cfg.num_experts:
        add(
            "num_experts",
            cfg.num_experts,
            router[0],
            p + "mlp.gate.weight",
            f"num_experts={cfg.num_experts} but the router mlp.gate has {router[0]} rows",
        )
    gate = shapes.get(p + "mlp.experts.0.gate_proj.weight")
    i = cfg.moe_intermediate_size
    if gate and len(gate) == 2 and gate[0] != i and "moe_intermediate_size" not in said:
        add(
            "moe_intermediate_size",
            i,
            gate[0],
            p + "mlp.experts.0.gate_proj.weight",
            f"moe_intermediate_size={i} but expert 0's gate_proj has {gate[0]} rows",
        )


def dense_layer_contradictions(
    cfg: ModelConfig,
    shapes: Mapping[str, tuple[int, ...]],
    layers: list[int],
    add: Callable[[str, object, object, str, str], None],
) -> None:
    """Which layers of a mixture are dense, by the weights: a layer with a router is sparse,
    one with ``mlp.down_proj`` dense; the config's ``mlp_only_layers`` (with
    ``decoder_sparse_step``) must name exactly the dense ones."""
    said = [i for i in layers if not cfg.layer_moe(i)]
    held = [i for i in layers if f"model.layers.{i}.mlp.down_proj.weight" in shapes]
    if said != held:
        first = next(i for i in layers if (i in said) != (i in held))
        kind = "a dense MLP" if first in held else "a router and experts"
        add(
            "mlp_only_layers",
            said,
            held,
            f"model.layers.{first}.mlp",
            f"mlp_only_layers={said} but layer {first} holds {kind}",
        )


def field_mismatches(
    cfg: ModelConfig, shapes: Mapping[str, tuple[int, ...]]
) -> list[tuple[str, object, object]]:
    """``(field, config value, value the weights imply)`` for each field they contradict."""
    return [(c.field, c.config, c.weights) for c in contradictions(cfg, shapes)]


def check_weights_match(
    cfg: ModelConfig, shapes: Mapping[str, tuple[int, ...]], path: Path | str = "<weights>"
) -> None:
    """Raise ``ShapeMismatchError`` naming every field, then every tensor, that disagrees.

    A tied model that also carries ``lm_head`` is accepted only when the loader dropped it;
    here it counts as a mismatch of ``tie_word_embeddings``.
    """
    problems = field_mismatches(cfg, shapes)
    if not problems:
        want = expected_shapes(cfg)
        for name in sorted(want.keys() | shapes.keys()):
            ours, theirs = want.get(name), shapes.get(name)
            if ours != theirs:
                problems.append(
                    (
                        name,
                        "absent" if ours is None else list(ours),
                        "absent" if theirs is None else list(theirs),
                    )
                )
    if problems:
        raise ShapeMismatchError(path, problems)
