"""Architecture config: HF ``config.json`` ↔ APR metadata ↔ GGUF keys, field by field.

One table (``FIELDS``) says where each field lives in each format, so a field cannot be
carried one way and forgotten the other. HF configs come in two styles: published configs
carry ``rope_theta`` and ``torch_dtype`` at the top level; configs saved by transformers 5
carry ``dtype`` and ``rope_parameters: {rope_theta, rope_type}``. Both are read; the
published style is written.
"""

from __future__ import annotations

import json
import math
from dataclasses import InitVar, asdict, dataclass, field, fields
from typing import Any

import numpy as np

from aprlib.config.families import FAMILIES, GGUF_ARCHITECTURES, Family, family_of_gguf

#: family name -> the class transformers writes (every family in ``families``)
SUPPORTED_ARCHITECTURES = {f.name: f.hf_class for f in FAMILIES.values()}


@dataclass(frozen=True)
class ModelConfig:
    architecture: str  # a ``families`` name (GGUF's general.architecture spelling)
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    rms_norm_eps: float
    rope_theta: float
    max_position_embeddings: int
    tie_word_embeddings: bool
    head_dim: int | None = None
    rope_type: str = "neox"  # HF rotate_half pairs the two halves: NeoX style
    torch_dtype: str | None = None
    bos_token_id: int | None = None
    eos_token_id: int | None = None
    hidden_act: str = "silu"
    attention_bias: bool | None = None  # None: the family's default (``Family.attention_bias``)
    mlp_bias: bool = False
    sliding_window: int | None = None  # None: no sliding window in use
    #: per layer, "sliding_attention" (the window) or "full_attention" (transformers'
    #: ``layer_types``); None: every layer alike (windowed when ``sliding_window`` is set)
    layer_types: tuple[str, ...] | None = None
    #: queries scaled by query_pre_attn_scalar ** -0.5 (Gemma); None: head_dim ** -0.5
    query_pre_attn_scalar: float | None = None
    #: attention scores (before the mask) and the logits through cap * tanh(x / cap)
    #: (Gemma 2); None: not capped
    attn_logit_softcapping: float | None = None
    final_logit_softcapping: float | None = None
    #: RoPE base of the sliding layers, which turn without scaling (Gemma 3); None: every
    #: layer turns with ``rope_theta`` and ``rope_scaling``
    rope_local_theta: float | None = None
    #: a mixture of experts (``Family.moe``): experts in a sparse layer, experts each token
    #: runs, each expert's intermediate size, whether the k weights are renormalised to
    #: sum to 1; None where the family has no experts
    num_experts: int | None = None
    num_experts_per_tok: int | None = None
    moe_intermediate_size: int | None = None
    norm_topk_prob: bool | None = None
    #: layers whose MLP is dense (``intermediate_size``) in a mixture-of-experts model:
    #: transformers' ``mlp_only_layers`` and the layers off its ``decoder_sparse_step``,
    #: in one form; None: every layer sparse
    dense_layers: tuple[int, ...] | None = None
    #: normalised: rope_type ("llama3", "yarn", "linear", ...), factor, and where present
    #: low_freq_factor, high_freq_factor, original_max_position_embeddings
    rope_scaling: dict[str, Any] | None = field(default=None, hash=False)
    #: the rotated share of a head as a source states it (HF ``partial_rotary_factor``,
    #: GGUF ``{arch}.rope.dimension_count``): checked on construction, not kept (the
    #: forward rotates whole heads, so only a whole head is accepted)
    partial_rotary_factor: InitVar[Any] = None
    rope_dimension_count: InitVar[Any] = None

    def __post_init__(self, partial_rotary_factor: Any, rope_dimension_count: Any) -> None:
        """Every config, from every format and from code, is checked here: the one place
        (``check_physical``) that refuses values outside physical sense."""
        check_physical(self, partial_rotary_factor, rope_dimension_count)

    @property
    def attention_head_dim(self) -> int:
        return self.head_dim or self.hidden_size // self.num_attention_heads

    @property
    def family(self) -> Family:
        return FAMILIES[self.architecture]

    @property
    def gguf_architecture(self) -> str:
        """``general.architecture`` of this model's GGUF (and the prefix of its keys)."""
        return self.family.gguf_architecture

    @property
    def attention_scale(self) -> float:
        """What q·kᵀ is multiplied by before the softmax."""
        return float(self.query_pre_attn_scalar or self.attention_head_dim) ** -0.5

    def layer_moe(self, layer: int) -> bool:
        """Whether ``layer``'s MLP is a mixture of experts."""
        return self.family.moe and (self.dense_layers is None or layer not in self.dense_layers)

    def layer_window(self, layer: int) -> int | None:
        """The sliding window of ``layer`` (None: it attends to every earlier position)."""
        if self.layer_types is not None and self.layer_types[layer] != SLIDING:
            return None
        return self.sliding_window

    @property
    def qkv_bias(self) -> bool:
        """Whether q/k/v projections carry a bias (the family default when unstated)."""
        if self.attention_bias is not None:
            return self.attention_bias
        return self.family.attention_bias

    @property
    def o_proj_bias(self) -> bool:
        """Llama's and Qwen3's ``attention_bias`` cover o_proj too; Qwen2's never."""
        return self.family.o_proj_bias and self.qkv_bias

    @property
    def qk_norm(self) -> str | None:
        """RMSNorm on q and k before RoPE: "head" (over each head), or None."""
        return self.family.qk_norm

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelConfig:
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in data.items() if k in known}
        for name in ("layer_types", "dense_layers"):  # JSON has no tuples
            if isinstance(values.get(name), list):
                values[name] = tuple(values[name])
        return cls(**values)


SLIDING, FULL = "sliding_attention", "full_attention"  # transformers' layer_types names


def pattern_types(every: int, layers: int) -> list[str]:
    """A window pattern as a type per layer: of every ``every`` layers the last is full, the
    rest windowed (transformers' ``sliding_window_pattern``, llama.cpp's period form of
    ``sliding_window_pattern``; 0, as llama.cpp reads it, windows every layer)."""
    return [SLIDING if every == 0 or (i + 1) % every else FULL for i in range(layers)]


def canonical_window(
    window: Any, layer_types: Any, num_layers: Any
) -> tuple[Any, tuple[Any, ...] | None]:
    """(sliding_window, layer_types) in the one form each model has: no layer windowed →
    (None, None); every layer windowed → (window, None); else the window and a type per
    layer. Anything malformed passes through for ``check_physical`` to name."""
    if window is None:
        return None, None
    if not isinstance(layer_types, list | tuple):
        return window, layer_types
    types = tuple(layer_types)
    if len(types) != num_layers or not set(types) <= {SLIDING, FULL}:
        return window, types
    if SLIDING not in types:
        return None, None
    return window, None if FULL not in types else types


#: (our field, HF key, GGUF key with {arch} placeholder or None, converter from GGUF)
FIELDS: tuple[tuple[str, str, str | None], ...] = (
    ("vocab_size", "vocab_size", "{arch}.vocab_size"),
    ("hidden_size", "hidden_size", "{arch}.embedding_length"),
    ("intermediate_size", "intermediate_size", "{arch}.feed_forward_length"),
    ("num_hidden_layers", "num_hidden_layers", "{arch}.block_count"),
    ("num_attention_heads", "num_attention_heads", "{arch}.attention.head_count"),
    ("num_key_value_heads", "num_key_value_heads", "{arch}.attention.head_count_kv"),
    ("rms_norm_eps", "rms_norm_eps", "{arch}.attention.layer_norm_rms_epsilon"),
    ("rope_theta", "rope_theta", "{arch}.rope.freq_base"),
    ("max_position_embeddings", "max_position_embeddings", "{arch}.context_length"),
    ("tie_word_embeddings", "tie_word_embeddings", None),
    ("head_dim", "head_dim", "{arch}.attention.key_length"),
    ("bos_token_id", "bos_token_id", "tokenizer.ggml.bos_token_id"),
    ("eos_token_id", "eos_token_id", "tokenizer.ggml.eos_token_id"),
    ("torch_dtype", "torch_dtype", "aprlib.torch_dtype"),  # llama.cpp ignores it
    ("num_experts", "num_experts", "{arch}.expert_count"),
    ("num_experts_per_tok", "num_experts_per_tok", "{arch}.expert_used_count"),
    ("moe_intermediate_size", "moe_intermediate_size", "{arch}.expert_feed_forward_length"),
)


class ConfigError(ValueError):
    """A config that names an unsupported architecture or lacks a required field.

    ``field``: the config field at fault, where there is one (``rope_scaling.factor``),
    for the readers' typed errors to name."""

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field

    def __reduce__(self) -> tuple[object, ...]:
        return (self.__class__, (str(self), self.field))


class UnsupportedArchitecture(ConfigError):
    """A well-formed config of a family this library cannot run (listing still works)."""


class ConfigValueError(ConfigError):
    """A value outside its rule: ``{field} is {value!r}: {rule}``, one line."""

    def __init__(self, field: str, value: Any, rule: str) -> None:
        self.value = value
        self.rule = rule
        super().__init__(f"{field} is {value!r}: {rule}", field)

    def __reduce__(self) -> tuple[object, ...]:
        return (self.__class__, (self.field, self.value, self.rule))


#: field → (smallest, largest) for the positive integers of a config; a vocabulary of
#: 10**10 would make a converter build 10**10 placeholder tokens
INT_LIMITS: dict[str, tuple[int, int]] = {
    "vocab_size": (1, 1 << 22),
    "hidden_size": (1, 1 << 20),
    "intermediate_size": (1, 1 << 22),
    "num_hidden_layers": (1, 1 << 12),
    "num_attention_heads": (1, 1 << 12),
    "num_key_value_heads": (1, 1 << 12),
    "head_dim": (1, 1 << 14),
    "max_position_embeddings": (1, 1 << 30),
    "bos_token_id": (0, (1 << 22) - 1),
    "eos_token_id": (0, (1 << 22) - 1),
    "sliding_window": (1, 1 << 30),
    "num_experts": (1, 1 << 16),
    "num_experts_per_tok": (1, 1 << 16),
    "moe_intermediate_size": (1, 1 << 22),
}
REQUIRED_INTS = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers")
POSITIVE_FLOATS = ("rms_norm_eps", "rope_theta")


def _named_values(raw: dict[str, Any], source: str) -> dict[str, Any]:
    """Our field name → the raw value, for the keys ``raw`` holds."""
    if source == "gguf":
        arch = raw.get("general.architecture")
        if not isinstance(arch, str):
            return {}
        return {
            ours: raw[key.format(arch=arch)]
            for ours, _, key in FIELDS
            if key is not None and key.format(arch=arch) in raw
        }
    return {ours: raw[hf] for ours, hf, _ in FIELDS if hf in raw}


def _check_int(name: str, value: Any, optional: bool) -> None:
    if value is None and optional:
        return
    low, high = INT_LIMITS[name]
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ConfigValueError(name, value, f"must be an integer in [{low}, {high}]")


#: the fields a mixture-of-experts family needs and every other family leaves None
MOE_FIELDS = ("num_experts", "num_experts_per_tok", "moe_intermediate_size")


def check_experts(cfg: ModelConfig) -> None:
    """A mixture of experts states its experts (and runs no more per token than it has);
    a family without experts has none: a "llama" GGUF with ``expert_count`` is a Mixtral,
    which the dense forward would run without its experts."""
    stated = [name for name in MOE_FIELDS if getattr(cfg, name) is not None]
    if not cfg.family.moe:
        if stated:
            raise UnsupportedArchitecture(
                f"{cfg.architecture} with {stated[0]}={getattr(cfg, stated[0])}: a mixture of "
                f"experts under {cfg.architecture}'s name (Mixtral-style) is not supported",
                stated[0],
            )
        return
    missing = [name for name in MOE_FIELDS if name not in stated]
    if missing:
        raise ConfigValueError(missing[0], None, f"a {cfg.architecture} model needs it")
    experts, used = cfg.num_experts, cfg.num_experts_per_tok
    if used is not None and experts is not None and used > experts:
        raise ConfigValueError("num_experts_per_tok", used, f"must be <= num_experts {experts}")
    dense = cfg.dense_layers
    if dense is not None and not all(_is_int(i) and 0 <= i < cfg.num_hidden_layers for i in dense):
        raise ConfigValueError(
            "mlp_only_layers", list(dense), f"must be layer indices below {cfg.num_hidden_layers}"
        )


def _check_heads(heads: Any, kv_heads: Any, hidden: Any, head_dim: Any) -> None:
    """Key/value heads divide the heads; without a head_dim, the heads divide the width."""
    if heads is not None and kv_heads is not None and heads % kv_heads:
        raise ConfigValueError(
            "num_key_value_heads", kv_heads, f"must divide num_attention_heads {heads}"
        )
    if head_dim is None and heads is not None and hidden is not None and hidden % heads:
        raise ConfigValueError(
            "num_attention_heads",
            heads,
            f"must divide hidden_size {hidden} (there is no head_dim)",
        )


def check_config_values(raw: Any, source: str) -> None:
    """Types and ranges of a config's values, before any arithmetic uses them.

    ``source`` says how ``raw`` is keyed: ``"hf"`` (config.json), ``"apr"`` (APR
    metadata, our field names, which are HF's) or ``"gguf"`` (llama.cpp's key names).
    Only the fields present are checked; which are required is the reader's business.
    """
    where = {"hf": "config.json", "apr": "APR metadata config", "gguf": "GGUF metadata"}
    if source not in where:
        raise ValueError(f"unknown config source {source!r}")
    if not isinstance(raw, dict):
        raise ConfigError(f"{where[source]} is a {type(raw).__name__}, not an object")
    values = _named_values(raw, source)
    for name in INT_LIMITS:
        if name not in values:
            continue
        value = values[name]
        if name == "eos_token_id" and isinstance(value, list) and source != "gguf":
            for item in value:
                _check_int(name, item, optional=False)
            continue
        _check_int(name, value, optional=name not in (*REQUIRED_INTS, "num_attention_heads"))
    for name in POSITIVE_FLOATS:  # their ranges are check_physical's, on the config
        value = values.get(name)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int | float)):
            raise ConfigValueError(name, value, "must be a number")
    tie = values.get("tie_word_embeddings")
    if tie is not None and not isinstance(tie, bool):
        raise ConfigError(f"tie_word_embeddings is {tie!r}, not true/false", "tie_word_embeddings")
    for name in ("torch_dtype", "rope_type", "architecture", "model_type"):
        value = raw.get(name) if name != "torch_dtype" else values.get(name)
        if value is not None and not isinstance(value, str):
            raise ConfigError(f"{name} is {value!r}, not a string", name)
    for name in ("rope_parameters", "rope_scaling"):
        if raw.get(name) is not None and not isinstance(raw[name], dict):
            raise ConfigError(f"{name} is {raw[name]!r}, not an object", name)
    archs = raw.get("architectures")
    if archs is not None and (
        not isinstance(archs, list) or not all(isinstance(a, str) for a in archs)
    ):
        raise ConfigError(f"architectures is {archs!r}, not a list of names", "architectures")
    _check_heads(
        values.get("num_attention_heads"),
        values.get("num_key_value_heads"),
        values.get("hidden_size"),
        values.get("head_dim"),
    )


# --- physical sense: every numeric field that shapes the forward --------------------------

#: the longest context accepted (``max_position_embeddings``' limit): no rope scaling may
#: stretch an original context past it, and no count of rotations within one exceeds it
MAX_CONTEXT = INT_LIMITS["max_position_embeddings"][1]
#: GGUF holds rope_theta, rms_norm_eps and the scaling factor as float32: a value float32
#: cannot hold (or rounds to 0) would not be the same model in every format
FLOAT32_MAX = float(np.finfo(np.float32).max)
FLOAT32_TINY = float(np.finfo(np.float32).tiny)
#: YaRN's temperature knobs: transformers' rule gives 1 + 0.1 ln(factor) (at most 3.1 for
#: a factor accepted here); published configs state mscale 0.707 to 1
TEMPERATURE_MAX = 16.0
#: rope_scaling keys each rope type must state (transformers' required keys)
ROPE_REQUIRED = {
    "linear": ("factor",),
    "dynamic": ("factor",),
    "llama3": ("factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings"),
}
#: yarn's betas when a config leaves them out (also what 0 reads as: ``or 32``)
YARN_BETAS = {"beta_fast": 32.0, "beta_slow": 1.0}


def _finite(value: Any) -> float | None:
    """``value`` as a float when it is a finite number (not a bool), else None."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    try:
        number = float(value)
    except OverflowError:  # an integer past float's range
        return None
    return number if math.isfinite(number) else None


def _show(number: float) -> str:
    """A bound in words: ``8388608``, ``1e-05``, ``3.4028234663852886e+38``."""
    number = float(number)
    return str(int(number)) if number.is_integer() and abs(number) < 1e16 else repr(number)


def _real(
    name: str,
    value: Any,
    low: float,
    high: float,
    low_open: bool = False,
    high_open: bool = False,
    why: str = "",
) -> float:
    """``value`` as a float when it is a finite number in the interval, else
    ``ConfigValueError`` naming the field, the value and the interval."""
    number = _finite(value)
    if (
        number is None
        or (number <= low if low_open else number < low)
        or (number >= high if high_open else number > high)
    ):
        interval = (
            f"{'(' if low_open else '['}{_show(low)}, {_show(high)}{')' if high_open else ']'}"
        )
        raise ConfigValueError(name, value, f"must be a finite number in {interval}{why}")
    return number


def _whole(name: str, value: Any, low: int, high: int, why: str = "") -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ConfigValueError(name, value, f"must be an integer in [{low}, {high}]{why}")
    return value


def _given_reals(
    scaling: dict[str, Any], keys: tuple[str, ...], high: float, why: str
) -> dict[str, float]:
    """Each of ``keys`` that ``rope_scaling`` sets, checked as a real in (0, ``high``]."""
    return {
        key: _real(f"rope_scaling.{key}", scaling[key], 0, high, low_open=True, why=why)
        for key in keys
        if scaling.get(key) is not None
    }


def check_physical(
    cfg: ModelConfig, partial_rotary_factor: Any = None, rope_dimension_count: Any = None
) -> None:
    """Every numeric field that shapes the forward is finite, positive where physics says
    so, and consistent with the others; else ``ConfigValueError`` naming the first field
    that is not, with its value and the rule. ``ModelConfig`` runs it on construction, so
    every format's config (HF config.json, GGUF keys, APR metadata) and every config made
    in code passes here; the readers turn it into their typed error."""
    for name in INT_LIMITS:
        optional = name in ("head_dim", "bos_token_id", "eos_token_id", "sliding_window")
        _check_int(name, getattr(cfg, name), optional or name in MOE_FIELDS)
    check_experts(cfg)
    _check_heads(cfg.num_attention_heads, cfg.num_key_value_heads, cfg.hidden_size, cfg.head_dim)
    head = cfg.attention_head_dim
    if head % 2:
        raise ConfigValueError("head_dim", head, "must be even (RoPE turns pairs of dimensions)")
    _real("rope_theta", cfg.rope_theta, 1, FLOAT32_MAX, low_open=True)
    _real("rms_norm_eps", cfg.rms_norm_eps, FLOAT32_TINY, 1, high_open=True)
    if partial_rotary_factor is not None:
        share = _real("partial_rotary_factor", partial_rotary_factor, 0, 1, low_open=True)
        turned = head * share
        if not turned.is_integer() or turned % 2:
            raise ConfigValueError(
                "partial_rotary_factor",
                partial_rotary_factor,
                f"must turn an even whole number of head_dim {head}'s dimensions "
                f"(it turns {turned:g})",
            )
        if turned != head:
            raise ConfigValueError(
                "partial_rotary_factor",
                partial_rotary_factor,
                f"partial rotary ({turned:g} of head_dim {head}) is not implemented: "
                "the forward rotates whole heads",
            )
    if rope_dimension_count is not None:
        if (
            isinstance(rope_dimension_count, bool)
            or not isinstance(rope_dimension_count, int)
            or not 2 <= rope_dimension_count <= head
            or rope_dimension_count % 2
        ):
            raise ConfigValueError(
                "rope_dimension_count",
                rope_dimension_count,
                f"must be an even integer in [2, {head}] (head_dim {head})",
            )
        if rope_dimension_count != head:
            raise ConfigValueError(
                "rope_dimension_count",
                rope_dimension_count,
                f"partial rotary ({rope_dimension_count} of head_dim {head}) is not "
                "implemented: the forward rotates whole heads",
            )
    if cfg.rope_scaling is not None:
        _check_rope_scaling(cfg, cfg.rope_scaling, head)
    _check_layer_types(cfg)
    for name in (
        "query_pre_attn_scalar",
        "attn_logit_softcapping",
        "final_logit_softcapping",
        "rope_local_theta",
    ):
        value = getattr(cfg, name)
        if value is not None:
            _real(name, value, 0, FLOAT32_MAX, low_open=True)


def _check_layer_types(cfg: ModelConfig) -> None:
    """A type per layer, each sliding or full, and a window for the sliding ones."""
    types = cfg.layer_types
    if types is None:
        return
    if (
        not isinstance(types, tuple)
        or len(types) != cfg.num_hidden_layers
        or not set(types) <= {SLIDING, FULL}
    ):
        raise ConfigValueError(
            "layer_types",
            types,
            f"must name {SLIDING!r} or {FULL!r} for each of the {cfg.num_hidden_layers} layers",
        )
    if cfg.sliding_window is None and SLIDING in types:
        raise ConfigValueError("layer_types", types, "sliding layers need a sliding_window")


def _check_rope_scaling(cfg: ModelConfig, scaling: Any, head: int) -> None:
    """Rope scaling: the factors, original context, betas and temperature knobs."""
    if not isinstance(scaling, dict):
        raise ConfigValueError("rope_scaling", scaling, "must be an object")
    kind = scaling.get("rope_type")
    if not isinstance(kind, str):
        raise ConfigValueError(
            "rope_scaling.rope_type", kind, "must be a name (linear, dynamic, yarn, llama3, ...)"
        )
    for key in ROPE_REQUIRED.get(kind, ()):
        if scaling.get(key) is None:
            raise ConfigValueError(f"rope_scaling.{key}", None, f"must be stated for {kind}")
    original = scaling.get("original_max_position_embeddings")
    factor = scaling.get("factor")
    if original is not None and factor is None:  # the factor will be derived from it
        _whole("rope_scaling.original_max_position_embeddings", original, 1, MAX_CONTEXT)
    if factor is None and kind == "yarn":  # transformers derives it from the two contexts
        factor = yarn_factor(scaling, cfg.max_position_embeddings)
    # the factor is named first (a bad original context only loosens its bound)
    context, said = cfg.max_position_embeddings, "max_position_embeddings"
    if (
        not isinstance(original, bool)
        and isinstance(original, int)
        and 1 <= original <= MAX_CONTEXT
    ):
        context, said = original, "original context"
    if factor is not None:
        _real(
            "rope_scaling.factor",
            factor,
            1,
            MAX_CONTEXT / context,
            why=f" (factor x {said} {context} <= {MAX_CONTEXT} positions)",
        )
    if original is not None:
        _whole("rope_scaling.original_max_position_embeddings", original, 1, MAX_CONTEXT)
    bands = _given_reals(
        scaling,
        ("low_freq_factor", "high_freq_factor"),
        context,
        f" (a wavelength of {said} {context} / it >= 1 position)",
    )
    if len(bands) == 2 and bands["high_freq_factor"] <= bands["low_freq_factor"]:
        raise ConfigValueError(
            "rope_scaling.high_freq_factor",
            scaling["high_freq_factor"],
            f"must be > low_freq_factor {scaling['low_freq_factor']!r}",
        )
    betas = _given_reals(
        scaling, ("beta_fast", "beta_slow"), MAX_CONTEXT, " (rotations over the original context)"
    )
    if kind == "yarn":
        fast, slow = ({**YARN_BETAS, **betas}[k] for k in ("beta_fast", "beta_slow"))
        if fast < slow:
            key = "beta_slow" if "beta_slow" in betas else "beta_fast"
            raise ConfigValueError(
                f"rope_scaling.{key}",
                scaling[key],
                f"must keep beta_fast {fast:g} >= beta_slow {slow:g}",
            )
    if kind == "dynamic" and head <= 2:  # its base grows as ** (dim / (dim - 2))
        raise ConfigValueError("head_dim", head, "must be > 2 for dynamic scaling")
    if scaling.get("attention_factor") is not None:
        _real(
            "rope_scaling.attention_factor",
            scaling["attention_factor"],
            0,
            TEMPERATURE_MAX,
            low_open=True,
        )
    for key in ("mscale", "mscale_all_dim"):  # 0 reads as unset, as transformers reads it
        if scaling.get(key) is not None:
            _real(f"rope_scaling.{key}", scaling[key], 0, TEMPERATURE_MAX)
    for key in ("short_factor", "long_factor"):  # longrope's per-frequency lists
        values = scaling.get(key)
        if values is not None and (
            not isinstance(values, list) or not all(_finite(v) and v > 0 for v in values)
        ):
            raise ConfigValueError(
                f"rope_scaling.{key}", values, "must be a list of finite numbers > 0"
            )
    truncate = scaling.get("truncate")
    if truncate is not None and not isinstance(truncate, bool):
        raise ConfigValueError("rope_scaling.truncate", truncate, "must be true or false")


def _first_eos(value: Any) -> int | None:
    """HF configs may list several EOS ids; ``ModelConfig`` keeps the first (none if empty)."""
    if isinstance(value, list):
        return value[0] if value else None
    return value


def family_of_hf(model_type: Any, archs: list[Any]) -> str | None:
    """The family an HF config names: its model_type, its architectures, or an alias."""
    if model_type in FAMILIES:
        return str(model_type)
    for f in FAMILIES.values():
        if f.hf_class in archs:
            return f.name
    for f in FAMILIES.values():
        for alias, cls in f.aliases:
            if model_type == alias or cls in archs:
                return f.name
    return None


def from_hf(config: dict[str, Any]) -> ModelConfig:
    """Read an HF ``config.json`` dict (either style)."""
    check_config_values(config, "hf")
    archs = config.get("architectures") or []
    model_type = config.get("model_type")
    arch = family_of_hf(model_type, archs if isinstance(archs, list) else [])
    if arch is None:
        raise UnsupportedArchitecture(
            f"unsupported architecture (model_type={model_type!r}, architectures={archs}); "
            f"supported: {', '.join(SUPPORTED_ARCHITECTURES)}"
        )
    config = _global_rope(config, FAMILIES[arch])
    rope = config.get("rope_parameters") or config.get("rope_scaling") or {}
    rope_theta = config.get("rope_theta", rope.get("rope_theta"))
    missing = [
        k
        for k in (
            "vocab_size",
            "hidden_size",
            "intermediate_size",
            "num_hidden_layers",
            "num_attention_heads",
        )
        if k not in config
    ]
    if rope_theta is None:
        missing.append("rope_theta (or rope_parameters.rope_theta)")
    if missing or rope_theta is None:  # rope_theta None is already named in missing
        raise ConfigError(f"config lacks {', '.join(missing)}")
    return ModelConfig(
        architecture=arch,
        vocab_size=int(config["vocab_size"]),
        hidden_size=int(config["hidden_size"]),
        intermediate_size=int(config["intermediate_size"]),
        num_hidden_layers=int(config["num_hidden_layers"]),
        num_attention_heads=int(config["num_attention_heads"]),
        num_key_value_heads=int(config.get("num_key_value_heads", config["num_attention_heads"])),
        rms_norm_eps=float(
            config.get("rms_norm_eps", FAMILIES[arch].config_default("rms_norm_eps", 1e-6))
        ),
        rope_theta=float(rope_theta),
        max_position_embeddings=int(
            config.get("max_position_embeddings", FAMILIES[arch].max_positions)
        ),
        tie_word_embeddings=bool(config.get("tie_word_embeddings", FAMILIES[arch].tied_default)),
        head_dim=int(
            config.get("head_dim")
            or int(config["hidden_size"]) // int(config["num_attention_heads"])
        ),
        torch_dtype=config.get("torch_dtype", config.get("dtype")),
        bos_token_id=config.get("bos_token_id"),
        eos_token_id=_first_eos(config.get("eos_token_id")),
        # transformers 5 keeps it in rope_parameters; transformers 4 at the top level
        partial_rotary_factor=config.get(
            "partial_rotary_factor", rope.get("partial_rotary_factor")
        ),
        **hf_extras(config, arch),
    )


def _global_rope(config: dict[str, Any], family: Family) -> dict[str, Any]:
    """A config whose RoPE is per layer type (transformers 5's Gemma 3:
    ``rope_parameters: {"full_attention": {...}, "sliding_attention": {...}}``) with the
    full layers' parameters in the place every other config has them, and the sliding
    layers' base as ``rope_local_base_freq`` (the published configs' key)."""
    rope = config.get("rope_parameters")
    if not family.local_rope or not isinstance(rope, dict) or "full_attention" not in rope:
        return config
    out = {**config, "rope_parameters": rope["full_attention"]}
    local = rope.get("sliding_attention")
    if isinstance(local, dict):
        kind = local.get("rope_type", "default")
        if kind != "default":  # the forward turns sliding layers unscaled
            raise ConfigError(
                f"rope_parameters.sliding_attention.rope_type {kind!r}: the reference forward "
                "turns sliding layers with their base alone (default)",
                "rope_parameters",
            )
        if "rope_theta" in local:
            out.setdefault("rope_local_base_freq", local["rope_theta"])
    return out


def hf_cannot_say(cfg: ModelConfig) -> str | None:
    """Why an HF ``config.json`` cannot describe ``cfg`` (None when it can).

    transformers' Qwen2 always builds q/k/v biases and never MLP biases, whatever the
    config says: a Qwen2 without the first or with the second, written as an HF folder,
    would load with random biases (or drop trained ones), silently; Qwen3 never builds MLP
    biases."""
    family = cfg.family
    if family.fixed_qkv_bias and cfg.qkv_bias != family.attention_bias:
        return f"attention_bias={str(cfg.qkv_bias).lower()}"
    if not family.mlp_bias and cfg.mlp_bias:
        return "mlp_bias=true"
    return None


def to_hf(cfg: ModelConfig) -> dict[str, Any]:
    """The published style (what a hub ``config.json`` holds)."""
    out: dict[str, Any] = {
        "architectures": [SUPPORTED_ARCHITECTURES[cfg.architecture]],
        "model_type": cfg.architecture,
    }
    for ours, hf, _ in FIELDS:
        value = getattr(cfg, ours)
        if value is not None:
            out[hf] = value
    out[cfg.family.act_key] = cfg.hidden_act
    out["mlp_bias"] = cfg.mlp_bias
    if cfg.attention_bias is not None:
        out["attention_bias"] = cfg.attention_bias
    out.update(hf_window_keys(cfg))
    if cfg.rope_scaling is not None:
        out["rope_scaling"] = dict(cfg.rope_scaling)
        original = cfg.rope_scaling.get("original_max_position_embeddings")
        if original is not None and cfg.rope_scaling["rope_type"] in _ORIGINAL_CONTEXT_TYPES:
            # transformers reads the top-level key first (Phi-3's class defaults it to 4096)
            out["original_max_position_embeddings"] = original
    if cfg.family.query_scale:  # Gemma's keys
        out.update(
            query_pre_attn_scalar=cfg.query_pre_attn_scalar,
            attn_logit_softcapping=cfg.attn_logit_softcapping,
            final_logit_softcapping=cfg.final_logit_softcapping,
        )
    if cfg.family.local_rope:
        out["rope_local_base_freq"] = cfg.rope_local_theta
    if cfg.family.moe:
        out.update(
            norm_topk_prob=cfg.norm_topk_prob,
            decoder_sparse_step=1,
            mlp_only_layers=list(cfg.dense_layers or ()),
        )
    pad = cfg.family.config_default("pad_token_id")
    if isinstance(pad, int) and pad >= cfg.vocab_size:  # the class's default (Phi-3: 32000)
        out["pad_token_id"] = None  # would name no row: transformers refuses to build it
    return out


def hf_window_keys(cfg: ModelConfig) -> dict[str, Any]:
    """The config.json keys that give transformers this config's windows (Mistral's
    ``sliding_window``; Qwen's ``use_sliding_window`` with ``layer_types``)."""
    window = cfg.family.window
    if window is None:
        return {}
    if window == "every":
        return {"sliding_window": cfg.sliding_window}
    if window == "flag":  # Qwen3-MoE: every layer, when use_sliding_window says so
        flag = {"use_sliding_window": cfg.sliding_window is not None}
        return (
            flag if cfg.sliding_window is None else {**flag, "sliding_window": cfg.sliding_window}
        )
    if window == "pattern":  # every layer's type, stated (no pattern to infer it from)
        types = [SLIDING if cfg.layer_window(i) else FULL for i in range(cfg.num_hidden_layers)]
        # no sliding layer: the class still wants a window (no layer reads it)
        unread = cfg.family.config_default("sliding_window")
        return {"sliding_window": cfg.sliding_window or unread, "layer_types": types}
    out: dict[str, Any] = {"use_sliding_window": cfg.sliding_window is not None}
    if cfg.sliding_window is None:
        return out
    types = [SLIDING if cfg.layer_window(i) else FULL for i in range(cfg.num_hidden_layers)]
    out.update(sliding_window=cfg.sliding_window, layer_types=types)
    first = types.index(SLIDING)
    if FULL not in types[first:]:  # also right for readers that know no layer_types
        out["max_window_layers"] = first
    return out


def to_gguf_kv(cfg: ModelConfig) -> dict[str, Any]:
    """GGUF key/values following llama.cpp's conventions (``qwen2.block_count``, ...)."""
    arch = cfg.gguf_architecture
    kv: dict[str, Any] = {"general.architecture": arch}
    for ours, _, key in FIELDS:
        value = getattr(cfg, ours)
        if key is not None and value is not None:
            kv[key.format(arch=arch)] = value
    kv[f"{arch}.attention.value_length"] = cfg.attention_head_dim
    kv[f"{arch}.attention.key_length"] = cfg.attention_head_dim
    kv[f"{arch}.rope.dimension_count"] = cfg.attention_head_dim
    kv.update(gguf_extras(cfg))
    return kv


def from_gguf_kv(kv: dict[str, Any], has_output_tensor: bool) -> ModelConfig:
    """Inverse of ``to_gguf_kv``; GGUF has no tie flag: a missing ``output.weight`` ties."""
    kv = _window_zero_dropped(kv)
    check_config_values(kv, "gguf")
    arch = kv.get("general.architecture")
    if arch not in GGUF_ARCHITECTURES:
        raise ConfigError(f"unsupported general.architecture {arch!r}")
    family = family_of_gguf(arch, f"{arch}.attention.sliding_window" in kv)
    values: dict[str, Any] = {
        "architecture": family,
        "tie_word_embeddings": not has_output_tensor,
    }
    for ours, _, key in FIELDS:
        if key is not None and key.format(arch=arch) in kv:
            value = kv[key.format(arch=arch)]
            if isinstance(value, float):  # GGUF holds float32: restore the short decimal
                value = float(str(np.float32(value)))
            values[ours] = value
    if values.get("head_dim") is None and "num_attention_heads" in values:
        values["head_dim"] = values.get("hidden_size", 0) // values["num_attention_heads"]
    values.setdefault("max_position_embeddings", 2048)
    values.setdefault("num_key_value_heads", values.get("num_attention_heads"))
    values.update(extras_from_gguf_kv(kv, arch, FAMILIES[family]))
    values.update(_llama_cpp_meaning(FAMILIES[family], values))
    values["rope_dimension_count"] = kv.get(f"{arch}.rope.dimension_count")
    try:
        return ModelConfig(**values)
    except TypeError as exc:
        raise ConfigError(f"GGUF metadata lacks a required field: {exc}") from None


# --- the fields beyond the shapes: activation, biases, sliding window, rope scaling --------

#: llama.cpp's ``{arch}.rope.scaling.type`` values; other types (llama3) travel as JSON in
#: ``aprlib.rope_scaling`` (llama.cpp asserts on a scaling type it does not know)
GGUF_ROPE_SCALING_TYPES = frozenset({"linear", "yarn"})


def normalise_rope_scaling(raw: dict[str, Any] | None) -> dict[str, Any] | None:
    """HF's ``rope_scaling`` (``type`` or ``rope_type``) or v5 ``rope_parameters`` → ours.

    ``None`` when no scaling is in use (absent, or ``rope_type: default``), so that a
    config saved by transformers 5 and its published original compare equal.
    """
    if not raw:
        return None
    kind = raw.get("rope_type", raw.get("type"))
    if kind in (None, "default"):
        return None
    out: dict[str, Any] = {"rope_type": str(kind)}
    for key, value in raw.items():
        if key in ("rope_type", "type", "rope_theta"):
            continue
        out[key] = (
            float(value) if isinstance(value, int | float) and key.endswith("factor") else value
        )
    return out


#: rope types whose original context transformers takes from a top-level
#: ``original_max_position_embeddings`` first (``standardize_rope_params``)
_ORIGINAL_CONTEXT_TYPES = ("llama3", "yarn", "longrope")


def _integral(value: Any) -> Any:
    """A whole float (``4096.0``) as the integer it is; anything else as it is, for
    ``check_physical`` to name (``int()`` would truncate 4096.5 and fail on NaN)."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def hf_extras(config: dict[str, Any], arch: str = "llama") -> dict[str, Any]:
    """The ``ModelConfig`` fields beyond the shapes, from an HF config (either style).

    Read as transformers reads them: Qwen2's modules always carry q/k/v biases and never
    MLP biases, whatever ``attention_bias``/``mlp_bias`` keys its config.json may hold.
    """
    bias = config.get("attention_bias")
    scaling = normalise_rope_scaling(config.get("rope_scaling") or config.get("rope_parameters"))
    family = FAMILIES[arch]
    if scaling is not None and scaling["rope_type"] in dict(family.rope_type_aliases):
        scaling["rope_type"] = dict(family.rope_type_aliases)[scaling["rope_type"]]
    original = config.get("original_max_position_embeddings")
    if (
        scaling is not None
        and original is not None
        and scaling["rope_type"] in _ORIGINAL_CONTEXT_TYPES
    ):
        scaling["original_max_position_embeddings"] = original
    if config.get("use_bidirectional_attention"):
        raise UnsupportedArchitecture(
            "use_bidirectional_attention: true (an encoder's mask) is not a causal decoder"
        )
    return {
        "hidden_act": str(config.get(family.act_key, family.default_act)),
        "attention_bias": None if bias is None or family.fixed_qkv_bias else bool(bias),
        "mlp_bias": family.mlp_bias and bool(config.get("mlp_bias", False)),
        "rope_scaling": scaling,
        **hf_window(config, family),
        **hf_gemma_fields(config, family),
        **hf_moe_fields(config, family),
    }


def hf_moe_fields(config: dict[str, Any], family: Family) -> dict[str, Any]:
    """The experts of a mixture-of-experts config, as transformers' class reads them (its
    defaults where a key is left out); the dense layers in one form: those in
    ``mlp_only_layers`` and those off ``decoder_sparse_step``."""
    if not family.moe:
        return {}

    def get(key: str) -> Any:
        return config.get(key, family.config_default(key))

    layers = config.get("num_hidden_layers")
    step = get("decoder_sparse_step")
    only = get("mlp_only_layers") or []
    if not _is_int(step) or step < 1:
        raise ConfigValueError("decoder_sparse_step", step, "must be an integer >= 1")
    if not isinstance(only, list):
        raise ConfigValueError("mlp_only_layers", only, "must be a list of layer indices")
    count = layers if isinstance(layers, int) else 0
    dense = sorted({*only, *(i for i in range(count) if (i + 1) % step)})
    return {
        # transformers 5 saves Qwen3-MoE's num_experts as num_local_experts (Mixtral's key)
        "num_experts": config.get("num_experts", config.get("num_local_experts"))
        or family.config_default("num_experts"),
        "num_experts_per_tok": get("num_experts_per_tok"),
        "moe_intermediate_size": get("moe_intermediate_size"),
        "norm_topk_prob": bool(get("norm_topk_prob")),
        "dense_layers": tuple(dense) or None,
    }


def hf_gemma_fields(config: dict[str, Any], family: Family) -> dict[str, Any]:
    """Query scale, soft-caps and the sliding layers' RoPE base, for the families that read
    them (Gemma); other families' transformers classes read none of these keys, and Gemma
    3's keeps ``attn_logit_softcapping`` without applying it."""
    if not family.query_scale:
        return {}

    def get(key: str) -> Any:
        return config.get(key, family.config_default(key))

    out: dict[str, Any] = {
        "query_pre_attn_scalar": get("query_pre_attn_scalar"),
        "final_logit_softcapping": get("final_logit_softcapping"),
    }
    if family.attn_softcap:
        out["attn_logit_softcapping"] = get("attn_logit_softcapping")
    if family.local_rope:
        out["rope_local_theta"] = get("rope_local_base_freq")
    # floats but the query scalar, which transformers' strict config wants an integer
    return {
        k: float(v) if k != "query_pre_attn_scalar" and _is_int(v) else v for k, v in out.items()
    }


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def hf_window(config: dict[str, Any], family: Family) -> dict[str, Any]:
    """``sliding_window`` and ``layer_types`` as transformers reads them for ``family``:
    Mistral windows every layer; Qwen2 and Qwen3 only with ``use_sliding_window``, and then
    the layers ``layer_types`` names or, without it, those from ``max_window_layers`` on;
    Gemma the layers ``layer_types`` names or its pattern gives (Gemma 3's 5 of 6, or its
    ``sliding_window_pattern``; Gemma 2 every other); Llama has no window whatever the
    config holds. A window left out is the class's default (4096)."""
    if family.window is None:
        return {"sliding_window": None, "layer_types": None}
    window = config.get("sliding_window", family.config_default("sliding_window"))
    layers = config["num_hidden_layers"]
    types: Any = None
    if family.window == "pattern":
        types = config.get("layer_types")
        if types is None:
            every = family.window_pattern
            if family.pattern_key:
                every = config.get("sliding_window_pattern", every)
            if isinstance(every, bool) or not isinstance(every, int) or every < 1:
                raise ConfigValueError("sliding_window_pattern", every, "must be an integer >= 1")
            types = pattern_types(every, layers)
    elif family.window == "flag" and not config.get("use_sliding_window", False):
        return {"sliding_window": None, "layer_types": None}  # Qwen3-MoE: every layer or none
    elif family.window == "per_layer":
        types = config.get("layer_types")
        if not config.get("use_sliding_window", False):
            if isinstance(types, list) and SLIDING in types:  # transformers cannot run it
                raise ConfigError(
                    "layer_types names sliding layers but use_sliding_window is false "
                    "(transformers builds them with no window and fails)",
                    "layer_types",
                )
            return {"sliding_window": None, "layer_types": None}
        if types is None:
            first = config.get("max_window_layers", family.max_window_layers)
            if isinstance(first, bool) or not isinstance(first, int):
                raise ConfigValueError("max_window_layers", first, "must be an integer")
            types = [SLIDING if i >= first else FULL for i in range(layers)]
    if window is None:
        if isinstance(types, list | tuple) and SLIDING in types:  # transformers fails too
            raise UnsupportedArchitecture(
                f"{family.name} with sliding layers and no sliding_window "
                "(transformers cannot build their mask)"
            )
        return {"sliding_window": None, "layer_types": None}
    window, types = canonical_window(_integral(window), types, layers)
    return {"sliding_window": window, "layer_types": types}


#: GGUF key: the soft-caps the model does not apply, where llama.cpp has a default for them
SOFTCAPS_OFF = "aprlib.softcaps_off"


def gguf_extras(cfg: ModelConfig) -> dict[str, Any]:
    """llama.cpp's keys where it has one; ``aprlib.*`` for what llama.cpp has no key for."""
    arch = cfg.gguf_architecture
    kv: dict[str, Any] = {"aprlib.hidden_act": cfg.hidden_act, "aprlib.mlp_bias": cfg.mlp_bias}
    if cfg.attention_bias is not None:
        kv["aprlib.attention_bias"] = cfg.attention_bias
    if cfg.sliding_window is not None:
        kv[f"{arch}.attention.sliding_window"] = cfg.sliding_window
    elif cfg.family.window == "pattern":  # no layer windowed: said, or llama.cpp defaults one
        unread = cfg.family.config_default("sliding_window", 4096)
        kv[f"{arch}.attention.sliding_window"] = unread
    if cfg.layer_types is not None or cfg.family.window == "pattern":
        # llama.cpp's key, true for each windowed layer; stated for a pattern family even
        # when every layer is windowed, since its graph would otherwise apply its default
        kv[f"{arch}.attention.sliding_window_pattern"] = [
            cfg.layer_window(i) is not None for i in range(cfg.num_hidden_layers)
        ]
    if cfg.rope_local_theta is not None:
        kv[f"{arch}.rope.freq_base_swa"] = cfg.rope_local_theta
    for name in ("attn_logit_softcapping", "final_logit_softcapping"):
        if getattr(cfg, name) is not None:
            kv[f"{arch}.{name}"] = getattr(cfg, name)
    off = [name for name, _ in cfg.family.llama_cpp_defaults if name.endswith("softcapping")]
    off = [name for name in off if getattr(cfg, name) is None]
    if off:  # llama.cpp caps these by default: our reader must not (see the gaps)
        kv[SOFTCAPS_OFF] = off
    if cfg.query_pre_attn_scalar is not None:  # llama.cpp derives its own (see the gaps)
        kv["aprlib.query_pre_attn_scalar"] = cfg.query_pre_attn_scalar
    if cfg.norm_topk_prob is not None:
        kv[f"{arch}.expert_weights_norm"] = cfg.norm_topk_prob
    if cfg.dense_layers is not None:  # llama.cpp has no key: its graph makes every layer sparse
        kv["aprlib.dense_layers"] = list(cfg.dense_layers)
    scaling = cfg.rope_scaling
    if scaling is not None:
        if scaling["rope_type"] in GGUF_ROPE_SCALING_TYPES:
            kv[f"{arch}.rope.scaling.type"] = scaling["rope_type"]
            kv[f"{arch}.rope.scaling.factor"] = float(scaling["factor"])
            if "original_max_position_embeddings" in scaling:
                kv[f"{arch}.rope.scaling.original_context_length"] = int(
                    scaling["original_max_position_embeddings"]
                )
        kv["aprlib.rope_scaling"] = json.dumps(scaling, sort_keys=True)
    return kv


#: yarn parameters llama.cpp's loader does not read (measured: a GGUF with
#: ``rope.scaling.yarn_beta_fast`` set runs exactly as one without it)
_YARN_UNREAD = (
    "beta_fast",
    "beta_slow",
    "attention_factor",
    "mscale",
    "mscale_all_dim",
    "truncate",
)
#: transformers' values for the knobs a config may leave out (spelling one out changes
#: nothing); ``attention_factor`` has none here, it follows from the factor
YARN_DEFAULTS: dict[str, Any] = {"beta_fast": 32.0, "beta_slow": 1.0, "truncate": True}


def yarn_factor(scaling: dict[str, Any], max_positions: int) -> float:
    """YaRN's factor; transformers derives it from the contexts when it is null."""
    factor = scaling.get("factor")
    original = scaling.get("original_max_position_embeddings") or max_positions
    return float(factor) if factor is not None else max_positions / original


def yarn_attention_factor(scaling: dict[str, Any], max_positions: int) -> float:
    """YaRN's temperature on cos/sin: stated, or (transformers' rule) from the factor and
    ``mscale``/``mscale_all_dim``. One formula for the forward and for comparing configs."""
    if scaling.get("attention_factor") is not None:
        return float(scaling["attention_factor"])

    def mscale_of(scale: float, mscale: float = 1.0) -> float:
        return 1.0 if scale <= 1 else 0.1 * mscale * math.log(scale) + 1.0

    factor = yarn_factor(scaling, max_positions)
    mscale, mscale_all_dim = scaling.get("mscale"), scaling.get("mscale_all_dim")
    if mscale and mscale_all_dim:
        return mscale_of(factor, mscale) / mscale_of(factor, mscale_all_dim)
    return mscale_of(factor)


def yarn_meaning(scaling: dict[str, Any], max_positions: int) -> dict[str, Any]:
    """A YaRN scaling with transformers' defaults spelled out and its temperature made
    explicit, so that two configs that rotate alike compare equal."""
    out = {**YARN_DEFAULTS, **{k: v for k, v in scaling.items() if v is not None}}
    out["attention_factor"] = yarn_attention_factor(scaling, max_positions)
    out.pop("mscale", None)
    out.pop("mscale_all_dim", None)
    out["factor"] = yarn_factor(scaling, max_positions)
    out["original_max_position_embeddings"] = (
        scaling.get("original_max_position_embeddings") or max_positions
    )
    return out


#: architectures whose llama.cpp graph reads llama3 scaling as ``rope_freqs.weight``
#: (llama.cpp refuses a file holding a tensor its graph does not load)
LLAMA3_DIVISOR_ARCHS = frozenset({"llama"})


def llama_cpp_rope_gaps(cfg: ModelConfig) -> list[str]:
    """Where llama.cpp will not rotate as this config says, in words for the convert notes.

    Linear and yarn (at its default betas) carry over as keys, llama3 as ``rope_freqs.weight``
    where llama.cpp's graph reads one; dynamic NTK has no llama.cpp equivalent, llama3 none
    on other graphs, and yarn's other knobs are not read.
    """
    scaling = cfg.rope_scaling
    if scaling is None:
        return []
    kind = scaling["rope_type"]
    if kind == "dynamic":
        return [
            f"rope_scaling dynamic has no llama.cpp equivalent: llama.cpp rotates unscaled, "
            f"exact up to max_position_embeddings {cfg.max_position_embeddings:,} and "
            "different beyond it"
        ]
    if kind == "yarn":
        unread = [
            f"{k}={scaling[k]}"
            for k in _YARN_UNREAD
            if scaling.get(k) is not None and scaling[k] != YARN_DEFAULTS.get(k)
        ]
        if unread:
            return [
                f"rope_scaling yarn with {', '.join(unread)}: llama.cpp does not read these "
                "and uses its defaults, so its RoPE differs from the source's"
            ]
        return []
    if kind == "llama3" and cfg.gguf_architecture not in LLAMA3_DIVISOR_ARCHS:
        return [
            f"llama.cpp's {cfg.gguf_architecture} graph has no llama3 rope scaling: it will run "
            "this file with unscaled RoPE (the scaling is kept in aprlib.rope_scaling)"
        ]
    if kind in ("linear", "llama3"):
        return []
    if kind == "longrope":  # llama.cpp's phi3 graph reads factor tensors aprlib does not write
        return [
            "rope_scaling longrope: aprlib does not write llama.cpp's rope_factors_long/short "
            "tensors, so llama.cpp rotates this file unscaled"
        ]
    return [f"rope_scaling {kind} has no llama.cpp equivalent: llama.cpp rotates unscaled"]


def llama_cpp_graph_gaps(cfg: ModelConfig) -> list[str]:
    """Where llama.cpp's qwen2/llama graph computes other than this config says, beyond RoPE
    (``llama_cpp_rope_gaps``), in words for the convert notes: the file keeps what the
    source says; llama.cpp does not read it.

    Its MLP is SiLU-gated whatever the activation (seen: a gelu_pytorch_tanh Llama at NMSE
    0.028 against transformers), and its attention has no sliding-window mask (seen: a
    Qwen2 with use_sliding_window at NMSE 0.30 past the window).
    """
    gaps = []
    family, arch = cfg.family, cfg.gguf_architecture
    act = {"swish": "silu", "gelu_tanh": "gelu_pytorch_tanh"}.get(cfg.hidden_act, cfg.hidden_act)
    if act != family.llama_cpp_act:
        gaps.append(
            f"hidden_act {cfg.hidden_act}: llama.cpp's {arch} graph gates its MLP "
            f"with {family.llama_cpp_act}, so it will not compute this model's activation "
            "(kept in aprlib.hidden_act)"
        )
    if cfg.query_pre_attn_scalar is not None:
        theirs = (
            cfg.hidden_size / cfg.num_attention_heads
            if cfg.num_hidden_layers == family.llama_cpp_wide_scale_layers  # its "27B" rule
            else cfg.attention_head_dim
        )
        if float(cfg.query_pre_attn_scalar) != float(theirs):
            gaps.append(
                f"query_pre_attn_scalar {cfg.query_pre_attn_scalar:g}: llama.cpp's {arch} graph "
                f"scales queries by 1/sqrt({theirs:g}) from the model's size, not by the config"
            )
    for name, value in family.llama_cpp_defaults:
        if name.endswith("softcapping") and getattr(cfg, name) is None:
            gaps.append(
                f"{name} none: llama.cpp's {arch} graph caps at {value:g} whatever the file "
                "says (our tools read the file as uncapped)"
            )
    if cfg.attn_logit_softcapping is not None and not family.attn_softcap:
        gaps.append(
            f"attn_logit_softcapping {cfg.attn_logit_softcapping:g}: llama.cpp's {arch} graph "
            "does not cap attention scores"
        )
    if cfg.o_proj_bias and not cfg.family.llama_cpp_o_proj_bias:
        gaps.append(
            f"attention_bias: llama.cpp's {cfg.gguf_architecture} graph loads no o_proj bias; "
            "it will refuse this file (attn_output.bias is a tensor it does not expect)"
        )
    if not cfg.tie_word_embeddings and not family.llama_cpp_untied:
        gaps.append(
            f"tie_word_embeddings false: llama.cpp's {arch} graph uses the embedding as its "
            "head and loads no output.weight; it will refuse this file"
        )
    if cfg.tie_word_embeddings and not cfg.family.llama_cpp_tied:
        gaps.append(
            f"tie_word_embeddings: llama.cpp's {cfg.gguf_architecture} graph requires "
            "output.weight; it will refuse this file (a tied head has none)"
        )
    if cfg.sliding_window is not None and not family.llama_cpp_window:
        gaps.append(
            f"sliding_window {cfg.sliding_window}: llama.cpp's {cfg.gguf_architecture} graph "
            "has no sliding-window mask; it agrees with the source only up to "
            f"{cfg.sliding_window} tokens"
        )
    if family.moe and cfg.norm_topk_prob is False:
        gaps.append(
            f"norm_topk_prob false: llama.cpp's {arch} graph renormalises the "
            f"{cfg.num_experts_per_tok} routing weights of every token to sum to 1"
        )
    if family.moe and cfg.dense_layers is not None:
        gaps.append(
            f"mlp_only_layers {list(cfg.dense_layers)}: llama.cpp's {arch} graph makes every "
            "layer a mixture of experts; it will refuse this file (a dense layer has no "
            "ffn_gate_inp)"
        )
    return gaps


def _llama_cpp_meaning(family: Family, values: dict[str, Any]) -> dict[str, Any]:
    """What llama.cpp computes for the fields a GGUF leaves out (one from its converter):
    its activation, its defaults, and for Gemma its own query scale (1/sqrt(head_dim), or
    1/sqrt(hidden / heads) at the layer count of its "27B" rule)."""
    out: dict[str, Any] = {}
    if "hidden_act" not in values:
        out["hidden_act"] = family.llama_cpp_act
    for name, value in family.llama_cpp_defaults:
        if name not in values and name != "sliding_window":  # the window: _gguf_window
            out[name] = value
    if family.query_scale and "query_pre_attn_scalar" not in values:
        heads, hidden = values.get("num_attention_heads"), values.get("hidden_size")
        wide = values.get("num_hidden_layers") == family.llama_cpp_wide_scale_layers
        if isinstance(heads, int) and isinstance(hidden, int) and heads > 0:
            out["query_pre_attn_scalar"] = (
                hidden // heads if wide else values.get("head_dim") or hidden // heads
            )
    return out


def _window_zero_dropped(kv: dict[str, Any]) -> dict[str, Any]:
    """``kv`` without a ``sliding_window`` of 0: llama.cpp's phi3 converter writes 0 for "no
    window" (its comment: "use zero value of sliding_window to distinguish Phi-4"), and
    llama.cpp windows only where the value is above 0."""
    arch = kv.get("general.architecture")
    key = f"{arch}.attention.sliding_window"
    if isinstance(arch, str) and type(kv.get(key)) is int and kv[key] == 0:
        return {k: v for k, v in kv.items() if k != key}
    return kv


def _gguf_window(kv: dict[str, Any], arch: str, family: Family) -> dict[str, Any]:
    """The window and its layers as llama.cpp reads them for ``family``: the pattern key (a
    bool per layer, or its period form) or, for a pattern family, its default pattern; a
    window left out is its default where it has one (Gemma 2: 4096)."""
    window = kv.get(f"{arch}.attention.sliding_window")
    if window is None:
        window = family.llama_cpp_default("sliding_window")
    if window is None:
        return {}
    if family.window is None:
        raise UnsupportedArchitecture(
            f"a {arch} GGUF with {arch}.attention.sliding_window (a later family that llama.cpp "
            f"runs as {arch}, such as OLMo 3) is not supported"
        )
    layers = kv.get(f"{arch}.block_count")
    key = f"{arch}.attention.sliding_window_pattern"
    pattern = kv.get(key)
    if pattern is None and family.window == "pattern":
        pattern = family.window_pattern  # llama.cpp's load_swa_pattern default
    if pattern is None:
        return {"sliding_window": _integral(window)}
    if not isinstance(layers, int) or isinstance(layers, bool):
        return {"sliding_window": _integral(window)}  # block_count is named elsewhere
    if isinstance(pattern, int) and not isinstance(pattern, bool) and 0 <= pattern < 1 << 32:
        # the period form: of every ``pattern`` layers the last is full (0: all windowed)
        pattern = [kind == SLIDING for kind in pattern_types(pattern, layers)]
    if (
        not isinstance(pattern, list)
        or len(pattern) != layers
        or not all(isinstance(on, bool) for on in pattern)
    ):
        raise ConfigError(f"{key} must be a bool per layer ({layers}) or a period", "layer_types")
    if family.window in ("every", "flag") and not all(pattern):
        raise ConfigError(
            f"{key} leaves layers unwindowed: {family.name} windows every layer", "layer_types"
        )
    window, types = canonical_window(
        _integral(window), [SLIDING if on else FULL for on in pattern], layers
    )
    return {"sliding_window": window, "layer_types": types}


def extras_from_gguf_kv(kv: dict[str, Any], arch: str, family: Family) -> dict[str, Any]:
    """Inverse of ``gguf_extras``; also reads llama.cpp's own rope-scaling keys alone. Keys
    a family's llama.cpp graph does not read are not read for it either."""
    out: dict[str, Any] = _gguf_window(kv, arch, family)
    if "aprlib.hidden_act" in kv:
        out["hidden_act"] = str(kv["aprlib.hidden_act"])
    if "aprlib.mlp_bias" in kv:
        out["mlp_bias"] = bool(kv["aprlib.mlp_bias"])
    if "aprlib.attention_bias" in kv:
        out["attention_bias"] = bool(kv["aprlib.attention_bias"])
    read = []
    if family.local_rope:
        read.append((f"{arch}.rope.freq_base_swa", "rope_local_theta"))
    if family.attn_softcap:
        read.append((f"{arch}.attn_logit_softcapping", "attn_logit_softcapping"))
    if family.query_scale:
        read.append((f"{arch}.final_logit_softcapping", "final_logit_softcapping"))
        read.append(("aprlib.query_pre_attn_scalar", "query_pre_attn_scalar"))
    for key, name in read:
        if key in kv:
            value = kv[key]
            out[name] = float(str(np.float32(value))) if isinstance(value, float) else value
    if family.moe:  # llama.cpp's qwen3moe graph renormalises whatever the key says
        norm = kv.get(f"{arch}.expert_weights_norm", True)
        if not isinstance(norm, bool):
            raise ConfigValueError("norm_topk_prob", norm, "must be a bool")
        out["norm_topk_prob"] = norm
        dense = kv.get("aprlib.dense_layers")
        if dense is not None:
            if not isinstance(dense, list):
                raise ConfigValueError("mlp_only_layers", dense, "must be a list of layer indices")
            out["dense_layers"] = tuple(dense) or None
    off = kv.get(SOFTCAPS_OFF)
    for name in off if isinstance(off, list) else []:
        if name in ("attn_logit_softcapping", "final_logit_softcapping"):
            out[name] = None  # the model caps nothing: llama.cpp's default is not its
    if "aprlib.rope_scaling" in kv:
        try:
            out["rope_scaling"] = normalise_rope_scaling(json.loads(kv["aprlib.rope_scaling"]))
        except (TypeError, ValueError, AttributeError) as exc:
            raise ConfigError(
                f"aprlib.rope_scaling is not a JSON object: {exc}", "rope_scaling"
            ) from None
    elif kv.get(f"{arch}.rope.scaling.type", "none") != "none":
        factor = kv.get(f"{arch}.rope.scaling.factor", 1.0)
        if isinstance(factor, float):  # GGUF holds float32: restore the short decimal
            factor = float(str(np.float32(factor)))
        scaling: dict[str, Any] = {
            "rope_type": str(kv[f"{arch}.rope.scaling.type"]),
            "factor": factor,
        }
        if f"{arch}.rope.scaling.original_context_length" in kv:
            scaling["original_max_position_embeddings"] = _integral(
                kv[f"{arch}.rope.scaling.original_context_length"]
            )
        out["rope_scaling"] = scaling
    return out


def gguf_key(field: str | None, kv: dict[str, Any]) -> str | None:
    """The GGUF key a config field was read from (None where no key of ``kv`` holds it),
    so that a GGUF reader's error names the key the file holds."""
    arch = kv.get("general.architecture")
    if field is None or not isinstance(arch, str):
        return None
    keys = {ours: key.format(arch=arch) for ours, _, key in FIELDS if key is not None}
    keys["sliding_window"] = f"{arch}.attention.sliding_window"
    keys["layer_types"] = f"{arch}.attention.sliding_window_pattern"
    keys["rope_dimension_count"] = f"{arch}.rope.dimension_count"
    if field.startswith("rope_scaling") and "aprlib.rope_scaling" in kv:
        return "aprlib.rope_scaling"
    keys["rope_scaling.factor"] = f"{arch}.rope.scaling.factor"
    keys["rope_scaling.original_max_position_embeddings"] = (
        f"{arch}.rope.scaling.original_context_length"
    )
    if field.startswith("rope_scaling"):
        return keys.get(field) if keys.get(field) in kv else f"{arch}.rope.scaling.type"
    return keys[field] if keys.get(field) in kv else None


def gguf_config_error(exc: ConfigError, kv: dict[str, Any]) -> tuple[str, str | None]:
    """(the one line, the GGUF key it names as its field) for a config error in a GGUF's
    metadata; the line keeps the config's own name for the field (``rope_theta is inf``)."""
    return str(exc), gguf_key(exc.field, kv) or exc.field


# --- presets: the published configs, read through from_hf ---------------------------------


def qwen2_0_5b() -> ModelConfig:
    """Qwen2.5-0.5B (tied head)."""
    from aprlib.config import presets

    return from_hf(presets.QWEN2_5_0_5B)


def qwen2_1_5b() -> ModelConfig:
    """Qwen2.5-1.5B (tied head)."""
    from aprlib.config import presets

    return from_hf(presets.QWEN2_5_1_5B)


def qwen2_7b() -> ModelConfig:
    """Qwen2.5-7B (untied head)."""
    from aprlib.config import presets

    return from_hf(presets.QWEN2_5_7B)


def llama3_2_1b() -> ModelConfig:
    """Llama-3.2-1B (tied head, llama3 rope scaling)."""
    from aprlib.config import presets

    return from_hf(presets.LLAMA3_2_1B)
