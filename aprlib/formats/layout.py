"""The one place that knows tensor names and orientation across formats.

* HF and APR shapes are row-major ``[out, in]``; GGUF lists ``ne[]`` fastest-first, so a
  GGUF shape is the reverse of the logical one.
* HF names are canonical; GGUF names map to them through ``GGUF_TO_HF`` (explicit, and
  checked against ``gguf.TensorNameMap`` in the tests).
* llama.cpp's Llama graph rotates adjacent pairs, HF's ``rotate_half`` rotates the two
  halves: GGUF files of the ``llama`` architecture carry q/k projection rows permuted
  (``permute_qk``), ``qwen2`` files do not.
"""

from __future__ import annotations

import re

import numpy as np

from aprlib.config.families import FAMILIES
from aprlib.formats.dtypes import DType, nbytes

_GLOBAL = {
    "token_embd.weight": "model.embed_tokens.weight",
    "output_norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
}
_BLOCK = {
    "attn_norm.weight": "input_layernorm.weight",
    "attn_q.weight": "self_attn.q_proj.weight",
    "attn_q.bias": "self_attn.q_proj.bias",
    "attn_k.weight": "self_attn.k_proj.weight",
    "attn_k.bias": "self_attn.k_proj.bias",
    "attn_v.weight": "self_attn.v_proj.weight",
    "attn_v.bias": "self_attn.v_proj.bias",
    "attn_output.weight": "self_attn.o_proj.weight",
    "attn_output.bias": "self_attn.o_proj.bias",  # llama with attention_bias: true
    "ffn_norm.weight": "post_attention_layernorm.weight",
    "ffn_gate.weight": "mlp.gate_proj.weight",
    "ffn_up.weight": "mlp.up_proj.weight",
    "ffn_down.weight": "mlp.down_proj.weight",
    "ffn_gate.bias": "mlp.gate_proj.bias",  # mlp_bias: true (llama family)
    "ffn_up.bias": "mlp.up_proj.bias",
    "ffn_down.bias": "mlp.down_proj.bias",
    "attn_q_norm.weight": "self_attn.q_norm.weight",  # qk_norm families (Qwen3)
    "attn_k_norm.weight": "self_attn.k_norm.weight",
}
_HF_BLOCK = {v: k for k, v in _BLOCK.items()}
_HF_GLOBAL = {v: k for k, v in _GLOBAL.items()}
_GGUF_BLOCK_RE = re.compile(r"^blk\.(\d+)\.(.+)$")
_HF_BLOCK_RE = re.compile(r"^model\.layers\.(\d+)\.(.+)$")

#: architectures whose GGUF q/k rows are permuted for llama.cpp's pairwise rotation
PERMUTED_QK_ARCHS = frozenset(f.name for f in FAMILIES.values() if f.permuted_qk)


def _block_map(arch: str | None) -> tuple[dict[str, str], dict[str, str]]:
    """(GGUF → HF, HF → GGUF) block names for GGUF architecture ``arch``: the shared map
    with its families' own names in place of the shared ones they displace."""
    own = [pair for f in FAMILIES.values() if f.gguf_architecture == arch for pair in f.gguf_names]
    if not own:
        return _BLOCK, _HF_BLOCK
    hf_names = {hf for _, hf in own}
    block = {g: hf for g, hf in _BLOCK.items() if hf not in hf_names} | dict(own)
    return block, {hf: g for g, hf in block.items()}


def gguf_to_hf(name: str, arch: str | None = None) -> str | None:
    """``blk.3.ffn_up.weight`` → ``model.layers.3.mlp.up_proj.weight``; None if unknown.
    ``arch``: the GGUF's ``general.architecture``, for the names its family owns."""
    if name in _GLOBAL:
        return _GLOBAL[name]
    m = _GGUF_BLOCK_RE.match(name)
    block = _block_map(arch)[0]
    if m and m.group(2) in block:
        return f"model.layers.{m.group(1)}.{block[m.group(2)]}"
    return None


def hf_to_gguf(name: str, arch: str | None = None) -> str | None:
    if name in _HF_GLOBAL:
        return _HF_GLOBAL[name]
    m = _HF_BLOCK_RE.match(name)
    hf_block = _block_map(arch)[1]
    if m and m.group(2) in hf_block:
        return f"blk.{m.group(1)}.{hf_block[m.group(2)]}"
    return None


#: llama.cpp's stacked expert tensors (one per layer, logical [experts, out, in]) → each
#: expert's HF projection (``model.layers.N.mlp.experts.E.<proj>``), as its converter
#: stacks them (``Qwen2MoeModel.modify_tensors``)
EXPERT_STACKS = {
    "ffn_gate_exps.weight": "gate_proj.weight",
    "ffn_up_exps.weight": "up_proj.weight",
    "ffn_down_exps.weight": "down_proj.weight",
}
_STACK_OF = {hf: g for g, hf in EXPERT_STACKS.items()}
_HF_EXPERT_RE = re.compile(r"^model\.layers\.(\d+)\.mlp\.experts\.(\d+)\.(\w+\.weight)$")


def expert_of(name: str) -> tuple[str, int] | None:
    """``model.layers.3.mlp.experts.5.up_proj.weight`` → (``blk.3.ffn_up_exps.weight``, 5):
    the GGUF stack an expert's projection is one slice of; None for any other tensor."""
    m = _HF_EXPERT_RE.match(name)
    if m is None or m.group(3) not in _STACK_OF:
        return None
    return f"blk.{m.group(1)}.{_STACK_OF[m.group(3)]}", int(m.group(2))


def experts_of(name: str, experts: int) -> list[str] | None:
    """The HF names of a GGUF expert stack's slices, in order; None where ``name`` is not
    a stack."""
    m = _GGUF_BLOCK_RE.match(name)
    if m is None or m.group(2) not in EXPERT_STACKS:
        return None
    part = EXPERT_STACKS[m.group(2)]
    return [f"model.layers.{m.group(1)}.mlp.experts.{e}.{part}" for e in range(experts)]


def gguf_shape_to_logical(ne: tuple[int, ...]) -> tuple[int, ...]:
    """GGUF ``ne[]`` (fastest dimension first) → row-major ``[out, in]``."""
    return tuple(reversed([int(d) for d in ne]))


def logical_shape_to_gguf(shape: tuple[int, ...]) -> tuple[int, ...]:
    """Row-major ``[out, in]`` → GGUF ``ne[]`` (fastest dimension first)."""
    return tuple(reversed([int(d) for d in shape]))


def gguf_writer_byte_shape(shape: tuple[int, ...], dtype: DType) -> tuple[int, ...]:
    """What ``gguf.GGUFWriter.add_tensor_info`` takes for a tensor of logical ``shape``.

    GGUFWriter takes a numpy-order shape in bytes (the last axis counted in bytes for a
    quantised type) and itself writes ``ne[]`` as ``logical_shape_to_gguf(shape)``, the
    reversal; ``tests/test_formats_layout.py`` checks the written ``ne[]`` against
    that function, so the convention lives here and is verified, not assumed.
    """
    if not shape:
        return (0,)
    return (*shape[:-1], nbytes(dtype, (shape[-1],)))


def qk_heads(name: str, n_head: int, n_head_kv: int) -> int | None:
    """Heads of a q/k projection (weight or bias) named in HF style, else None."""
    if name.endswith(("self_attn.q_proj.weight", "self_attn.q_proj.bias")):
        return n_head
    if name.endswith(("self_attn.k_proj.weight", "self_attn.k_proj.bias")):
        return n_head_kv
    return None


def permute_qk(rows: np.ndarray, heads: int) -> np.ndarray:
    """HF half-rotation row order → llama.cpp pairwise order (as convert_hf_to_gguf.py)."""
    shape = rows.shape
    return rows.reshape(heads, 2, shape[0] // heads // 2, *shape[1:]).swapaxes(1, 2).reshape(shape)


def unpermute_qk(rows: np.ndarray, heads: int) -> np.ndarray:
    """Inverse of ``permute_qk``."""
    shape = rows.shape
    return rows.reshape(heads, shape[0] // heads // 2, 2, *shape[1:]).swapaxes(1, 2).reshape(shape)
