"""What tensors a config implies, and which config fields a set of weights contradicts.

A loader that trusts one and not the other truncates or broadcasts silently (an incident:
a trainer hard-coded one architecture's constants and "loaded" another). The check reads
each field back from the weights themselves and names every field that disagrees.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path

from aprlib.config import ModelConfig
from aprlib.errors import ShapeMismatchError
from aprlib.modelfile import EMBED, LM_HEAD

FINAL_NORM = "model.norm.weight"
_LAYER = re.compile(r"^model\.layers\.(\d+)\.")


def expected_shapes(cfg: ModelConfig) -> dict[str, tuple[int, ...]]:
    """Every tensor (HF name → row-major shape) that a model of ``cfg`` holds."""
    h, d = cfg.hidden_size, cfg.attention_head_dim
    q, kv, i = cfg.num_attention_heads * d, cfg.num_key_value_heads * d, cfg.intermediate_size
    out: dict[str, tuple[int, ...]] = {EMBED: (cfg.vocab_size, h), FINAL_NORM: (h,)}
    if not cfg.tie_word_embeddings:
        out[LM_HEAD] = (cfg.vocab_size, h)
    for n in range(cfg.num_hidden_layers):
        p = f"model.layers.{n}."
        out[p + "input_layernorm.weight"] = (h,)
        out[p + "post_attention_layernorm.weight"] = (h,)
        for proj, rows in (("q", q), ("k", kv), ("v", kv)):
            out[p + f"self_attn.{proj}_proj.weight"] = (rows, h)
            if cfg.qkv_bias:
                out[p + f"self_attn.{proj}_proj.bias"] = (rows,)
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


def field_mismatches(
    cfg: ModelConfig, shapes: Mapping[str, tuple[int, ...]]
) -> list[tuple[str, object, object]]:
    """``(field, config value, value the weights imply)`` for each field they contradict."""
    found: list[tuple[str, object, object]] = []

    def compare(name: str, ours: object, theirs: object) -> None:
        if theirs is not None and ours != theirs:
            found.append((name, ours, theirs))

    embed = shapes.get(EMBED)
    if embed is not None and len(embed) == 2:
        compare("vocab_size", cfg.vocab_size, embed[0])
        compare("hidden_size", cfg.hidden_size, embed[1])
    layers = {int(m.group(1)) for n in shapes if (m := _LAYER.match(n))}
    compare("num_hidden_layers", cfg.num_hidden_layers, len(layers))
    first = "model.layers.0."
    gate = shapes.get(first + "mlp.gate_proj.weight")
    if gate is not None:
        compare("intermediate_size", cfg.intermediate_size, gate[0])
    d = cfg.attention_head_dim
    for field, proj in (("num_attention_heads", "q"), ("num_key_value_heads", "k")):
        weight = shapes.get(first + f"self_attn.{proj}_proj.weight")
        if weight is not None:
            rows = weight[0]
            implied = rows // d if rows % d == 0 else f"{rows} rows (not a multiple of {d})"
            compare(field, getattr(cfg, field), implied)
    if layers:
        compare("attention_bias", cfg.qkv_bias, first + "self_attn.q_proj.bias" in shapes)
        compare("mlp_bias", cfg.mlp_bias, first + "mlp.gate_proj.bias" in shapes)
    compare("tie_word_embeddings", cfg.tie_word_embeddings, LM_HEAD not in shapes)
    return found


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
