"""The built-in map from llama.cpp's graph tensor names to our capture points.

Read from the llama.cpp that llama-cpp-python 0.3.36 vendors (``src/llama-graph.cpp``
``build_inp_embd``, ``build_norm``, ``build_qkv``, ``build_attn``, ``build_ffn``;
``src/models/qwen2.cpp``, ``src/models/llama.cpp``, ``qwen3.cpp``; ``olmo2.cpp``'s map is
``_olmo2_map``, ``gemma2.cpp``'s and ``gemma3.cpp``'s ``_gemma_map``, ``phi3.cpp``'s
``_phi3_map``, ``qwen3moe.cpp``'s ``_qwen3moe_map`` (with ``build_moe_ffn``); Mistral runs
llama's graph). Archs with a map: ``ARCHS``. A graph tensor is named
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

Gemma 2 and 3 (``_gemma_map``) name llama's tensors alike where they are the same quantity,
except: ``embed`` is ``inp_scaled`` (``embd`` is before the x sqrt(hidden) scale); the last
``Qcur`` is q after RoPE and *before* the query scale (the scaled q is unnamed); there is
no ``attn_out``; ``attn.post_norm`` is ``attn_post_norm``, ``resid.attn`` is ``sa_out``,
``mlp.swiglu`` is the GELU gate ``ffn_geglu``; ``mlp.post_norm`` is gemma3's
``ffn_post_norm-N`` (gemma2 names it without a layer: no point). Their norms multiply by
the GGUF's stored 1 + w, so they are our (1 + w) norms as they stand.

Phi-3 (``_phi3_map``) fuses q/k/v and gate/up: ``build_qkv`` names the fused product
``wqkv`` (no point: q, k and v side by side) and its three 3-D views ``Qcur``/``Kcur``/
``Vcur`` #1 (each our ``post_bias``; no bias, so no ``pre_bias`` apart from it); the model
names the RoPE result ``Qcur``/``Kcur`` #2 and then q *times 1/sqrt(head_dim)* ``Qcur`` #3,
which is not ``attn.q.rope``. The fused ``ffn_up`` is gate and up side by side (no point);
``ffn_swiglu`` splits it. No ``attn_out`` and no ``ffn_inp``: ``attn.o_proj`` and
``resid.attn`` are unnamed. Qwen3-MoE (``_qwen3moe_map``) is Qwen3's attention and
``build_moe_ffn``: ``ffn_moe_logits`` is the router's logits (``mlp.router``),
``ffn_moe_out`` the weighted sum of the chosen experts (``mlp.down``); a sparse layer has
no gate/up/swiglu point (one expert's ``ffn_moe_gate``/``ffn_moe_up`` covers the tokens
routed to it in its slot, not ours).

RoPE layout (llama): llama.cpp's llama graph uses "normal" RoPE, rotating pairs
``(2i, 2i+1)``, on q/k weights the GGUF converter permuted so that those pairs are HF's
``(i, i + d/2)``. Its ``Qcur``/``Kcur`` tensors (all of them, before and after RoPE) hold our
values with each head's elements interleaved. A layout cannot say that, so the capture
(``aprlib.forward.llamacpp.activations``) undoes the interleave for the names listed in
``interleaved_names(arch)`` before the map applies; qwen2 and Gemma (NEOX RoPE) need none.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from aprlib.config.modelconfig import ModelConfig

ENGINE = "llama.cpp"
ARCHS = ("qwen2", "llama", "qwen3", "olmo2", "gemma2", "gemma3", "phi3", "qwen3moe")
#: each arch's usual q/k/v bias, when a run's census is not at hand
DEFAULT_QKV_BIAS = {
    "qwen2": True,
    "llama": False,
    "qwen3": False,
    "olmo2": False,
    "gemma2": False,
    "gemma3": False,
    "phi3": False,
    "qwen3moe": False,
}
#: archs whose graph names q and k after their per-head RMSNorm (``src/models/qwen3.cpp``:
#: ``Qcur_normed``/``Kcur_normed``, between the reshape and RoPE; ``nth`` of ``Qcur`` as
#: in qwen2 and llama)
QK_NORMED = ("qwen3", "qwen3moe", "gemma3")
#: archs whose GGUF q/k rows are permuted for llama.cpp's normal (pair-interleaved) RoPE
INTERLEAVED_ROPE = ("llama",)

HIDDEN = "ne[hidden, tokens]"
FLAT_HEADS = "ne[heads*head_dim, tokens]"
HEADS = "ne[head_dim, heads, tokens]"
INTER = "ne[intermediate, tokens]"
EXPERTS = "ne[experts, tokens]"


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
    if arch in ("gemma2", "gemma3"):
        return _gemma_map(arch, bias)
    if arch == "phi3":
        return _phi3_map()
    if arch == "qwen3moe":
        return _qwen3moe_map(bias)
    layer = "layers.{layer}."
    points = _embed_and_attention(arch, bias)
    if arch == "llama":
        points.append(_entry("attn_out-{layer}", layer + "attn.o_proj", HIDDEN))
    points += [
        _entry("ffn_inp-{layer}", layer + "resid.attn", HIDDEN),
        _entry("ffn_norm-{layer}", layer + "ffn_norm", HIDDEN),
        *_mlp_and_head(layer),
    ]
    return {"engine": ENGINE, "points": points}


def _embed_and_attention(arch: str, bias: bool, embed: str = "embd") -> list[dict[str, Any]]:
    """The points up to ``kqv_out`` of a graph that calls ``build_qkv`` on separate q/k/v
    weights (llama, qwen2, qwen3, qwen3moe, gemma2, gemma3): named alike, ``nth`` set by
    the bias; ``embed``: the name of the embedding as the layers get it (Gemma's scaled
    ``inp_scaled``)."""
    layer = "layers.{layer}."
    points = [
        _entry(embed, "embed", HIDDEN),
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
    return points


def _head() -> list[dict[str, Any]]:
    """The final norm and the logits: named alike in every graph mapped."""
    return [
        _entry("result_norm", "final_norm", HIDDEN),
        _entry("result_output", "logits", "ne[vocab, tokens]"),
    ]


def _mlp_and_head(layer: str) -> list[dict[str, Any]]:
    """A dense MLP's points from its separate gate on, and the head's: named alike in the
    graphs of llama, qwen2, qwen3 and olmo2."""
    return [
        _entry("ffn_gate-{layer}", layer + "mlp.gate", INTER),
        _entry("ffn_up-{layer}", layer + "mlp.up", INTER),
        _entry("ffn_swiglu-{layer}", layer + "mlp.swiglu", INTER),
        _entry("ffn_out-{layer}", layer + "mlp.down", HIDDEN),
        _entry("l_out-{layer}", layer + "resid.mlp", HIDDEN),
        *_head(),
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


def _gemma_map(arch: str, bias: bool) -> dict[str, Any]:
    """``src/models/gemma2.cpp`` and ``gemma3.cpp``: llama's names where they hold the same
    quantity, with these differences. The embedding times sqrt(hidden) is ``inp_scaled``
    (``embd`` is the unscaled ``get_rows``: not our point). The norms multiply by the
    GGUF's stored weight, which holds Gemma's 1 + w, so ``attn_norm``/``ffn_norm``/
    ``attn_post_norm`` are our (1 + w) norms. ``build_qkv`` names the matmul and the
    reshape (#2 holds #1's values; a file with q/k/v biases would add one, as in llama:
    ``bias``), gemma3 names its per-head q/k norms
    ``Qcur_normed``/``Kcur_normed`` (3-D), and the model names the RoPE result ``Qcur``/
    ``Kcur`` #3 *before* ``ggml_scale`` by ``f_attention_scale`` (the scaled q is unnamed,
    so the last is our ``attn.q.rope``; the scale itself shows at ``kqv_out``). ``wo @ kqv_out``
    is unnamed (no ``attn.o_proj``); the residual after attention is ``sa_out``; the MLP
    is ``ffn_gate``/``ffn_up``/``ffn_geglu`` (``ggml_geglu_split``: llama.cpp's tanh-GELU
    of the gate times up, ``mlp.swiglu``'s slot)/``ffn_out``. gemma3 names the MLP's post
    norm ``ffn_post_norm-N``; gemma2 names it with no layer (``cb(..., -1)``): no point.
    ``result_output`` is after the final soft-cap (gemma2 always caps; gemma3 when the
    file has ``final_logit_softcapping``), as our ``logits`` are. Census of a run:
    ``Qcur-0``/``Kcur-0``/``Vcur-0`` 3/3/2.

    Same quantity, other arithmetic: llama.cpp's CPU GELU reads an F16 table at the
    F16-rounded gate (``ggml_vec_geglu_f32``), so ``ffn_geglu`` and every tensor after it
    differ from an exact tanh-GELU forward by ~1e-7 NMSE (~3e-4 of the largest value);
    with the table modelled, ~1e-9 (``tests/test_llamacpp_gemma_points.py``). The query
    scale is ``f_attention_scale``, 1/sqrt(head_dim) unless the layer count is a 27B's,
    whatever ``query_pre_attn_scalar`` says: a model where they differ diverges at
    ``kqv_out``, correctly."""
    layer = "layers.{layer}."
    points = _embed_and_attention(arch, bias, embed="inp_scaled")
    points += [
        _entry("attn_post_norm-{layer}", layer + "attn.post_norm", HIDDEN),
        _entry("sa_out-{layer}", layer + "resid.attn", HIDDEN),
        _entry("ffn_norm-{layer}", layer + "ffn_norm", HIDDEN),
        _entry("ffn_gate-{layer}", layer + "mlp.gate", INTER),
        _entry("ffn_up-{layer}", layer + "mlp.up", INTER),
        _entry("ffn_geglu-{layer}", layer + "mlp.swiglu", INTER),
        _entry("ffn_out-{layer}", layer + "mlp.down", HIDDEN),
    ]
    if arch == "gemma3":
        points.append(_entry("ffn_post_norm-{layer}", layer + "mlp.post_norm", HIDDEN))
    points += [
        _entry("l_out-{layer}", layer + "resid.mlp", HIDDEN),
        *_head(),
    ]
    return {"engine": ENGINE, "points": points}


def _phi3_map() -> dict[str, Any]:
    """``src/models/phi3.cpp``: llama's names where they hold the same quantity; the fused
    weights change what the rest are. ``build_qkv``'s fused path names the product
    ``wqkv`` (q, k and v side by side: no point) and its 3-D views ``Qcur``/``Kcur``/
    ``Vcur`` #1: q/k/v as they enter RoPE and attention, our ``post_bias`` (phi3 loads no
    bias; a file's ``wqkv_b`` would be added before the views, so #1 stays ``post_bias``
    either way). A tensor takes one point, so ``pre_bias`` (the same values) shows as
    absent. The model names the RoPE result ``Qcur``/``Kcur`` #2 (``Vcur`` named again
    is the same view) and then q *times 1/sqrt(head_dim)* ``Qcur`` #3 (``build_attn``
    then scales by 1): #3 is not our ``attn.q.rope``, #2 is. ``wo @ kqv_out`` and the
    residual add after it are unnamed (no ``attn_out``, no ``ffn_inp``: no ``o_proj``,
    no ``resid.attn``). ``build_ffn`` with only ``up`` and ``LLM_FFN_SWIGLU`` names the
    fused product ``ffn_up`` (gate then up, 2 x intermediate rows: neither our
    ``mlp.gate`` nor ``mlp.up``, no point), ``ffn_swiglu`` = silu(first half) * second
    half (``ggml_swiglu``), and the down product, which the model names ``ffn_out``.
    RoPE is NEOX (nothing to de-interleave). Census of a run:
    ``Qcur-0``/``Kcur-0``/``Vcur-0`` 3/2/1, ``wqkv-0`` 1, ``ffn_up-0`` 1, ``ffn_out-0`` 1,
    no ``ffn_gate-0``."""
    layer = "layers.{layer}."
    points = [
        _entry("embd", "embed", HIDDEN),
        _entry("attn_norm-{layer}", layer + "attn_norm", HIDDEN),
    ]
    for proj, name in (("q", "Qcur"), ("k", "Kcur"), ("v", "Vcur")):
        points.append(_entry(name + "-{layer}", f"{layer}attn.{proj}.post_bias", HEADS))
        if proj != "v":
            points.append(_entry(name + "-{layer}", f"{layer}attn.{proj}.rope", HEADS, 2))
    points += [
        _entry("kqv_out-{layer}", layer + "attn.out", FLAT_HEADS),
        _entry("ffn_norm-{layer}", layer + "ffn_norm", HIDDEN),
        _entry("ffn_swiglu-{layer}", layer + "mlp.swiglu", INTER),
        _entry("ffn_out-{layer}", layer + "mlp.down", HIDDEN),
        _entry("l_out-{layer}", layer + "resid.mlp", HIDDEN),
        *_head(),
    ]
    return {"engine": ENGINE, "points": points}


def _qwen3moe_map(bias: bool) -> dict[str, Any]:
    """``src/models/qwen3moe.cpp``: qwen3's attention, named as in qwen3 (``Qcur_normed``/
    ``Kcur_normed`` per head; no ``attn_out``), ``ffn_inp``/``ffn_norm`` as llama's, and
    every layer's MLP ``build_moe_ffn`` (the graph has no dense layer). Its
    ``ffn_moe_logits`` (``gate_inp @ h``, ``ne[experts, tokens]``) is our
    ``mlp.router``; ``ffn_moe_out`` (the chosen experts' outputs times their renormalised
    softmax weights, added; the model names the same tensor again) our ``mlp.down``. The
    tensors between (``ffn_moe_probs``, ``_topk``, ``_weights*``, ``_gate``/``_up``/
    ``_swiglu``/``_down`` per chosen slot, ``_weighted``) have no point: one slot holds
    different experts for different tokens. Census of a run: ``Qcur-0``/``Kcur-0``/
    ``Vcur-0`` 3/3/2 (4/4/3 with biases, as llama), ``ffn_moe_logits-0`` and
    ``ffn_moe_out-0`` 1 each."""
    layer = "layers.{layer}."
    points = _embed_and_attention("qwen3moe", bias)
    points += [
        _entry("ffn_inp-{layer}", layer + "resid.attn", HIDDEN),
        _entry("ffn_norm-{layer}", layer + "ffn_norm", HIDDEN),
        _entry("ffn_moe_logits-{layer}", layer + "mlp.router", EXPERTS),
        _entry("ffn_moe_out-{layer}", layer + "mlp.down", HIDDEN),
        _entry("l_out-{layer}", layer + "resid.mlp", HIDDEN),
        *_head(),
    ]
    return {"engine": ENGINE, "points": points}


CENSUS_BIAS_DEFAULT = {(4, 4, 3): True, (3, 3, 2): False}
#: (Qcur-0, Kcur-0, Vcur-0) census of a run → whether its graph added q/k/v biases
CENSUS_BIAS = {
    "olmo2": {(2, 2, 2): False},
    # build_qkv as llama's: matmul, (+ bias,) reshape, then the RoPE result; V's reshape
    # named again by the model is one tensor. Q's scaled copy and gemma3's
    # Qcur_normed/Kcur_normed are other names, so the counts are llama's
    "gemma2": CENSUS_BIAS_DEFAULT,
    "gemma3": CENSUS_BIAS_DEFAULT,
    # the fused path names only the views (a bias, were one loaded, is added before them
    # and named wqkv_b), then Q and K after RoPE and Q once more after its scale
    "phi3": {(3, 2, 1): False},
    "qwen3moe": CENSUS_BIAS_DEFAULT,
}


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
    ``Vcur-0`` fired (qwen2, llama, qwen3, gemma2, gemma3, qwen3moe: 4/4/3 with biases,
    3/3/2 without; olmo2: 2/2/2, never a bias; phi3: 3/2/1, no bias); a mix is refused,
    since one ``nth`` rule per map cannot place it."""
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
