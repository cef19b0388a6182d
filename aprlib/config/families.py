"""The model families aprlib runs, as data: one ``Family`` each.

A family is what transformers calls a model type and llama.cpp an architecture. What one
family does differently from another is written here, once, and read by the config reader
(``modelconfig``), the name maps and q/k permutation (``formats.layout``), the expected
shapes (``compare.shapes``), the reference forward and its capture points
(``forward.model``) and llama.cpp's gaps list; adding a family is one entry here and the
ops it adds. In the spirit of gguf-py's ``constants.py``: names and facts, no behaviour.
"""

from __future__ import annotations

from dataclasses import dataclass


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
    #: transformers builds the q/k/v biases whatever ``attention_bias`` says (Qwen2)
    fixed_qkv_bias: bool = False
    #: the MLP may carry biases (``mlp_bias``: Llama); others never build them
    mlp_bias: bool = False
    #: RMSNorm on q and k after the projection, before RoPE: "head" over each head's
    #: ``head_dim`` values (Qwen3, weights [head_dim]); None: no q/k norm
    qk_norm: str | None = None
    #: llama.cpp's converter permutes q/k rows for its pairwise rotation (Llama)
    permuted_qk: bool = False
    #: other model types read as this family (same tensors, same forward)
    aliases: tuple[tuple[str, str], ...] = ()
    #: llama.cpp's graph for this family loads an o_proj bias (``attn_output.bias``) when
    #: the file has one; where it does not, it refuses such a file
    llama_cpp_o_proj_bias: bool = True


QWEN2 = Family(
    "qwen2",
    "Qwen2ForCausalLM",
    attention_bias=True,
    o_proj_bias=False,
    max_positions=32768,
    fixed_qkv_bias=True,
)
LLAMA = Family(
    "llama",
    "LlamaForCausalLM",
    attention_bias=False,
    o_proj_bias=True,
    max_positions=2048,
    mlp_bias=True,
    permuted_qk=True,
    aliases=(("mistral", "MistralForCausalLM"),),
)
QWEN3 = Family(
    "qwen3",
    "Qwen3ForCausalLM",
    attention_bias=False,
    o_proj_bias=True,
    max_positions=32768,
    qk_norm="head",
    llama_cpp_o_proj_bias=False,
)

FAMILIES: dict[str, Family] = {f.name: f for f in (QWEN2, LLAMA, QWEN3)}


def family(name: str) -> Family:
    """The family of an architecture name (KeyError names the supported ones)."""
    try:
        return FAMILIES[name]
    except KeyError:
        raise KeyError(f"{name!r} is not a supported family ({', '.join(FAMILIES)})") from None
