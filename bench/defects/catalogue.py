"""The catalogue: every DESIGN §7 row, each defect with its right diagnosis fixed up front.

File-level entries run today (converter, formats, dtypes, ``apr diff``). Entries for the
reference model, trace, bisect, qa, kernels and tokenizers name the modules they need and
run once those land (their injections are written against the interface names of
``/work/briefs/interfaces.md``: ``aprlib.forward.model.Ops``, ``Transformer``).
"""

from __future__ import annotations

from typing import Any

from bench.defects import injections as inj
from bench.defects.registry import Defect, register

#: the file-level falsifiers: orientation, names, tied heads, dtype decoding, lossless paths
LAYOUT = ("FALSIFY-LAYOUT-001", "FALSIFY-LAYOUT-002")
TIED = ("FALSIFY-TIED-001", "FALSIFY-TIED-002", "FALSIFY-TIED-003")
DTYPE = ("FALSIFY-DTYPE-001", "FALSIFY-DTYPE-002")
LOSSLESS = ("FALSIFY-DIFF-010",)
FILE_SUITE = (*LAYOUT, *TIED, *DTYPE, *LOSSLESS)
#: falsifiers of the model config (branch issue11)
CONFIG = ("FALSIFY-CONFIG-001", "FALSIFY-CONFIG-002", "FALSIFY-CONFIG-003")
#: the reference forward against transformers (branch issue11: forward-parity-hf-v1)
FORWARD = ("FALSIFY-FWD-001", "FALSIFY-FWD-002")
#: a tokenizer carried into GGUF (and through APR) tokenizes like its source
TOKENIZER = ("FALSIFY-TOK-001", "FALSIFY-TOK-002")

# --- weight layout ------------------------------------------------------------------------

register(
    Defect(
        "ffn-transposed-on-import",
        "FFN weights stored transposed by the converter",
        "weight stored transposed",
        FILE_SUITE,
        transform=inj.transpose("mlp."),
        expect=("TRANSPOSED",),
        where=("mlp.",),
    )
)
register(
    Defect(
        "k-proj-transposed",
        "attention k_proj stored transposed (GQA: non-square)",
        "weight stored transposed",
        FILE_SUITE,
        transform=inj.transpose("self_attn.k_proj"),
        expect=("TRANSPOSED",),
        where=("k_proj",),
    )
)

# --- dtypes -------------------------------------------------------------------------------

register(
    Defect(
        "bf16-tagged-f16",
        "BF16 bytes tagged F16",
        "dtype mislabel",
        FILE_SUITE,
        model="qwen2-bf16",
        transform=inj.relabel("BF16", "F16"),
        expect=("DTYPE_MISLABEL",),
        where=("BF16 data tagged F16",),  # the guilty side is B, the converted file
    )
)
register(
    Defect(
        "f16-tagged-bf16",
        "F16 bytes tagged BF16",
        "dtype mislabel",
        FILE_SUITE,
        model="qwen2-f16",
        transform=inj.relabel("F16", "BF16"),
        expect=("DTYPE_MISLABEL",),
        where=("F16 data tagged BF16",),
    )
)

# --- tied heads ---------------------------------------------------------------------------

register(
    Defect(
        "untied-head-dropped",
        "an untied model written without its lm_head",
        "tied lm_head missing or duplicated",
        FILE_SUITE,
        transform=inj.drop("lm_head.weight"),
        expect=("MISSING", "CONFIG_CONTRADICTS_WEIGHTS"),
        where=("lm_head",),
    )
)
register(
    Defect(
        "untied-head-tied",
        "an untied model written as tied (its own head replaced by the embedding)",
        "tied lm_head missing or duplicated",
        FILE_SUITE,
        transform=inj.head_replaced_by_embedding,
        expect=("CONFIG_MISMATCH", "CONFIG_CONTRADICTS_WEIGHTS", "VALUE_DRIFT"),
        where=("lm_head", "tie_word_embeddings"),
    )
)
register(
    Defect(
        "tied-head-duplicated",
        "a tied model written with a duplicate lm_head",
        "tied lm_head missing or duplicated",
        FILE_SUITE,
        model="qwen2-tied",
        transform=inj.head_duplicated,
        expect=("EXTRA", "CONFIG_CONTRADICTS_WEIGHTS"),
        where=("lm_head",),
    )
)

# --- biases -------------------------------------------------------------------------------

_QKV_BIAS = ("q_proj.bias", "k_proj.bias", "v_proj.bias")
register(
    Defect(
        "qkv-bias-dropped",
        "Qwen2 q/k/v biases dropped on import",
        "q/k/v bias dropped, doubled or mis-scaled",
        FILE_SUITE,
        transform=inj.drop(*_QKV_BIAS),
        expect=("MISSING",),
        where=("bias",),
    )
)
register(
    Defect(
        "qkv-bias-doubled",
        "q/k/v biases added twice (stored x2)",
        "q/k/v bias dropped, doubled or mis-scaled",
        FILE_SUITE,
        transform=inj.scale(2.0, *_QKV_BIAS),
        expect=("SCALED",),
        where=("bias",),
    )
)
register(
    Defect(
        "qkv-bias-x10",
        "q/k/v biases mis-scaled x10",
        "q/k/v bias dropped, doubled or mis-scaled",
        FILE_SUITE,
        transform=inj.scale(10.0, *_QKV_BIAS),
        expect=("SCALED",),
        where=("bias",),
    )
)

# --- config -------------------------------------------------------------------------------

register(
    Defect(
        "rope-theta-wrong",
        "rope_theta written wrong (1e4 -> 1e6)",
        "config preset wrong",
        (*FILE_SUITE, *CONFIG),
        transform=inj.config_field(rope_theta=1_000_000.0),
        expect=("CONFIG_MISMATCH",),
        where=("rope_theta",),
    )
)
register(
    Defect(
        "tie-flag-wrong",
        "config says tie_word_embeddings: true for an untied model (lm_head kept)",
        "config preset wrong",
        (*FILE_SUITE, *CONFIG),
        transform=inj.config_field(tie_word_embeddings=True),
        expect=("CONFIG_MISMATCH", "CONFIG_CONTRADICTS_WEIGHTS"),
        where=("tie_word_embeddings",),
    )
)
register(
    Defect(
        "rms-eps-wrong",
        "rms_norm_eps written wrong (1e-6 -> 1e-5)",
        "config preset wrong",
        (*FILE_SUITE, *CONFIG),
        transform=inj.config_field(rms_norm_eps=1e-5),
        expect=("CONFIG_MISMATCH",),
        where=("rms_norm_eps",),
    )
)

# --- swaps, NaN, off by one -----------------------------------------------------------------

register(
    Defect(
        "layers-swapped",
        "decoder layers 0 and 1 written in each other's place",
        "layers or projections swapped",
        FILE_SUITE,
        transform=inj.swap_layers(0, 1),
        expect=("SWAPPED", "PERMUTED"),
        where=("layers", "0", "1"),
        notes="the right diagnosis names a swap found by content, not value drift",
    )
)
register(
    Defect(
        "nan-in-weight",
        "one NaN in an FFN weight",
        "NaN/Inf in a weight or activation",
        FILE_SUITE,
        transform=inj.poison("model.layers.1.mlp.down_proj.weight"),
        expect=("NAN",),
        where=("down_proj",),
    )
)
register(
    Defect(
        "embedding-rows-off-by-one",
        "embedding rows shifted by one (a vocabulary off-by-one)",
        "layers or projections swapped",
        FILE_SUITE,
        transform=inj.roll_rows("embed_tokens", 1),
        expect=("PERMUTED",),
        where=("embed_tokens",),
    )
)

# --- GGUF q/k order (llama) -----------------------------------------------------------------

register(
    Defect(
        "gguf-rope-order",
        "Llama GGUF keeps rotate-half q/k rows (llama.cpp expects interleaved)",
        "layers or projections swapped",
        (*LAYOUT, "FALSIFY-GGUF-LLAMACPP-002"),
        model="llama",
        fmt="gguf",
        transform=inj.gguf_rope_permute_missing,
        expect=("PERMUTED",),
        where=("self_attn.{k,q}_proj", "q_proj", "k_proj"),  # folded or one by one
    )
)
register(
    Defect(
        "gguf-gqa-kv-heads",
        "GQA: GGUF k rows permuted per query head instead of per kv head",
        "layers or projections swapped",
        (*LAYOUT, "FALSIFY-GGUF-LLAMACPP-002"),
        model="llama",
        fmt="gguf",
        transform=inj.gguf_kv_heads_wrong,
        expect=("PERMUTED",),
        where=("k_proj",),
    )
)

# --- quantisation ---------------------------------------------------------------------------

register(
    Defect(
        "q4k-scale-bits-swapped",
        "Q4_K: the 6-bit scales of sub-blocks 0 and 1 swapped",
        "quantised block layout wrong",
        ("FALSIFY-DTYPE-004",),
        model="qwen2-wide",
        dtype="q4_k",
        patch=inj.q4_k_scales_swapped,
        expect=("VALUE_DRIFT",),
        right_falsifiers=("FALSIFY-DTYPE-004",),
        notes="from F32 to Q4_K the right class is drift beyond the quantisation bound",
    )
)
register(
    Defect(
        "q8-0-scale-halved",
        "Q8_0 blocks store d/2",
        "quantised block layout wrong",
        ("FALSIFY-DTYPE-003",),
        model="qwen2-wide",
        dtype="q8_0",
        patch=inj.q8_0_scale_halved,
        expect=("SCALED", "VALUE_DRIFT"),
        right_falsifiers=("FALSIFY-DTYPE-003",),
    )
)

# --- hostile files --------------------------------------------------------------------------

register(
    Defect(
        "truncated-file",
        "the converter's output cut at 60 %",
        "corrupt / truncated / hostile file",
        FILE_SUITE,
        file_bytes=inj.truncate(0.6),
        expect=("FILE_ERROR",),
        where=("model.apr",),
    )
)

# --- entries for modules other branches bring -----------------------------------------------


def _ops_patch(method: str, make: Any) -> Any:
    """Replace ``aprlib.forward.model.Ops.<method>`` with a defective version built from the
    real one."""

    def patch(mp: Any) -> None:
        from aprlib.forward.model import Ops

        mp.setattr(Ops, method, make(getattr(Ops, method)))

    return patch


def _eps_outside_sqrt(real: Any) -> Any:
    def rms_norm(self: Any, x: Any, weight: Any, eps: float, offset: float = 0.0) -> Any:
        import torch

        return x / (torch.sqrt((x * x).mean(-1, keepdim=True)) + eps) * (weight + offset)

    return rms_norm


def _one_plus_w(real: Any) -> Any:
    def rms_norm(self: Any, x: Any, weight: Any, eps: float, **options: Any) -> Any:
        return real(self, x, 1 + weight, eps, **options)

    return rms_norm


def _interleaved_rope(real: Any) -> Any:
    def rope(self: Any, x: Any, cos: Any, sin: Any) -> Any:
        import torch

        pairs = x.unflatten(-1, (-1, 2))
        rotated = torch.stack((-pairs[..., 1], pairs[..., 0]), -1).flatten(-2)
        return x * cos + rotated * sin

    return rope


def _gqa_modulo(real: Any) -> Any:
    def attention(self: Any, q: Any, k: Any, v: Any, **options: Any) -> Any:
        hq, hkv = q.shape[1], k.shape[1]
        index = [h % hkv for h in range(hq)]  # should be h // (hq // hkv)
        wide_k, wide_v = k[:, index], v[:, index]
        return real(self, q, wide_k, wide_v, **options)

    return attention


def _bias_ignored(real: Any) -> Any:
    def linear(self: Any, x: Any, weight: Any, bias: Any = None) -> Any:
        return real(self, x, weight, None)

    return linear


def _logits_off_by_one(mp: Any) -> None:
    from aprlib.forward.model import Transformer

    real = Transformer.forward

    def forward(self: Any, tokens: Any, cache: Any = None) -> Any:
        return real(self, tokens, cache).roll(1, dims=1)

    mp.setattr(Transformer, "forward", forward)


for _id, _title, _method, _make in (
    ("rms-eps-outside-sqrt", "RMSNorm adds eps outside the sqrt", "rms_norm", _eps_outside_sqrt),
    ("norm-one-plus-w", "RMSNorm scales by (1 + w) (Gemma convention)", "rms_norm", _one_plus_w),
    ("rope-interleaved", "RoPE rotates interleaved pairs, not halves", "rope", _interleaved_rope),
    ("gqa-kv-mapping", "GQA: query head h uses kv head h % Hkv", "attention", _gqa_modulo),
    ("forward-bias-ignored", "the forward drops every linear bias", "linear", _bias_ignored),
):
    register(
        Defect(
            _id,
            _title,
            "q/k/v bias dropped, doubled or mis-scaled"
            if _method == "linear"
            else "GPU forward disagrees with CPU",
            FORWARD,
            fmt=None,
            patch=_ops_patch(_method, _make),
            right_falsifiers=FORWARD,
            requires=("aprlib.forward.model:Ops", "aprlib.forward.model:Transformer"),
        )
    )


def _qk_norm_over_projection(real: Any) -> Any:
    """Qwen3's per-head q/k RMSNorm taken over the whole projection (OLMo 2's scope)."""

    def rms_norm(self: Any, x: Any, weight: Any, eps: float, **options: Any) -> Any:
        if x.dim() != 4:  # [B, T, H, D] is the q/k norm; every other norm as it is
            return real(self, x, weight, eps, **options)
        flat = x.flatten(-2)
        return real(self, flat, weight.repeat(x.shape[-2]), eps, **options).view_as(x)

    return rms_norm


def _qk_norm_skipped(real: Any) -> Any:
    def rms_norm(self: Any, x: Any, weight: Any, eps: float, **options: Any) -> Any:
        return x if x.dim() == 4 else real(self, x, weight, eps, **options)

    return rms_norm


def _offset_dropped(real: Any) -> Any:
    """Gemma's RMSNorm computed as every other family's: w, not 1 + w."""

    def rms_norm(self: Any, x: Any, weight: Any, eps: float, offset: float = 0.0) -> Any:
        return real(self, x, weight, eps)

    return rms_norm


def _offset_twice(real: Any) -> Any:
    """1 added to a weight that already holds it (llama.cpp's stored w + 1, plus 1)."""

    def rms_norm(self: Any, x: Any, weight: Any, eps: float, offset: float = 0.0) -> Any:
        return (
            real(self, x, weight, eps, offset=2 * offset) if offset else real(self, x, weight, eps)
        )

    return rms_norm


def _gelu_erf(real: Any) -> Any:
    """Exact GELU where Gemma's config says the tanh approximation."""

    def geglu(self: Any, gate: Any, up: Any, approximate: str = "tanh") -> Any:
        return real(self, gate, up, approximate="none")

    return geglu


def _attn_softcap_dropped(real: Any) -> Any:
    """Gemma 2's attention scores left uncapped."""

    def attention(self: Any, q: Any, k: Any, v: Any, **options: Any) -> Any:
        options.pop("softcap", None)
        return real(self, q, k, v, **options)

    return attention


def _embed_scale_dropped(mp: Any) -> None:
    """Gemma's embedding rows not multiplied by sqrt(hidden_size)."""
    import dataclasses

    from aprlib.config import families

    for name, family in list(families.FAMILIES.items()):
        if family.embed_scale:
            mp.setitem(families.FAMILIES, name, dataclasses.replace(family, embed_scale=False))


def _fused_split_swapped(mp: Any) -> None:
    """Phi-3's fused projections cut in the wrong order: k and v, gate and up exchanged
    (equal sizes under GQA and always for gate/up, so nothing fails on a shape)."""
    from aprlib.forward import model

    real = model.split_fused

    def split(y: Any, sizes: tuple[int, ...]) -> tuple[Any, ...]:
        parts = real(y, sizes)
        return (*parts[:-2], parts[-1], parts[-2])

    mp.setattr(model, "split_fused", split)


def _routing_unrenormalised(mp: Any) -> None:
    """A mixture's top-k routing weights left as softmax probabilities where the config
    says to renormalise them (``norm_topk_prob``)."""
    from aprlib.forward import model

    real = model.route
    mp.setattr(model, "route", lambda logits, k, _renormalise: real(logits, k, False))


def _window_off_by_one(real: Any) -> Any:
    """A sliding window that keeps one key too many (``j >= i - window``)."""

    def attention(self: Any, q: Any, k: Any, v: Any, window: Any = None, **options: Any) -> Any:
        return real(self, q, k, v, window=None if window is None else window + 1, **options)

    return attention


def _window_ignored(real: Any) -> Any:
    """Every layer attends to every earlier position (llama.cpp's qwen2/llama graphs)."""

    def attention(self: Any, q: Any, k: Any, v: Any, window: Any = None, **options: Any) -> Any:
        return real(self, q, k, v, **options)

    return attention


def _qk_norm_per_head(real: Any) -> Any:
    """OLMo 2's q/k norm over each head (Qwen3's scope) with the projection's weights."""

    def qk_norm(self: Any, x: Any, weight: Any, eps: float) -> Any:
        return self.rms_norm(x, weight.view(x.shape[-2:]), eps)

    return qk_norm


#: the DESIGN row every family-specific forward defect belongs to
FAMILY_ROW = (
    "family-specific op wrong (q/k norm scope, norm offset, window, soft-cap, fused split, "
    "expert routing)"
)

for _id, _title, _patch in (
    (
        "qk-norm-over-projection",
        "Qwen3 q/k norm over the projection, not each head",
        _ops_patch("rms_norm", _qk_norm_over_projection),
    ),
    ("qk-norm-skipped", "Qwen3 q/k norm skipped", _ops_patch("rms_norm", _qk_norm_skipped)),
    (
        "qk-norm-per-head",
        "OLMo 2 q/k norm per head, not over the projection",
        _ops_patch("qk_norm", _qk_norm_per_head),
    ),
    (
        "norm-offset-dropped",
        "Gemma RMSNorm by w, not 1 + w",
        _ops_patch("rms_norm", _offset_dropped),
    ),
    (
        "norm-offset-twice",
        "Gemma RMSNorm by 2 + w (the +1 twice)",
        _ops_patch("rms_norm", _offset_twice),
    ),
    (
        "gelu-erf-for-tanh",
        "exact GELU where the config says tanh",
        _ops_patch("geglu", _gelu_erf),
    ),
    (
        "attn-softcap-dropped",
        "Gemma 2 attention scores uncapped",
        _ops_patch("attention", _attn_softcap_dropped),
    ),
    ("embed-scale-dropped", "Gemma embeddings not scaled by sqrt(hidden)", _embed_scale_dropped),
    (
        "moe-routing-unrenormalised",
        "Qwen3-MoE top-k routing weights not renormalised to sum to 1",
        _routing_unrenormalised,
    ),
    (
        "fused-split-swapped",
        "Phi-3 qkv_proj split q, v, k and gate_up_proj split up, gate",
        _fused_split_swapped,
    ),
    (
        "window-off-by-one",
        "sliding window one key too wide",
        _ops_patch("attention", _window_off_by_one),
    ),
    (
        "window-ignored",
        "sliding window ignored (full causal attention)",
        _ops_patch("attention", _window_ignored),
    ),
):
    register(
        Defect(
            _id,
            _title,
            FAMILY_ROW,
            FORWARD,
            fmt=None,
            patch=_patch,
            right_falsifiers=FORWARD,
            requires=("aprlib.forward.model:Ops", "aprlib.forward.model:Transformer"),
        )
    )


def _streamed_bias_skipped(mp: Any) -> None:
    """A streamed forward whose layer 1 comes without its k bias (issue 26's defect)."""
    import torch

    from aprlib.forward.weights import StreamedWeights

    real = StreamedWeights.layer

    def layer(self: Any, i: int) -> Any:
        held = real(self, i)
        if i == 1 and held.self_attn.k_proj.bias is not None:
            with torch.no_grad():
                held.self_attn.k_proj.bias.zero_()
        return held

    mp.setattr(StreamedWeights, "layer", layer)


register(
    Defect(
        "streamed-layer-bias-skipped",
        "the streamed forward reads layer 1 without its k bias",
        "q/k/v bias dropped, doubled or mis-scaled",
        ("FALSIFY-FWD-004",),
        fmt=None,
        patch=_streamed_bias_skipped,
        right_falsifiers=("FALSIFY-FWD-004",),
        requires=("aprlib.forward.weights:StreamedWeights",),
    )
)
register(
    Defect(
        "logits-off-by-one-row",
        "the logits buffer shifted by one position",
        "GPU forward disagrees with CPU",
        FORWARD,
        fmt=None,
        patch=_logits_off_by_one,
        right_falsifiers=FORWARD,
        requires=("aprlib.forward.model:Transformer",),
    )
)


def _block_short_of_tail(mp: Any) -> None:
    """The RMSNorm launcher's block stops at the power of two below the row width: the
    tail columns are never loaded, normalised or stored (the mask covers nothing past it)."""
    import importlib

    module = importlib.import_module("provable_kernels.rms_norm")  # the package exports a function
    real = module.block

    def block(n: int, cap: int, floor: int = 16) -> int:
        full = real(n, cap, floor)
        return full // 2 if full > n and full // 2 >= floor else full

    mp.setattr(module, "block", block)


register(
    Defect(
        "kernel-tail-mask-missing",
        "RMSNorm kernel launched with a block short of the row's tail",
        "GPU forward disagrees with CPU",
        ("FALSIFY-KRMS-001",),
        fmt=None,
        patch=_block_short_of_tail,
        right_falsifiers=("FALSIFY-KRMS-001",),
        requires=("provable_kernels.rms_norm:block",),
        notes="runs under TRITON_INTERPRET=1 on a CPU, natively on a GPU",
    )
)


def _trace_by_position(mp: Any) -> None:
    """Trace comparison pairs points by position: attn.q.pre_bias meets post_bias."""
    import importlib

    trace = importlib.import_module("aprlib.forward.trace")  # branch issue11
    inj.swap_code(mp, trace.compare_traces, _compare_by_position)


def _compare_by_position(a, b):  # type: ignore[no-untyped-def]
    # runs with aprlib.forward.trace's globals (its code object replaces compare_traces's)
    return [
        PointComparison(p.name, p.scope, "compared", p, other)  # noqa: F821
        for p, other in zip(a.points, b.points, strict=False)
    ]


register(
    Defect(
        "trace-unlike-points",
        "trace statistics compared by position, so pre_bias meets post_bias",
        "statistics at different capture points",
        ("FALSIFY-TRACE-003",),
        fmt=None,
        patch=_trace_by_position,
        right_falsifiers=("FALSIFY-TRACE-003",),
        requires=("aprlib.forward.trace:compare_traces",),
    )
)
register(
    Defect(
        "tokenizer-merge-dropped",
        "a tokenizer with one BPE merge dropped in the converted file",
        "tokenizer differs across formats",
        TOKENIZER,
        model="qwen2-tokenizer",
        fmt="gguf",
        patch=inj.tokenizer_edit(inj.first_merge_dropped),
        requires=("aprlib.formats.tokenizer",),
        expect=("TOKENIZER_MISMATCH",),
        where=("merges: first differing merge 0:",),  # the dropped merge, by index and text
        notes="the source folder carries a byte-level BPE trained in the run",
    )
)


def _shapes_unchecked(mp: Any) -> None:
    """The loader takes the weights as the config says, whatever their shapes."""
    import importlib

    shapes = importlib.import_module("aprlib.compare.shapes")  # branch issue11
    inj.swap_code(mp, shapes.check_weights_match, _no_check)


def _no_check(cfg, shapes, path="<weights>"):  # type: ignore[no-untyped-def]
    return None


register(
    Defect(
        "arch-hard-coded",
        "the loader skips the weights-vs-config shape check (one architecture assumed)",
        "architecture hard-coded",
        ("FALSIFY-ARCH-001",),
        fmt=None,
        patch=_shapes_unchecked,
        right_falsifiers=("FALSIFY-ARCH-001",),
        requires=("aprlib.compare.shapes:check_weights_match",),
    )
)
register(
    Defect(
        "partial-run-erases-refutation",
        "a -k run promotes a falsifier that a full run refuted",
        "partial run erases a refutation",
        ("FALSIFY-LIFECYCLE-001", "FALSIFY-LIFECYCLE-002"),
        fmt=None,
        patch=lambda mp: _promote_on_skip(mp),
        right_falsifiers=("FALSIFY-LIFECYCLE-001",),
    )
)


def _promote_on_skip(mp: Any) -> None:
    """The lifecycle rule broken in place: a skipped run promotes PARTIAL to DISCHARGED.

    The function's code object is swapped, so every holder of ``promote`` (the plugin, and
    a falsifier's default argument) runs the defect, as a real bug in it would."""
    import types

    from provable.contracts import lifecycle

    real = lifecycle.promote
    copy = types.FunctionType(real.__code__, real.__globals__, "promote", real.__defaults__)
    mp.setattr(lifecycle, "_bench_real_promote", copy, raising=False)
    inj.swap_code(mp, real, _defective_promote)


def _defective_promote(current, outcome, passed_on=(), required_hosts=(), previously_passed_on=()):  # type: ignore[no-untyped-def]
    # runs with provable.contracts.lifecycle's globals (its code object replaces promote's)
    if outcome is Outcome.SKIPPED and current is FalsifierStatus.PARTIAL:  # noqa: F821
        return Promotion(FalsifierStatus.DISCHARGED, frozenset(previously_passed_on))  # noqa: F821
    return _bench_real_promote(  # noqa: F821
        current, outcome, passed_on, required_hosts, previously_passed_on
    )
