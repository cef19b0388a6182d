"""Does a config agree with the weights it ships with? Each side is checked on its own.

A config whose ``num_key_value_heads`` says 4 beside k_proj rows that hold 2 heads loads,
runs and produces garbage; comparing the two configs would not see it when both files carry
the same wrong config. The weights' shapes are the testimony here.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

from aprlib.io import EMBED, LM_HEAD, Model

_LAYER = re.compile(r"^model\.layers\.(\d+)\.")


def contradictions(model: Model) -> Iterator[tuple[str, str, str]]:
    """(field, tensor, message) for every config field the tensors of ``model`` contradict."""
    cfg = model.config
    if cfg is None:
        return
    shapes = {name: t.shape for name, t in model.tensors.items()}
    head_dim = cfg.attention_head_dim
    embed = shapes.get(EMBED)
    if embed is not None and len(embed) == 2:
        if embed[0] != cfg.vocab_size:
            yield (
                "vocab_size",
                EMBED,
                f"vocab_size={cfg.vocab_size} but {EMBED} has {embed[0]} rows",
            )
        if embed[1] != cfg.hidden_size:
            yield (
                "hidden_size",
                EMBED,
                f"hidden_size={cfg.hidden_size} but {EMBED} has {embed[1]} columns",
            )
    # a layer is a block with its projections; a stray norm under a new index is an EXTRA
    # tensor, not a layer
    layers = {
        int(m.group(1))
        for n in shapes
        if (m := _LAYER.match(n)) and n.endswith(("q_proj.weight", "down_proj.weight"))
    }
    if layers and len(layers) != cfg.num_hidden_layers:
        yield (
            "num_hidden_layers",
            "",
            f"num_hidden_layers={cfg.num_hidden_layers} but the file holds {len(layers)} layers",
        )
    expected = {
        "self_attn.q_proj.weight": ("num_attention_heads", cfg.num_attention_heads * head_dim),
        "self_attn.k_proj.weight": ("num_key_value_heads", cfg.num_key_value_heads * head_dim),
        "self_attn.v_proj.weight": ("num_key_value_heads", cfg.num_key_value_heads * head_dim),
        "mlp.gate_proj.weight": ("intermediate_size", cfg.intermediate_size),
        "mlp.up_proj.weight": ("intermediate_size", cfg.intermediate_size),
    }
    said: set[str] = set()  # one finding per field: the first layer that contradicts it
    bias = cfg.qkv_bias  # the field, or the family default when unset
    for layer in sorted(layers):
        for suffix, (field, rows) in expected.items():
            name = f"model.layers.{layer}.{suffix}"
            shape = shapes.get(name)
            if field in said or not shape or len(shape) != 2 or shape[0] == rows:
                continue
            said.add(field)
            proj = suffix.split(".")[1]
            if field == "intermediate_size":
                yield field, name, f"{field}={rows} but {proj} has {shape[0]} rows"
                continue
            heads = getattr(cfg, field)
            held = (
                f" = {shape[0] // head_dim} heads x {head_dim}" if shape[0] % head_dim == 0 else ""
            )
            yield field, name, f"{field}={heads} but {proj} has {shape[0]} rows{held}"
        q = f"model.layers.{layer}.self_attn.q_proj"
        has_bias = f"{q}.bias" in shapes
        if "attention_bias" not in said and f"{q}.weight" in shapes and has_bias != bias:
            said.add("attention_bias")
            yield (
                "attention_bias",
                f"{q}.bias",
                f"attention_bias={bias} but {q}.weight {'has' if has_bias else 'has no'} bias",
            )
    if not cfg.tie_word_embeddings and LM_HEAD not in shapes and EMBED in shapes:
        yield "tie_word_embeddings", LM_HEAD, f"tie_word_embeddings=false but there is no {LM_HEAD}"
    if cfg.tie_word_embeddings and LM_HEAD in shapes:
        # transformers and llama.cpp both omit a tied head; a file that stores one anyway
        # holds a copy that a loader honouring the file may train or quantise on its own
        yield (
            "tie_word_embeddings",
            LM_HEAD,
            f"tie_word_embeddings=true but the file also stores {LM_HEAD} (a tied head is "
            f"{EMBED}; drop the copy or untie the config)",
        )
