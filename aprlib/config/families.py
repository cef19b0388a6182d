"""The model families aprlib runs, as data: one ``Family`` each.

A family is what transformers calls a model type and llama.cpp an architecture. What one
family does differently from another is written here, once, and read by the config reader
(``modelconfig``), the name maps and q/k permutation (``formats.layout``), the expected
shapes (``compare.shapes``), the reference forward and its capture points
(``forward.model``) and llama.cpp's gaps list; adding a family is one entry here and the
ops it adds. In the spirit of gguf-py's ``constants.py``: names and facts, no behaviour.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

#: a fused projection's parts, in the order of its rows (Phi-3's ``qkv_proj`` and
#: ``gate_up_proj``, transformers' ``Phi3Attention`` and ``Phi3MLP``; llama.cpp's
#: ``build_qkv`` views and ``ggml_swiglu``, which gates with the first half)
QKV_ORDER = ("q", "k", "v")
GATE_UP_ORDER = ("gate", "up")
#: the fused tensors' names in a layer (HF; llama.cpp's are the family's ``gguf_names``)
QKV_PROJ = "self_attn.qkv_proj"
GATE_UP_PROJ = "mlp.gate_up_proj"


@dataclass(frozen=True)
class Family:
    """One family's facts (defaults as its transformers config class has them)."""

    name: str  # transformers' model_type and GGUF's general.architecture
    hf_class: str  # the ``architectures`` entry transformers writes
    #: q/k/v bias when a config does not say (Qwen2 builds one whatever it says)
    attention_bias: bool
    #: ``attention_bias`` also gives o_proj a bias (Llama), or never (Qwen2, Qwen3)
    o_proj_bias: bool
    #: transformers' ``max_position_embeddings`` when a config leaves it out
    max_positions: int
    #: transformers builds the q/k/v biases as ``attention_bias`` above whatever the config's
    #: ``attention_bias`` says (Qwen2 always, Mistral never)
    fixed_qkv_bias: bool = False
    #: the MLP may carry biases (``mlp_bias``: Llama); others never build them
    mlp_bias: bool = False
    #: RMSNorm on q and k after the projection, before RoPE: "head" over each head's
    #: ``head_dim`` values (Qwen3, weights [head_dim]), "proj" over the whole projection
    #: (OLMo 2, weights [heads * head_dim]); None: no q/k norm
    qk_norm: str | None = None
    #: where a layer's norms sit: "pre", before attention (``input_layernorm``) and
    #: before the MLP (``post_attention_layernorm``); "post", after each, on its output
    #: before the residual add (OLMo 2: ``post_attention_layernorm`` and
    #: ``post_feedforward_layernorm``, and nothing before); "sandwich", both (Gemma:
    #: ``input_layernorm``, ``post_attention_layernorm``, ``pre_feedforward_layernorm``,
    #: ``post_feedforward_layernorm``)
    norms: str = "pre"
    #: RMSNorm scales by (offset + w): Gemma stores w and multiplies by 1 + w; llama.cpp's
    #: converter stores w + 1 in the GGUF (the classic double-add when both happen)
    norm_offset: float = 0.0
    #: the embedding rows are multiplied by sqrt(hidden_size) (Gemma)
    embed_scale: bool = False
    #: queries are scaled by the config's ``query_pre_attn_scalar`` ** -0.5, and logits
    #: may be soft-capped by ``final_logit_softcapping`` (Gemma)
    query_scale: bool = False
    #: the config key of the MLP's activation (Gemma: ``hidden_activation``) and what it is
    #: when a config leaves it out
    act_key: str = "hidden_act"
    default_act: str = "silu"
    #: ``tie_word_embeddings`` when a config leaves it out
    tied_default: bool = False
    #: sliding layers turn RoPE with their own base (``rope_local_base_freq``, or
    #: ``rope_parameters["sliding_attention"]``) and no scaling; full layers with
    #: ``rope_theta`` and the scaling (Gemma 3)
    local_rope: bool = False
    #: the default ``sliding_window_pattern`` ("pattern" families): of every N layers the
    #: last is full, the rest windowed; ``pattern_key``: a config's
    #: ``sliding_window_pattern`` overrides it (Gemma 3; Gemma 2's class ignores the key)
    window_pattern: int = 6
    pattern_key: bool = True
    #: transformers caps attention scores by ``attn_logit_softcapping`` (Gemma 2; Gemma 3's
    #: class keeps the key and ignores it)
    attn_softcap: bool = False
    #: (config key, value) where the family's transformers config class has a default that
    #: a config.json may leave out (Gemma 2's soft-caps)
    config_defaults: tuple[tuple[str, object], ...] = ()
    #: llama.cpp scales queries by 1/sqrt(hidden / heads), not 1/sqrt(head_dim), for a model
    #: of this many layers (its "27B" rule); 0: never
    llama_cpp_wide_scale_layers: int = 0
    #: (config field, value) llama.cpp takes when a GGUF lacks the key (``llama-hparams.h``):
    #: what a GGUF from its converter means
    llama_cpp_defaults: tuple[tuple[str, object], ...] = ()
    #: llama.cpp's converter permutes q/k rows for its pairwise rotation (Llama)
    permuted_qk: bool = False
    #: other model types read as this family (same tensors, same forward)
    aliases: tuple[tuple[str, str], ...] = ()
    #: llama.cpp's graph for this family loads an o_proj bias (``attn_output.bias``) when
    #: the file has one; where it does not, it refuses such a file
    llama_cpp_o_proj_bias: bool = True
    #: llama.cpp's graph falls back to the embedding without ``output.weight`` (a tied
    #: head); where it does not, it refuses a tied model's GGUF (OLMo 2)
    llama_cpp_tied: bool = True
    #: llama.cpp's graph loads ``output.weight``; where it does not (gemma2 always uses the
    #: embedding), it refuses an untied model's GGUF
    llama_cpp_untied: bool = True
    #: llama.cpp's graph applies the sliding window (gemma3); where it does not, a windowed
    #: model's GGUF agrees with the source only up to the window
    llama_cpp_window: bool = False
    #: the activation llama.cpp's graph gates the MLP with, whatever the file says
    llama_cpp_act: str = "silu"
    #: GGUF's ``general.architecture`` where llama.cpp runs this family with another's
    #: graph (its converter writes Mistral as "llama"); None: ``name``
    gguf_name: str | None = None
    #: how a config's ``sliding_window`` applies: "every" layer when set (Mistral),
    #: "per_layer" as ``use_sliding_window``, ``max_window_layers`` and ``layer_types`` say
    #: (Qwen2, Qwen3), "pattern" on the layers ``layer_types`` or ``sliding_window_pattern``
    #: name (Gemma 3); "flag" on every layer, only with ``use_sliding_window`` (Qwen3-MoE,
    #: whose class reads neither ``layer_types`` nor ``max_window_layers``); None:
    #: transformers' class has no window and ignores the key (Llama)
    window: str | None = None
    #: ``max_window_layers`` when a config leaves it out ("per_layer" families)
    max_window_layers: int = 28
    #: (GGUF block name, HF name in a layer) where this family's llama.cpp name differs from
    #: the shared map (``formats.layout``): OLMo 2's ``post_attention_layernorm`` is
    #: llama.cpp's ``post_attention_norm``, not ``ffn_norm``
    gguf_names: tuple[tuple[str, str], ...] = ()
    #: q, k and v are one projection (``self_attn.qkv_proj``: ``QKV_ORDER``'s rows one after
    #: the other) and gate and up another (``mlp.gate_up_proj``: ``GATE_UP_ORDER``), as
    #: Phi-3 stores them; llama.cpp keeps both fused (``attn_qkv``, ``ffn_up`` of
    #: 2 x intermediate rows) and splits them in its graph
    fused: bool = False
    #: the MLP of a sparse layer is a mixture of experts (``mlp.gate`` routes each token to
    #: ``num_experts_per_tok`` of ``num_experts`` SwiGLU experts ``mlp.experts.E.*``),
    #: which llama.cpp stores stacked (``ffn_{gate,up,down}_exps``, ``ffn_gate_inp``)
    moe: bool = False
    #: (config rope type, what the family's transformers config reads it as): Phi-3's
    #: class rewrites its legacy "su" and "yarn" (short and long factors) to longrope
    rope_type_aliases: tuple[tuple[str, str], ...] = ()

    @property
    def gguf_architecture(self) -> str:
        """The ``general.architecture`` a GGUF of this family is written with."""
        return self.gguf_name or self.name

    def config_default(self, key: str, fallback: object = None) -> object:
        """``key``'s value in the family's transformers config class (``config_defaults``)."""
        return dict(self.config_defaults).get(key, fallback)

    def llama_cpp_default(self, key: str) -> object:
        """What llama.cpp takes for ``key`` when a GGUF lacks it (``llama_cpp_defaults``)."""
        return dict(self.llama_cpp_defaults).get(key)


QWEN2 = Family(
    "qwen2",
    "Qwen2ForCausalLM",
    attention_bias=True,
    o_proj_bias=False,
    max_positions=32768,
    fixed_qkv_bias=True,
    window="per_layer",
    config_defaults=(("sliding_window", 4096),),
)
LLAMA = Family(
    "llama",
    "LlamaForCausalLM",
    attention_bias=False,
    o_proj_bias=True,
    max_positions=2048,
    mlp_bias=True,
    permuted_qk=True,
)
#: Llama's tensors and forward with a sliding window on every layer; no biases whatever
#: the config says; llama.cpp's converter writes it as a "llama" GGUF (and drops the window)
MISTRAL = Family(
    "mistral",
    "MistralForCausalLM",
    attention_bias=False,
    o_proj_bias=False,
    max_positions=131072,
    fixed_qkv_bias=True,
    permuted_qk=True,
    gguf_name="llama",
    window="every",
    config_defaults=(("sliding_window", 4096),),
)
QWEN3 = Family(
    "qwen3",
    "Qwen3ForCausalLM",
    attention_bias=False,
    o_proj_bias=True,
    max_positions=32768,
    qk_norm="head",
    llama_cpp_o_proj_bias=False,
    window="per_layer",
    config_defaults=(("sliding_window", 4096),),
)

#: norms after attention and after the MLP (none before); q/k RMSNorm over the whole
#: projection; llama.cpp's olmo2 graph loads no bias of any kind
OLMO2 = Family(
    "olmo2",
    "Olmo2ForCausalLM",
    attention_bias=False,
    o_proj_bias=True,
    max_positions=2048,
    qk_norm="proj",
    norms="post",
    llama_cpp_o_proj_bias=False,
    llama_cpp_tied=False,
    gguf_names=(
        ("post_attention_norm.weight", "post_attention_layernorm.weight"),
        ("post_ffw_norm.weight", "post_feedforward_layernorm.weight"),
    ),
    config_defaults=(("rms_norm_eps", 1e-5),),
)

#: Gemma 3's text model: RMSNorm (1 + w) everywhere (q/k per head too), embeddings x
#: sqrt(hidden), GELU-tanh gated MLP, four norms a layer, five windowed layers to one full
#: with their own RoPE base, queries scaled by query_pre_attn_scalar^-1/2, tied
GEMMA3 = Family(
    "gemma3_text",
    "Gemma3ForCausalLM",
    attention_bias=False,
    o_proj_bias=True,
    max_positions=131072,
    qk_norm="head",
    llama_cpp_o_proj_bias=False,
    gguf_name="gemma3",
    window="pattern",
    norms="sandwich",
    norm_offset=1.0,
    embed_scale=True,
    query_scale=True,
    act_key="hidden_activation",
    default_act="gelu_pytorch_tanh",
    llama_cpp_window=True,
    llama_cpp_act="gelu_pytorch_tanh",
    tied_default=True,
    local_rope=True,
    gguf_names=(
        ("post_attention_norm.weight", "post_attention_layernorm.weight"),
        ("ffn_norm.weight", "pre_feedforward_layernorm.weight"),
        ("post_ffw_norm.weight", "post_feedforward_layernorm.weight"),
    ),
    config_defaults=(
        ("query_pre_attn_scalar", 256),
        ("rope_local_base_freq", 10000.0),
        ("sliding_window", 4096),
    ),
    llama_cpp_wide_scale_layers=62,
    llama_cpp_defaults=(("rope_local_theta", 10000.0),),
)
#: Gemma 2: Gemma 3 without q/k norms or a second RoPE base, every other layer windowed,
#: attention scores and logits soft-capped (50 and 30 unless the config says)
GEMMA2 = Family(
    "gemma2",
    "Gemma2ForCausalLM",
    attention_bias=False,
    o_proj_bias=True,
    max_positions=8192,
    llama_cpp_o_proj_bias=False,
    window="pattern",
    window_pattern=2,
    pattern_key=False,
    norms="sandwich",
    norm_offset=1.0,
    embed_scale=True,
    query_scale=True,
    act_key="hidden_activation",
    default_act="gelu_pytorch_tanh",
    tied_default=True,
    attn_softcap=True,
    llama_cpp_untied=False,
    llama_cpp_window=True,
    llama_cpp_act="gelu_pytorch_tanh",
    gguf_names=GEMMA3.gguf_names,
    config_defaults=(
        ("query_pre_attn_scalar", 256),
        ("final_logit_softcapping", 30.0),
        ("attn_logit_softcapping", 50.0),
        ("sliding_window", 4096),
    ),
    llama_cpp_wide_scale_layers=46,
    llama_cpp_defaults=(
        ("attn_logit_softcapping", 50.0),
        ("final_logit_softcapping", 30.0),
        ("sliding_window", 4096),
    ),
)

#: Phi-3: Llama's forward with q/k/v and gate/up each one fused projection, no biases, a
#: window on every layer when the config sets one (Phi-3-mini: 2047), which llama.cpp's
#: phi3 graph turns off ("Phi SWA is currently disabled")
PHI3 = Family(
    "phi3",
    "Phi3ForCausalLM",
    attention_bias=False,
    o_proj_bias=False,
    max_positions=4096,
    fixed_qkv_bias=True,
    window="every",
    fused=True,
    rope_type_aliases=(("su", "longrope"), ("yarn", "longrope")),
    gguf_names=(
        ("attn_qkv.weight", QKV_PROJ + ".weight"),
        ("ffn_up.weight", GATE_UP_PROJ + ".weight"),
    ),
    config_defaults=(("rms_norm_eps", 1e-5), ("pad_token_id", 32000)),
)

#: Qwen3-MoE: Qwen3's attention; each sparse layer's MLP routes a token to the top k of
#: its experts by softmax, their weights renormalised when ``norm_topk_prob`` (which
#: llama.cpp's qwen3moe graph always does); layers in ``mlp_only_layers`` (or off the
#: ``decoder_sparse_step``) keep a dense MLP, which llama.cpp's graph cannot load
QWEN3_MOE = dataclasses.replace(
    QWEN3,
    name="qwen3_moe",
    hf_class="Qwen3MoeForCausalLM",
    gguf_name="qwen3moe",
    moe=True,
    window="flag",
    gguf_names=(("ffn_gate_inp.weight", "mlp.gate.weight"),),
    config_defaults=(
        ("sliding_window", 4096),
        ("num_experts", 128),
        ("num_experts_per_tok", 8),
        ("moe_intermediate_size", 768),
        ("norm_topk_prob", False),
        ("decoder_sparse_step", 1),
    ),
)

FAMILIES: dict[str, Family] = {
    f.name: f for f in (QWEN2, LLAMA, MISTRAL, QWEN3, OLMO2, GEMMA2, GEMMA3, PHI3, QWEN3_MOE)
}
#: GGUF ``general.architecture`` names this library reads, in the families' order
GGUF_ARCHITECTURES = tuple(dict.fromkeys(f.gguf_architecture for f in FAMILIES.values()))


def family_of_gguf(arch: str, windowed: bool) -> str:
    """The family of a GGUF's ``general.architecture`` (one of ``GGUF_ARCHITECTURES``).

    Where families share an architecture, the window tells them apart: a "llama" GGUF with
    ``llama.attention.sliding_window`` is a Mistral (transformers' Llama has no window)."""
    sharing = [f for f in FAMILIES.values() if f.gguf_architecture == arch]
    if len(sharing) == 1:
        return sharing[0].name
    for f in sharing:
        if f.name != arch and windowed and f.window is not None:
            return f.name
    return arch


def family(name: str) -> Family:
    """The family of an architecture name (KeyError names the supported ones)."""
    try:
        return FAMILIES[name]
    except KeyError:
        raise KeyError(f"{name!r} is not a supported family ({', '.join(FAMILIES)})") from None
