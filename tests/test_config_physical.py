"""Model configs within physical sense (issue 21, item 9 and build item 4).

Seen: HF ``rope_scaling`` ``{linear, factor: NaN}``, ``{llama3, factor: 0,
original_max_position_embeddings: 0}`` and ``{llama3, factor: 1e308}`` loaded and ``apr
logits`` exited 0 with logits up to 0.41 away from the unscaled model; a GGUF with
``llama.rope.dimension_count=100000`` against head_dim 16 passed ``apr logits``, ``apr
trace`` and ``apr qa``. Every numeric field that shapes a forward is now checked at load,
in every format, in one place (``aprlib.config.modelconfig.check_physical``, run by ``ModelConfig``
itself), with one typed line naming the field and the value.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path
from typing import Any

import pytest
from gguf import GGUFReader, GGUFValueType, GGUFWriter
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from aprlib import convert, open_model
from aprlib.config import presets
from aprlib.config.modelconfig import ConfigError, ModelConfig, from_gguf_kv, from_hf, to_gguf_kv
from aprlib.errors import AprFormatError, GgufFormatError, ModelFileError
from aprlib.formats.apr import AprFile, AprWriter, PlannedTensor
from falsifiers.hostile_files import apr_inline, assert_one_line_error, run_apr

NAN, INF = float("nan"), float("inf")

#: the three rope scalings of the issue, as a config.json states them
LLAMA3 = {"low_freq_factor": 1.0, "high_freq_factor": 4.0}
ISSUE_SCALINGS: dict[str, tuple[dict[str, Any], str, str]] = {
    "linear-nan": ({"rope_type": "linear", "factor": NAN}, "rope_scaling.factor", "nan"),
    "llama3-zero": (
        {"rope_type": "llama3", "factor": 0, "original_max_position_embeddings": 0, **LLAMA3},
        "rope_scaling.factor",
        "0.0",
    ),
    "llama3-1e308": (
        {
            "rope_type": "llama3",
            "factor": 1e308,
            "original_max_position_embeddings": 8192,
            **LLAMA3,
        },
        "rope_scaling.factor",
        "1e+308",
    ),
}
YARN = {
    "rope_type": "yarn",
    "factor": 4.0,
    "original_max_position_embeddings": 32,
    "beta_fast": 32.0,
    "beta_slow": 1.0,
    "mscale": 1.0,
    "mscale_all_dim": 1.0,
    "attention_factor": 1.1,
}
LLAMA3_OK = {
    "rope_type": "llama3",
    "factor": 8.0,
    "low_freq_factor": 1.0,
    "high_freq_factor": 4.0,
    "original_max_position_embeddings": 32,
}
COMMANDS = (
    ["logits", "--tokens", "1,2,3"],
    ["trace", "--tokens", "1,2,3"],
    ["qa", "--no-parity"],
)


# --- tiny files in every format ------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny(tiny_factory, tmp_path_factory) -> dict[str, Path]:
    """A tiny Llama (head_dim 16) as an HF folder (its config.json in the published
    style: a top-level ``rope_theta``), a GGUF and an APR file."""
    src = tiny_factory("llama").folder
    out = tmp_path_factory.mktemp("physical")
    folder = out / "hf"
    folder.mkdir()
    shutil.copy(src / "model.safetensors", folder / "model.safetensors")
    config = json.loads((src / "config.json").read_text())
    config["rope_theta"] = config.pop("rope_parameters")["rope_theta"]
    (folder / "config.json").write_text(json.dumps(config))
    convert(folder, out / "tiny.gguf")
    convert(folder, out / "tiny.apr")
    return {"hf": folder, "gguf": out / "tiny.gguf", "apr": out / "tiny.apr"}


#: the tiny Llama read as a Mistral (the same tensors), whose window transformers reads
MISTRAL = {"model_type": "mistral", "architectures": ["MistralForCausalLM"]}


def hf_with(tiny: dict[str, Path], dst: Path, **changes: Any) -> Path:
    """The tiny HF folder with config.json keys replaced (None: removed)."""
    dst.mkdir(parents=True, exist_ok=True)
    shutil.copy(tiny["hf"] / "model.safetensors", dst / "model.safetensors")
    config = json.loads((tiny["hf"] / "config.json").read_text())
    for key, value in changes.items():
        if value is None:
            config.pop(key, None)
        else:
            config[key] = value
    (dst / "config.json").write_text(json.dumps(config))  # NaN and Infinity as Python writes
    return dst


def gguf_with(
    src: Path, dst: Path, values: dict[str, tuple[Any, GGUFValueType]], drop: tuple[str, ...] = ()
) -> Path:
    """``src`` with GGUF keys set (value, type) and others dropped."""
    r = GGUFReader(src)
    w = GGUFWriter(str(dst), str(r.fields["general.architecture"].contents()))
    for key, f in r.fields.items():
        if key.startswith("GGUF.") or key == "general.architecture" or key in drop:
            continue
        if key in values:
            continue
        w.add_key_value(
            key, f.contents(), f.types[0], sub_type=f.types[-1] if len(f.types) > 1 else None
        )
    for key, (value, kind) in values.items():
        w.add_key_value(key, value, kind)
    for t in r.tensors:
        w.add_tensor(t.name, t.data, raw_shape=t.data.shape, raw_dtype=t.tensor_type)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return dst


def apr_with(src: Path, dst: Path, **changes: Any) -> Path:
    """``src`` with keys of its metadata ``config`` replaced (None: removed)."""
    f = AprFile(src)
    try:
        meta = dict(f.metadata)
        config = dict(meta["config"])
        for key, value in changes.items():
            if value is None:
                config.pop(key, None)
            else:
                config[key] = value
        meta["config"] = config
        plan = [PlannedTensor(n, e.dtype, e.shape) for n, e in f.entries.items()]
        with AprWriter(dst, meta, plan) as w:
            for p in plan:
                w.write(p.name, f.raw(p.name))
    finally:
        f.close()
    return dst


def assert_refused(path: Path, field: str, said: str, error: type = ModelFileError) -> str:
    """Loading refuses with one typed error naming ``field``; every command exits 1 with
    that one line and no traceback. The line is returned."""
    with pytest.raises(error) as info:
        open_model(path)
    line = str(info.value)
    assert info.value.field == field, line
    assert said in line and "\n" not in line, line
    return line


def assert_commands_refuse(capsys: Any, path: Path, *needles: str) -> None:
    for command in COMMANDS:
        rc, err = apr_inline(capsys, command[0], str(path), *command[1:])
        assert rc == 1, (command, rc, err)
        assert err.startswith("apr: error: ") and "Traceback" not in err, err
        for needle in needles:
            assert needle in err, (command, needle, err)


# --- the issue's cases ---------------------------------------------------------------------


@pytest.mark.parametrize("case", list(ISSUE_SCALINGS))
def test_issue_rope_scalings_in_config_json_are_one_typed_line(tiny, tmp_path, capsys, case):
    scaling, field, value = ISSUE_SCALINGS[case]
    folder = hf_with(tiny, tmp_path / case, rope_scaling=scaling)
    said = f"{field} is {value}:"
    line = assert_refused(folder, field, said)
    assert "config.json" in line, line
    assert_commands_refuse(capsys, folder, said, "config.json")


def test_issue_gguf_rope_dimension_count_against_head_dim_is_one_typed_line(tiny, tmp_path, capsys):
    bad = gguf_with(
        tiny["gguf"],
        tmp_path / "dims.gguf",
        {"llama.rope.dimension_count": (100000, GGUFValueType.UINT32)},
    )
    said = "rope_dimension_count is 100000:"
    line = assert_refused(bad, "llama.rope.dimension_count", said, GgufFormatError)
    assert "head_dim 16" in line, line
    assert_commands_refuse(capsys, bad, said)


@pytest.mark.parametrize("case", list(ISSUE_SCALINGS))
def test_issue_rope_scalings_in_apr_metadata_are_one_typed_line(tiny, tmp_path, capsys, case):
    scaling, field, _ = ISSUE_SCALINGS[case]
    bad = apr_with(tiny["apr"], tmp_path / f"{case}.apr", rope_scaling=scaling)
    said = f"{field} is {scaling['factor']!r}:"  # APR keeps the value as it was written
    assert_refused(bad, f"metadata.config.{field}", said, AprFormatError)
    assert_commands_refuse(capsys, bad, said)


@pytest.mark.parametrize("case", list(ISSUE_SCALINGS))
def test_issue_rope_scalings_in_gguf_aprlib_key_are_one_typed_line(tiny, tmp_path, capsys, case):
    scaling, field, value = ISSUE_SCALINGS[case]
    bad = gguf_with(
        tiny["gguf"],
        tmp_path / f"{case}.gguf",
        {"aprlib.rope_scaling": (json.dumps(scaling), GGUFValueType.STRING)},
    )
    said = f"{field} is {value}:"
    assert_refused(bad, "aprlib.rope_scaling", said, GgufFormatError)
    assert_commands_refuse(capsys, bad, said)


@pytest.mark.parametrize(
    ("values", "field", "said"),
    [
        (
            {
                "llama.rope.scaling.type": ("linear", GGUFValueType.STRING),
                "llama.rope.scaling.factor": (NAN, GGUFValueType.FLOAT32),
            },
            "llama.rope.scaling.factor",
            "rope_scaling.factor is nan:",
        ),
        (
            {
                "llama.rope.scaling.type": ("yarn", GGUFValueType.STRING),
                "llama.rope.scaling.factor": (4.0, GGUFValueType.FLOAT32),
                "llama.rope.scaling.original_context_length": (0, GGUFValueType.UINT32),
            },
            "llama.rope.scaling.original_context_length",
            "rope_scaling.original_max_position_embeddings is 0:",
        ),
        (
            {"llama.rope.freq_base": (INF, GGUFValueType.FLOAT32)},
            "llama.rope.freq_base",
            "rope_theta is inf:",
        ),
        (
            {"llama.attention.layer_norm_rms_epsilon": (0.0, GGUFValueType.FLOAT32)},
            "llama.attention.layer_norm_rms_epsilon",
            "rms_norm_eps is 0.0:",
        ),
        (  # 0 is llama.cpp's converters' "no window" (tests/test_phi3.py); past 2**30 is not
            {"llama.attention.sliding_window": (1 << 31, GGUFValueType.UINT32)},
            "llama.attention.sliding_window",
            "sliding_window is 2147483648:",
        ),
    ],
    ids=["linear-nan", "yarn-context-0", "theta-inf", "eps-0", "window-2**31"],
)
def test_bad_values_in_llama_cpp_gguf_keys_are_one_typed_line(
    tiny, tmp_path, capsys, values, field, said
):
    bad = gguf_with(tiny["gguf"], tmp_path / "bad.gguf", values, drop=("aprlib.rope_scaling",))
    assert_refused(bad, field, said, GgufFormatError)
    assert_commands_refuse(capsys, bad, said)


def test_a_refused_config_is_one_line_from_a_fresh_process_too(tiny, tmp_path):
    """The same in a child process: exit 1, one ``apr: error:`` line, no traceback."""
    bad = gguf_with(
        tiny["gguf"],
        tmp_path / "dims.gguf",
        {"llama.rope.dimension_count": (100000, GGUFValueType.UINT32)},
    )
    run = run_apr("qa", str(bad), "--no-parity", timeout=120)
    assert_one_line_error(run, "llama.rope.dimension_count", "rope_dimension_count is 100000:")


# --- consistency between fields ------------------------------------------------------------

CONSISTENCY: dict[str, tuple[dict[str, Any], str, str]] = {
    "llama3 high = low": (
        {"rope_scaling": {**LLAMA3_OK, "high_freq_factor": 1.0}},
        "rope_scaling.high_freq_factor",
        "rope_scaling.high_freq_factor is 1.0: must be > low_freq_factor 1.0",
    ),
    "llama3 without low_freq_factor": (
        {"rope_scaling": {k: v for k, v in LLAMA3_OK.items() if k != "low_freq_factor"}},
        "rope_scaling.low_freq_factor",
        "rope_scaling.low_freq_factor is None: must be stated for llama3",
    ),
    "llama3 factor past the longest context": (
        {"rope_scaling": {**LLAMA3_OK, "factor": 2.0**26}},
        "rope_scaling.factor",
        "rope_scaling.factor is 67108864.0: must be a finite number in [1, 33554432]",
    ),
    "yarn beta_fast < beta_slow": (
        {"rope_scaling": {**YARN, "beta_fast": 1, "beta_slow": 32}},
        "rope_scaling.beta_slow",
        "rope_scaling.beta_slow is 32: must keep beta_fast 1 >= beta_slow 32",
    ),
    "yarn truncate not a flag": (
        {"rope_scaling": {**YARN, "truncate": "no"}},
        "rope_scaling.truncate",
        "rope_scaling.truncate is 'no': must be true or false",
    ),
    "linear without a factor": (
        {"rope_scaling": {"rope_type": "linear"}},
        "rope_scaling.factor",
        "rope_scaling.factor is None: must be stated for linear",
    ),
    "linear factor below 1": (
        {"rope_scaling": {"rope_type": "linear", "factor": 0.5}},
        "rope_scaling.factor",
        "rope_scaling.factor is 0.5: must be a finite number in [1,",
    ),
    "rope_theta 1": ({"rope_theta": 1.0}, "rope_theta", "rope_theta is 1.0: must be"),
    "rms_norm_eps 1.5": ({"rms_norm_eps": 1.5}, "rms_norm_eps", "rms_norm_eps is 1.5: must be"),
    "odd head_dim": ({"head_dim": 15}, "head_dim", "head_dim is 15: must be even"),
    "sliding_window 4096.5": (
        {"sliding_window": 4096.5, **MISTRAL},
        "sliding_window",
        "sliding_window is 4096.5: must be an integer",
    ),
    "kv heads not dividing heads": (
        {"num_key_value_heads": 3},
        "num_key_value_heads",
        "num_key_value_heads is 3: must divide num_attention_heads 4",
    ),
}


@pytest.mark.parametrize("case", list(CONSISTENCY))
def test_fields_that_contradict_each_other_are_one_typed_line(tiny, tmp_path, case):
    changes, field, said = CONSISTENCY[case]
    assert_refused(hf_with(tiny, tmp_path / "m", **changes), field, said)


# --- the rotated share of a head -----------------------------------------------------------


@pytest.mark.parametrize(
    ("count", "said"),
    [
        (0, "must be an even integer in [2, 16]"),
        (15, "must be an even integer in [2, 16]"),
        (18, "must be an even integer in [2, 16]"),
        (8, "partial rotary"),
    ],
)
def test_gguf_rope_dimension_count_must_be_the_head(tiny, tmp_path, count, said):
    bad = gguf_with(
        tiny["gguf"],
        tmp_path / "dims.gguf",
        {"llama.rope.dimension_count": (count, GGUFValueType.UINT32)},
    )
    assert_refused(bad, "llama.rope.dimension_count", said, GgufFormatError)


@pytest.mark.parametrize(
    ("factor", "said"),
    [
        (NAN, "partial_rotary_factor is nan:"),
        (0.0, "partial_rotary_factor is 0.0:"),
        (-0.5, "partial_rotary_factor is -0.5:"),
        (2.0, "partial_rotary_factor is 2.0:"),
        (0.3, "partial_rotary_factor is 0.3:"),  # 4.8 dimensions
        (0.5, "partial rotary"),
    ],
)
def test_partial_rotary_factor_must_be_the_whole_head(tiny, tmp_path, factor, said):
    folder = hf_with(tiny, tmp_path / "m", partial_rotary_factor=factor)
    assert_refused(folder, "partial_rotary_factor", said)


def test_a_whole_head_rotated_loads_in_every_form(tiny, tmp_path):
    folder = hf_with(tiny, tmp_path / "m", partial_rotary_factor=1.0)
    good = gguf_with(
        tiny["gguf"],
        tmp_path / "ok.gguf",
        {"llama.rope.dimension_count": (16, GGUFValueType.UINT32)},
    )
    for path in (folder, good):
        with open_model(path) as m:
            assert m.config is not None and m.config.attention_head_dim == 16


# --- the property: a value outside physical sense never loads ------------------------------

BAD_FLOATS = [NAN, INF, -INF, 0.0, -1.0, -1e-300, 1e300]
BAD_INTS = [0, -1, -(2**40), 2**40, NAN, INF, 1.5]
#: (where in config.json, the scaling it sits in or None, whether it is an integer field)
CONFIG_FIELDS: list[tuple[str, dict[str, Any] | None, bool]] = [
    ("rope_theta", None, False),
    ("rms_norm_eps", None, False),
    ("max_position_embeddings", None, True),
    ("sliding_window", None, True),
    ("partial_rotary_factor", None, False),
    ("head_dim", None, True),
    ("num_key_value_heads", None, True),
    ("rope_scaling.factor", {"rope_type": "linear", "factor": 2.0}, False),
    ("rope_scaling.factor", {"rope_type": "dynamic", "factor": 2.0}, False),
    ("rope_scaling.factor", LLAMA3_OK, False),
    ("rope_scaling.low_freq_factor", LLAMA3_OK, False),
    ("rope_scaling.high_freq_factor", LLAMA3_OK, False),
    ("rope_scaling.original_max_position_embeddings", LLAMA3_OK, True),
    ("rope_scaling.factor", YARN, False),
    ("rope_scaling.beta_fast", YARN, False),
    ("rope_scaling.beta_slow", YARN, False),
    ("rope_scaling.attention_factor", YARN, False),
    ("rope_scaling.mscale", YARN, False),
    ("rope_scaling.mscale_all_dim", YARN, False),
    ("rope_scaling.original_max_position_embeddings", YARN, True),
]


def _is_zero(value: Any) -> bool:
    return isinstance(value, int | float) and not math.isnan(value) and value == 0


@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(spec=st.sampled_from(CONFIG_FIELDS), data=st.data())
def test_no_value_outside_physical_sense_loads_from_config_json(tiny, tmp_path, spec, data):
    """NaN, ±inf, 0, negative and huge values of every numeric field that shapes the
    forward: the load refuses, naming the field (never a model that then runs)."""
    field, scaling, integral = spec
    bad = BAD_INTS if integral else BAD_FLOATS
    value = data.draw(st.one_of(st.sampled_from(bad), st.floats(min_value=1e39)))
    if field.startswith("rope_scaling.mscale") and _is_zero(value):
        value = -1.0  # 0 means "not used" to transformers and to us: a valid value
    changes: dict[str, Any] = {}
    if scaling is None:
        changes[field] = value
        if field == "sliding_window":  # transformers' Llama has no window: it ignores the key
            changes.update(MISTRAL)
    else:
        changes["rope_scaling"] = {**scaling, field.split(".", 1)[1]: value}
    want = field
    folder = hf_with(tiny, tmp_path / "m", **changes)
    with pytest.raises(ModelFileError) as info:
        open_model(folder)
    assert info.value.field == want, str(info.value)
    assert "\n" not in str(info.value) and f"{want} is " in str(info.value), str(info.value)


#: (GGUF key, its type, the keys it needs beside it, the config field it holds)
GGUF_KEYS: list[tuple[str, GGUFValueType, dict[str, tuple[Any, GGUFValueType]], str]] = [
    ("llama.rope.freq_base", GGUFValueType.FLOAT32, {}, "rope_theta"),
    ("llama.attention.layer_norm_rms_epsilon", GGUFValueType.FLOAT32, {}, "rms_norm_eps"),
    (
        "llama.rope.scaling.factor",
        GGUFValueType.FLOAT32,
        {"llama.rope.scaling.type": ("linear", GGUFValueType.STRING)},
        "rope_scaling.factor",
    ),
    (
        "llama.rope.scaling.factor",
        GGUFValueType.FLOAT32,
        {"llama.rope.scaling.type": ("yarn", GGUFValueType.STRING)},
        "rope_scaling.factor",
    ),
]


@settings(
    max_examples=30,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(spec=st.sampled_from(GGUF_KEYS), data=st.data())
def test_no_value_outside_physical_sense_loads_from_gguf_keys(tiny, tmp_path, spec, data):
    key, kind, extra, ours = spec
    huge = [] if key.endswith("freq_base") else [1e30]  # float32 holds nothing past 3.4e38
    value = data.draw(st.sampled_from([NAN, INF, -INF, 0.0, -1.0, *huge]))
    bad = gguf_with(
        tiny["gguf"], tmp_path / "bad.gguf", {**extra, key: (value, kind)}, ("aprlib.rope_scaling",)
    )
    with pytest.raises(GgufFormatError) as info:
        open_model(bad)
    assert info.value.field == key and f"{ours} is " in str(info.value), str(info.value)


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(spec=st.sampled_from(CONFIG_FIELDS), value=st.sampled_from(BAD_FLOATS))
def test_no_value_outside_physical_sense_loads_from_apr_metadata(tiny, tmp_path, spec, value):
    field, scaling, _ = spec
    if field == "partial_rotary_factor":
        field = "rope_theta"  # APR states no rotary share: its writer rotates whole heads
    if field.startswith("rope_scaling.mscale") and _is_zero(value):
        value = -1.0
    if scaling is None:
        changes = {field: value}
    else:
        changes = {"rope_scaling": {**scaling, field.split(".", 1)[1]: value}}
    bad = apr_with(tiny["apr"], tmp_path / "bad.apr", **changes)
    with pytest.raises(AprFormatError) as info:
        open_model(bad)
    assert info.value.field == f"metadata.config.{field}", str(info.value)
    assert f"{field} is " in str(info.value), str(info.value)


def test_a_model_config_built_in_code_is_checked_too():
    base = from_hf(presets.LLAMA3_2_1B).to_dict()
    with pytest.raises(ConfigError, match=r"rope_scaling\.factor is nan:") as info:
        ModelConfig(**{**base, "rope_scaling": {"rope_type": "linear", "factor": NAN}})
    assert info.value.field == "rope_scaling.factor"
    with pytest.raises(ConfigError, match=r"rope_theta is 0\.5:"):
        ModelConfig(**{**base, "rope_theta": 0.5})


def test_gguf_key_value_dict_names_the_key():
    kv = to_gguf_kv(from_hf(presets.QWEN2_5_0_5B))
    kv["qwen2.rope.dimension_count"] = 100000
    with pytest.raises(ConfigError, match="dimension_count is 100000") as info:
        from_gguf_kv(kv, has_output_tensor=False)
    assert info.value.field == "rope_dimension_count"


# --- what real models publish still loads --------------------------------------------------

LLAMA_2_7B = {
    "architectures": ["LlamaForCausalLM"],
    "model_type": "llama",
    "hidden_size": 4096,
    "intermediate_size": 11008,
    "max_position_embeddings": 4096,
    "num_attention_heads": 32,
    "num_hidden_layers": 32,
    "num_key_value_heads": 32,
    "rms_norm_eps": 1e-05,
    "rope_scaling": None,
    "rope_theta": 10000.0,
    "tie_word_embeddings": False,
    "vocab_size": 32000,
}
LLAMA_3_1_8B = {
    **LLAMA_2_7B,
    "hidden_size": 4096,
    "intermediate_size": 14336,
    "max_position_embeddings": 131072,
    "num_key_value_heads": 8,
    "rope_scaling": {
        "factor": 8.0,
        "high_freq_factor": 4.0,
        "low_freq_factor": 1.0,
        "original_max_position_embeddings": 8192,
        "rope_type": "llama3",
    },
    "rope_theta": 500000.0,
    "vocab_size": 128256,
}
REAL_CONFIGS: dict[str, dict[str, Any]] = {
    "qwen2.5-0.5b": presets.QWEN2_5_0_5B,
    "qwen2.5-1.5b": presets.QWEN2_5_1_5B,
    "qwen2.5-7b": presets.QWEN2_5_7B,
    "llama-3.2-1b": presets.LLAMA3_2_1B,
    "llama-2-7b": LLAMA_2_7B,
    "llama-3-8b": {**LLAMA_2_7B, "rope_theta": 500000.0, "max_position_embeddings": 8192},
    "llama-3.1-8b": LLAMA_3_1_8B,
    # Qwen2.5's model cards: append this to config.json for 128K context
    "qwen2.5-7b-instruct-yarn": {
        **presets.QWEN2_5_7B,
        "rope_scaling": {"factor": 4.0, "original_max_position_embeddings": 32768, "type": "yarn"},
    },
    "qwen2.5-7b-instruct-1m": {
        **presets.QWEN2_5_7B,
        "max_position_embeddings": 1010000,
        "rope_theta": 10000000.0,
    },
    # DeepSeek-V3's yarn (mscale), read on a Llama-shaped config
    "deepseek-v3-yarn": {
        **LLAMA_2_7B,
        "max_position_embeddings": 163840,
        "rope_scaling": {
            "beta_fast": 32,
            "beta_slow": 1,
            "factor": 40,
            "mscale": 1.0,
            "mscale_all_dim": 1.0,
            "original_max_position_embeddings": 4096,
            "type": "yarn",
        },
    },
    "deepseek-v2-yarn": {
        **LLAMA_2_7B,
        "max_position_embeddings": 163840,
        "rope_scaling": {
            "beta_fast": 32,
            "beta_slow": 1,
            "factor": 40,
            "mscale": 0.707,
            "mscale_all_dim": 0.707,
            "original_max_position_embeddings": 4096,
            "type": "yarn",
        },
    },
    "gpt-oss-style-yarn": {
        **LLAMA_2_7B,
        "max_position_embeddings": 131072,
        "rope_scaling": {
            "beta_fast": 32.0,
            "beta_slow": 1.0,
            "factor": 32.0,
            "original_max_position_embeddings": 4096,
            "rope_type": "yarn",
            "truncate": False,
        },
    },
    "dynamic-ntk": {**LLAMA_2_7B, "rope_scaling": {"type": "dynamic", "factor": 2.0}},
    "linear-longchat": {
        **LLAMA_2_7B,
        "max_position_embeddings": 16384,
        "rope_scaling": {"type": "linear", "factor": 8.0},
    },
    "mistral-7b-v0.1": {
        **LLAMA_2_7B,
        "architectures": ["MistralForCausalLM"],
        "model_type": "mistral",
        "max_position_embeddings": 32768,
        "num_key_value_heads": 8,
        "sliding_window": 4096,
    },
    "gradient-llama-3-1048k": {**LLAMA_3_1_8B, "rope_theta": 3580165449.0, "rope_scaling": None},
    "partial-rotary-1.0": {**LLAMA_2_7B, "partial_rotary_factor": 1.0},
}


@pytest.mark.parametrize("name", list(REAL_CONFIGS))
def test_configs_real_models_publish_still_load(name):
    cfg = from_hf(dict(REAL_CONFIGS[name]))
    back = from_gguf_kv(to_gguf_kv(cfg), has_output_tensor=not cfg.tie_word_embeddings)
    assert ModelConfig.from_dict(cfg.to_dict()) == cfg
    assert back.rope_theta == pytest.approx(cfg.rope_theta, rel=1e-6)
