"""The built-in map from llama.cpp's graph tensor names to our capture points.

Read from the llama.cpp that llama-cpp-python 0.3.36 vendors (``src/llama-graph.cpp``
``build_inp_embd``, ``build_norm``, ``build_qkv``, ``build_attn``, ``build_ffn``;
``src/models/qwen2.cpp``, ``src/models/llama.cpp``, ``qwen3.cpp``; ``olmo2.cpp``'s map is
``_olmo2_map``; Mistral runs llama's graph). A graph tensor is named
``<name>-<layer>`` (or ``<name>`` outside the layers) when the model code calls
``cb(tensor, name, layer)``; naming the same tensor twice keeps the last name, and several
tensors of one layer share a name (``Qcur`` up to four times), told apart by ``nth``, their
order of evaluation. Only a tensor holding the same quantity as the point is mapped:

=================  ==============================================  =======================
llama.cpp          what it holds                                   capture point
=================  ==============================================  =======================
``embd``           ``get_rows(token_embd, tokens)``                ``embed``
``attn_norm-N``    rms_norm(x) * attn_norm weight                  ``attn_norm``
``Qcur-N`` #1      ``wq @ x`` (2-D)                                ``attn.q.pre_bias``
``Qcur-N`` #2      ``+ bq`` (2-D); without a bias: the 3-D reshape ``attn.q.post_bias``
                   of #1, the same values
``Qcur-N`` #3      with a bias: the 3-D reshape of #2 (unmapped)
last ``Qcur-N``    after RoPE (#4 with a bias, #3 without)         ``attn.q.rope``
``Kcur-N``         as ``Qcur``                                     ``attn.k.*``
``Vcur-N`` #1, #2  as ``Qcur`` (no RoPE: #2 is the last)           ``attn.v.*``
``kqv_out-N``      softmax(qkᵀ/√d + mask) v, heads merged          ``attn.out``
``attn_out-N``     llama only: ``wo @ attn.out (+ bo)``            ``attn.o_proj``
``ffn_inp-N``      x + o_proj                                      ``resid.attn``
``ffn_norm-N``     rms_norm * ffn_norm weight                      ``ffn_norm``
``ffn_gate-N``     ``w_gate @ h``                                  ``mlp.gate``
``ffn_up-N``       ``w_up @ h``                                    ``mlp.up``
``ffn_swiglu-N``   silu(gate) * up                                 ``mlp.swiglu``
``ffn_out-N``      ``w_down @ swiglu`` (the first ``ffn_out``)     ``mlp.down``
``l_out-N``        resid.attn + down                               ``resid.mlp``
``result_norm``    final rms_norm * output_norm weight             ``final_norm``
``result_output``  ``output @ final_norm``                         ``logits``
=================  ==============================================  =======================

Points llama.cpp has no tensor for:

* ``attn.scores``: llama.cpp's ``kq-N`` is ``k·q`` *unscaled*, over the KV cache's slots
  (``n_kv`` columns, padded past the tokens), and the 1/√d scale, the mask and the softmax
  happen inside one ``soft_max_ext`` op (``kq_soft_max-N`` is after the softmax); with
  flash attention there is no ``kq`` at all.
* ``attn.o_proj`` in qwen2: ``wo @ kqv_out`` is never named (qwen2.cpp has no
  ``cb(cur, "attn_out", il)``, llama.cpp does).
* ``inp_embd`` is *not* the embedding: it is the input tensor for caller-given vectors,
  unused (not computed) when the batch holds tokens; the ``get_rows`` result is ``embd``.
* ``norm-N`` (and ``norm`` before ``result_norm``) is rms_norm before the weight: no point.

Naming details that set ``nth``: ``build_qkv`` names the matmul, the bias add (when the GGUF
has ``attn_{q,k,v}.bias``) and the ``[head_dim, heads, tokens]`` reshape, and the model
names the RoPE result; ``Vcur`` named again by the model is the same tensor, not a new
one. So ``nth`` depends on whether the file has q/k/v biases, not on the architecture:
``qkv_bias`` picks the variant (qwen2 files have them; llama files usually do not; the
census of a run says which: ``Qcur-0`` fires 4 times with a bias, 3 without). In llama.cpp's
llama graph the residual add after the MLP is named ``ffn_out`` first and then renamed
``l_out`` (``build_cvec`` returns the same tensor without a control vector), so one
``ffn_out`` per layer remains there, as in qwen2. ``inp_out_ids`` row selection in the last
layer keeps every row when every token is an output (the capture asks for all), so every
point has scope ``all``.

RoPE layout (llama): llama.cpp's llama graph uses "normal" RoPE, rotating pairs
``(2i, 2i+1)``, on q/k weights the GGUF converter permuted so that those pairs are HF's
``(i, i + d/2)``. Its ``Qcur``/``Kcur`` tensors (all of them, before and after RoPE) hold our
values with each head's elements interleaved. A layout cannot say that, so the capture
(``aprlib.forward.llamacpp.activations``) undoes the interleave for the names listed in
``interleaved_names(arch)`` before the map applies; qwen2 (NEOX RoPE) needs none.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from aprlib.config.modelconfig import ModelConfig

ENGINE = "llama.cpp"
ARCHS = ("qwen2", "llama", "qwen3", "olmo2")
#: each arch's usual q/k/v bias, when a run's census is not at hand
DEFAULT_QKV_BIAS = {"qwen2": True, "llama": False, "qwen3": False, "olmo2": False}
#: archs whose graph names q and k after their per-head RMSNorm (``src/models/qwen3.cpp``:
#: ``Qcur_normed``/``Kcur_normed``, between the reshape and RoPE; ``nth`` of ``Qcur`` as
#: in qwen2 and llama)
QK_NORMED = ("qwen3",)
#: archs whose GGUF q/k rows are permuted for llama.cpp's normal (pair-interleaved) RoPE
INTERLEAVED_ROPE = ("llama",)

HIDDEN = "ne[hidden, tokens]"
FLAT_HEADS = "ne[heads*head_dim, tokens]"
HEADS = "ne[head_dim, heads, tokens]"
INTER = "ne[intermediate, tokens]"


def _entry(name: str, point: str, layout: str, nth: int = 1) -> dict[str, Any]:
    entry: dict[str, Any] = {"name": name, "point": point, "layout": layout}
    if nth != 1:
        entry["nth"] = nth
    return entry


def point_map_data(arch: str, qkv_bias: bool | None = None) -> dict[str, Any]:
    """The built-in map for ``arch`` in the map format ``PointMap.from_dict`` takes.

    ``qkv_bias``: whether the GGUF has q/k/v biases (it shifts ``nth`` of ``Qcur``/``Kcur``/
    ``Vcur``); None takes the arch's usual (``DEFAULT_QKV_BIAS``).
    """
    if arch not in ARCHS:
        raise ValueError(
            f"no built-in llama.cpp map for architecture {arch!r} (have: {', '.join(ARCHS)}); "
            "pass a map of its graph names"
        )
    bias = DEFAULT_QKV_BIAS[arch] if qkv_bias is None else qkv_bias
    if arch == "olmo2":
        return _olmo2_map()
    layer = "layers.{layer}."
    points = [
        _entry("embd", "embed", HIDDEN),
        _entry("attn_norm-{layer}", layer + "attn_norm", HIDDEN),
    ]
    for proj, name in (("q", "Qcur"), ("k", "Kcur"), ("v", "Vcur")):
        attn = f"{layer}attn.{proj}."
        points.append(_entry(name + "-{layer}", attn + "pre_bias", FLAT_HEADS, 1))
        points.append(
            _entry(name + "-{layer}", attn + "post_bias", FLAT_HEADS if bias else HEADS, 2)
        )
        if proj != "v" and arch in QK_NORMED:
            points.append(_entry(name + "_normed-{layer}", attn + "norm", HEADS))
        if proj != "v":
            points.append(_entry(name + "-{layer}", attn + "rope", HEADS, 4 if bias else 3))
    points.append(_entry("kqv_out-{layer}", layer + "attn.out", FLAT_HEADS))
    if arch == "llama":
        points.append(_entry("attn_out-{layer}", layer + "attn.o_proj", HIDDEN))
    points += [
        _entry("ffn_inp-{layer}", layer + "resid.attn", HIDDEN),
        _entry("ffn_norm-{layer}", layer + "ffn_norm", HIDDEN),
        *_mlp_and_head(layer),
    ]
    return {"engine": ENGINE, "points": points}


def _mlp_and_head(layer: str) -> list[dict[str, Any]]:
    """The MLP's points from its gate on, and the head's: named alike in every graph mapped."""
    return [
        _entry("ffn_gate-{layer}", layer + "mlp.gate", INTER),
        _entry("ffn_up-{layer}", layer + "mlp.up", INTER),
        _entry("ffn_swiglu-{layer}", layer + "mlp.swiglu", INTER),
        _entry("ffn_out-{layer}", layer + "mlp.down", HIDDEN),
        _entry("l_out-{layer}", layer + "resid.mlp", HIDDEN),
        _entry("result_norm", "final_norm", HIDDEN),
        _entry("result_output", "logits", "ne[vocab, tokens]"),
    ]


def _olmo2_map() -> dict[str, Any]:
    """``src/models/olmo2.cpp``: no norm before attention or the MLP; ``build_qkv`` names
    each matmul (2-D) and no reshape, the q/k norms over the whole projection are
    ``Qcur_normed``/``Kcur_normed`` (2-D), the model names the RoPE result ``Qcur``/``Kcur``
    again and ``Vcur``'s reshape; the norm of attention's output is ``attn_post_norm``.
    No bias is loaded, so q's and k's pre_bias and post_bias are one tensor, placed at
    post_bias (a tensor takes one point; pre_bias shows as absent); ``Vcur`` #2 is the
    reshape. The MLP's post norm is named ``ffn_post_norm`` with no layer
    (``cb(..., -1)``): it maps to no point; ``l_out`` after it does. Census of a run:
    ``Qcur-0``/``Kcur-0``/``Vcur-0`` 2/2/2."""
    layer = "layers.{layer}."
    points = [_entry("embd", "embed", HIDDEN)]
    for proj, name in (("q", "Qcur"), ("k", "Kcur")):
        attn = f"{layer}attn.{proj}."
        points.append(_entry(name + "-{layer}", attn + "post_bias", FLAT_HEADS))
        points.append(_entry(name + "_normed-{layer}", attn + "norm", FLAT_HEADS))
        points.append(_entry(name + "-{layer}", attn + "rope", HEADS, 2))
    points.append(_entry("Vcur-{layer}", layer + "attn.v.pre_bias", FLAT_HEADS))
    points.append(_entry("Vcur-{layer}", layer + "attn.v.post_bias", HEADS, 2))
    points += [
        _entry("kqv_out-{layer}", layer + "attn.out", FLAT_HEADS),
        _entry("attn_post_norm-{layer}", layer + "attn.post_norm", HIDDEN),
        _entry("ffn_inp-{layer}", layer + "resid.attn", HIDDEN),
        *_mlp_and_head(layer),
    ]
    return {"engine": ENGINE, "points": points}


#: (Qcur-0, Kcur-0, Vcur-0) census of a run → whether its graph added q/k/v biases
CENSUS_BIAS = {
    "olmo2": {(2, 2, 2): False},
}
CENSUS_BIAS_DEFAULT = {(4, 4, 3): True, (3, 3, 2): False}


def point_map_for(config: ModelConfig, qkv_bias: bool | None = None) -> dict[str, Any]:
    """The built-in map for a model of ``config`` (its ``architecture``; q/k/v biases as
    ``config.qkv_bias`` says unless ``qkv_bias`` is given). ``llamacpp_activations``
    refuses a run whose graph disagrees with the file's config about the biases, so this
    map's ``nth`` rules fit the captures it returns."""
    bias = config.qkv_bias if qkv_bias is None else qkv_bias
    return point_map_data(config.gguf_architecture, bias)


def engine_names(arch: str | None = None) -> list[str]:
    """The engine names (``{layer}`` patterns) the built-in map of ``arch`` reads, or of
    every built-in arch when None: what the capture asks llama.cpp for."""
    names: dict[str, None] = {}
    for a in ARCHS if arch is None else (arch,):
        for bias in (False, True):
            for entry in point_map_data(a, bias)["points"]:
                names[entry["name"]] = None
    return list(names)


def interleaved_names(arch: str) -> tuple[str, ...]:
    """Engine names whose head_dim is pair-interleaved by the GGUF's q/k permutation."""
    return ("Qcur-{layer}", "Kcur-{layer}") if arch in INTERLEAVED_ROPE else ()


def qkv_bias_from_census(census: Mapping[str, int], arch: str | None = None) -> bool:
    """Whether a run's graph added q/k/v biases, from how often ``Qcur-0``/``Kcur-0``/
    ``Vcur-0`` fired (qwen2, llama, qwen3: 4/4/3 with biases, 3/3/2 without; olmo2: 2/2/2,
    never a bias); a mix is refused, since one ``nth`` rule per map cannot place it."""
    counts = (census.get("Qcur-0"), census.get("Kcur-0"), census.get("Vcur-0"))
    known = CENSUS_BIAS.get(arch or "", CENSUS_BIAS_DEFAULT)
    if counts in known:
        return known[counts]
    shapes = " or ".join(
        f"{'/'.join(map(str, c))} ({'biased' if b else 'none'})" for c, b in known.items()
    )
    raise ValueError(
        f"llama.cpp's graph named Qcur-0/Kcur-0/Vcur-0 {counts} times: not the q/k/v shape the "
        f"built-in map knows ({shapes}); pass a map"
    )
