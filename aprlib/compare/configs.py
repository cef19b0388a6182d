"""Two configs compared field by field as the forward pass reads them, and each config against
its own weights.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from aprlib.compare import consistency
from aprlib.compare.report import SWAPPED, TRANSPOSED, ConfigFinding, Contradiction, Pair
from aprlib.config.modelconfig import yarn_meaning
from aprlib.formats.io import Model

CONFIG_FIELDS = (
    "architecture",
    "vocab_size",
    "hidden_size",
    "intermediate_size",
    "num_hidden_layers",
    "num_attention_heads",
    "num_key_value_heads",
    "head_dim",
    "rms_norm_eps",
    "rope_theta",
    "tie_word_embeddings",
    "rope_type",
    "hidden_act",
    "attention_bias",
    "mlp_bias",
    "sliding_window",
    "layer_types",
    "rope_scaling",
    "query_pre_attn_scalar",
    "attn_logit_softcapping",
    "final_logit_softcapping",
    "rope_local_theta",
    "num_experts",
    "num_experts_per_tok",
    "moe_intermediate_size",
    "norm_topk_prob",
    "dense_layers",
)


def config_meaning(cfg: Any, name: str) -> Any:
    """A field as the forward pass sees it: defaults filled in, spellings normalised, so
    two configs that say the same thing in different words compare equal."""
    if name == "architecture":  # Mistral runs Llama's forward: its window is its own field
        return cfg.gguf_architecture
    if name == "head_dim":
        return cfg.attention_head_dim
    if name == "query_pre_attn_scalar":  # what it means: the scale (head_dim's when None)
        return cfg.attention_scale
    if name == "attention_bias":
        return cfg.qkv_bias
    value = getattr(cfg, name, None)
    if name == "hidden_act":
        return {"swish": "silu"}.get(value or "silu", value or "silu")
    if name == "mlp_bias":
        return bool(value)
    if name == "rope_scaling":
        if not value or value.get("rope_type", value.get("type")) in (None, "default"):
            return None
        scaling = {k: v for k, v in value.items() if v is not None}
        if "type" in scaling:
            scaling.setdefault("rope_type", scaling.pop("type"))
        if scaling["rope_type"] == "yarn":
            scaling = yarn_meaning(scaling, cfg.max_position_embeddings)
        return {
            k: float(v) if isinstance(v, int | float) and not isinstance(v, bool) else v
            for k, v in sorted(scaling.items())
        }
    return value


def same_meaning(va: Any, vb: Any) -> bool:
    if isinstance(va, float) and isinstance(vb, float):
        return bool(np.isclose(va, vb, rtol=1e-6))
    if isinstance(va, dict) and isinstance(vb, dict):
        return va.keys() == vb.keys() and all(same_meaning(va[k], vb[k]) for k in va)
    return bool(va == vb)


def compare_configs(a: Model, b: Model) -> list[ConfigFinding]:
    if a.config is None or b.config is None:
        return []
    out = []
    for name in CONFIG_FIELDS:
        va, vb = config_meaning(a.config, name), config_meaning(b.config, name)
        if not same_meaning(va, vb):
            out.append(ConfigFinding(name, va, vb))
    return out


def check_config_against_weights(
    a: Model, b: Model, pairs: list[Pair] | tuple[()] = ()
) -> list[Contradiction]:
    """Each side's config against its own weights. A tensor already tagged TRANSPOSED is
    explained by its layout, one tagged SWAPPED by the move: its shape contradicting the
    config is that finding again."""
    transposed = {p.name for p in pairs if p.tag in (TRANSPOSED, SWAPPED)}
    return [
        Contradiction(side, name, message)
        for side, model in (("A", a), ("B", b))
        for name, tensor, message in consistency.contradictions(model)
        if tensor not in transposed
    ]
