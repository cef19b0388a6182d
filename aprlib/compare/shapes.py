"""What tensors a config implies, and which config fields a set of weights contradicts.

A loader that trusts one and not the other truncates or broadcasts silently (an incident:
a trainer hard-coded one architecture's constants and "loaded" another). The check reads
each field back from the weights themselves and names every field that disagrees.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

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
        for proj, rows in (("q", q), ("k", kv), ("v", kv)):
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
        out[p + "mlp.gate_proj.weight"] = (i, h)
        out[p + "mlp.up_proj.weight"] = (i, h)
        out[p + "mlp.down_proj.weight"] = (h, i)
        if cfg.mlp_bias:
            for proj, rows in (("gate", i), ("up", i), ("down", h)):
                out[p + f"mlp.{proj}_proj.bias"] = (rows,)
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
