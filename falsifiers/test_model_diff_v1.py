"""Falsifiers of model-diff-v1: apr diff names each injected defect, and only that one."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from aprlib.cli.main import main as apr
from aprlib.compare.diff import diff_models
from aprlib.compare.report import CLEAN, IDENTICAL, DiffReport
from aprlib.formats.conversion import convert, write_model
from aprlib.formats.dtypes import DType, from_float32
from aprlib.formats.io import model_from_arrays, open_model
from aprlib.formats.layout import permute_qk

FORMATS = ["safetensors", "apr", "gguf"]
Arrays = dict[str, tuple[DType, tuple[int, ...], np.ndarray]]


def f32(entry) -> np.ndarray:
    _, shape, raw = entry
    return raw.view(np.float32).reshape(shape)


@dataclass
class Defect:
    tag: str
    mutate: Callable[[Arrays], None]
    targets: Callable[[str], bool]
    phrase: str
    config: dict | None = None
    formats: tuple[str, ...] = tuple(FORMATS)


def _transpose_ffn(arrays: Arrays) -> None:
    for name in [n for n in arrays if ".mlp." in n]:
        v = f32(arrays[name]).T.copy()
        arrays[name] = (DType.F32, v.shape, v)


def _mislabel_norm(arrays: Arrays) -> None:
    name = "model.norm.weight"
    arrays[name] = (DType.F16, arrays[name][1], from_float32(f32(arrays[name]), DType.BF16))


def _each(match: str, fn: Callable[[np.ndarray], np.ndarray]) -> Callable[[Arrays], None]:
    def mutate(arrays: Arrays) -> None:
        for name in [n for n in arrays if match in n]:
            v = np.ascontiguousarray(fn(f32(arrays[name])), dtype=np.float32)
            arrays[name] = (DType.F32, v.shape, v)

    return mutate


def _drift(v: np.ndarray) -> np.ndarray:
    v = v.copy()
    v.reshape(-1)[[3, 17, 99, 400, 1000]] += np.float32(0.3)
    return v


def _to(dtype: DType, two_d_only: bool = False) -> Callable[[Arrays], None]:
    def mutate(arrays: Arrays) -> None:
        for name, entry in list(arrays.items()):
            if two_d_only and len(entry[1]) != 2:
                continue
            arrays[name] = (dtype, entry[1], from_float32(f32(entry), dtype))

    return mutate


def _drop(arrays: Arrays) -> None:
    del arrays["model.layers.1.mlp.down_proj.weight"]


def _add(arrays: Arrays) -> None:
    arrays["model.layers.2.input_layernorm.weight"] = arrays[
        "model.layers.1.input_layernorm.weight"
    ]


def _truncate_embedding(arrays: Arrays) -> None:
    v = f32(arrays["model.embed_tokens.weight"])[:80].copy()
    arrays["model.embed_tokens.weight"] = (DType.F32, v.shape, v)


DEFECTS = {
    "TRANSPOSED": Defect(
        "TRANSPOSED",
        _transpose_ffn,
        lambda n: ".mlp." in n,
        "mlp.{down,gate,up}_proj.weight in 2/2 layers: Values identical, "
        "stored transposed ([in, out] where [out, in] belongs): a layout defect",
    ),
    "DTYPE_MISLABEL": Defect(
        "DTYPE_MISLABEL",
        _mislabel_norm,
        lambda n: n == "model.norm.weight",
        "Same values under the wrong dtype tag: BF16 data tagged F16",
    ),
    "SCALED": Defect(
        "SCALED",
        _each("layers.1.self_attn.o_proj", lambda v: v * 2),
        lambda n: "layers.1.self_attn.o_proj" in n,
        "B = 2 x A",
    ),
    "SHIFTED": Defect(
        "SHIFTED",
        _each("layernorm", lambda v: v + 1),
        lambda n: "layernorm" in n,
        "B = A +1 (the 1 + w norm convention)",
    ),
    "PERMUTED": Defect(
        "PERMUTED",
        _each("q_proj.weight", lambda v: permute_qk(v, 4)),
        lambda n: "q_proj.weight" in n,
        "rotary interleave",
    ),
    "QUANT_NOISE/bf16": Defect(
        "QUANT_NOISE",
        _to(DType.BF16),
        lambda n: True,
        "all 27 tensors: Differences within the quantisation bound",
    ),
    "QUANT_NOISE/q8_0": Defect(
        "QUANT_NOISE",
        _to(DType.Q8_0, two_d_only=True),
        lambda n: n.endswith("weight") and "norm" not in n,
        "within the rounding bound of Q8_0",
        formats=("apr", "gguf"),
    ),
    "VALUE_DRIFT": Defect(
        "VALUE_DRIFT",
        _each("layers.0.mlp.up_proj", _drift),
        lambda n: "layers.0.mlp.up_proj" in n,
        "cosine",
    ),
    "MISSING": Defect(
        "MISSING",
        _drop,
        lambda n: n == "model.layers.1.mlp.down_proj.weight",
        "mlp.down_proj.weight in 1/2 layers: Tensors present in A only",
    ),
    "EXTRA": Defect(
        "EXTRA",
        _add,
        lambda n: n == "model.layers.2.input_layernorm.weight",
        "Tensors present in B only",
    ),
    "SHAPE_MISMATCH": Defect(
        "SHAPE_MISMATCH",
        _truncate_embedding,
        lambda n: n == "model.embed_tokens.weight",
        "Shapes differ",
        # the variant's config says what its embedding holds: a GGUF writer refuses to
        # invent a placeholder vocabulary the weights do not have
        config={"vocab_size": 80},
    ),
    "CONFIG_MISMATCH": Defect(
        "CONFIG_MISMATCH",
        lambda arrays: None,
        lambda n: False,
        "rope_theta 10000.0 vs 500000.0",
        config={"rope_theta": 500000.0, "tie_word_embeddings": True},
    ),
}
FALSIFIER = {
    "TRANSPOSED": "FALSIFY-DIFF-001",
    "DTYPE_MISLABEL": "FALSIFY-DIFF-002",
    "SCALED": "FALSIFY-DIFF-003",
    "SHIFTED": "FALSIFY-DIFF-004",
    "PERMUTED": "FALSIFY-DIFF-005",
    "QUANT_NOISE/bf16": "FALSIFY-DIFF-006",
    "QUANT_NOISE/q8_0": "FALSIFY-DIFF-006",
    "VALUE_DRIFT": "FALSIFY-DIFF-007",
    "MISSING": "FALSIFY-DIFF-008",
    "EXTRA": "FALSIFY-DIFF-008",
    "SHAPE_MISMATCH": "FALSIFY-DIFF-008",
    "CONFIG_MISMATCH": "FALSIFY-DIFF-009",
}


def write_variant(
    src: Path,
    mutate: Callable[[Arrays], None],
    fmt: str,
    folder: Path,
    config_changes: dict | None = None,
) -> Path:
    with open_model(src) as model:
        arrays = {n: (t.dtype, t.shape, t.raw().copy()) for n, t in model.tensors.items()}
        config = model.config
    mutate(arrays)
    if config_changes:
        config = dataclasses.replace(config, **config_changes)
    folder.mkdir(parents=True)
    dst = folder / f"model.{fmt}"
    write_model(model_from_arrays(arrays, config), dst)
    return dst


def run_diff(a: Path, b: Path) -> DiffReport:
    with open_model(a) as ma, open_model(b) as mb:
        return diff_models(ma, mb)


def check_defect(src: Path, defect: Defect, fmt: str, work: Path) -> DiffReport:
    variant = write_variant(src, defect.mutate, fmt, work / fmt, defect.config)
    report = run_diff(src, variant)
    for pair in report.pairs:
        want = defect.tag if defect.targets(pair.name) else IDENTICAL
        assert pair.tag == want, f"{fmt}: {pair.name} tagged {pair.tag}, expected {want}"
    assert any(defect.targets(p.name) for p in report.pairs) or defect.config
    assert report.diagnosis["class"] == defect.tag, report.diagnosis["line"]
    assert defect.phrase in report.diagnosis["line"], report.diagnosis["line"]
    assert not report.clean
    return report


def _make(defect_name: str):
    """One test per defect class, bound to its falsifier, run in each format."""
    falsifier = FALSIFIER[defect_name]
    formats = DEFECTS[defect_name].formats

    @pytest.mark.falsifies(falsifier)
    @pytest.mark.parametrize("fmt", formats)
    def test(tiny_qwen2, tmp_path, fmt, evidence):
        report = check_defect(tiny_qwen2.safetensors, DEFECTS[defect_name], fmt, tmp_path)
        evidence.record(diagnosis=report.diagnosis["line"][:300])

    test.__name__ = f"test_diff_names_{defect_name.lower().replace('/', '_')}"
    return test


for _name in DEFECTS:
    globals()[f"test_diff_names_{_name.lower().replace('/', '_')}"] = _make(_name)


def lossless_paths(tiny, work: Path) -> list[tuple[Path, Path]]:
    src = tiny.safetensors
    out = []
    for fmt in ("apr", "gguf"):
        convert(src, work / f"m.{fmt}")
        out.append((src, work / f"m.{fmt}"))
    convert(work / "m.apr", work / "chain.gguf")
    convert(work / "chain.gguf", work / "chain.apr")
    (work / "st").mkdir()
    convert(work / "chain.apr", work / "st" / "model.safetensors")
    out += [
        (src, work / "chain.gguf"),
        (work / "m.apr", work / "chain.apr"),
        (src, work / "st" / "model.safetensors"),
    ]
    return out


def check_no_false_alarm(pairs: list[tuple[Path, Path]]) -> int:
    for a, b in pairs:
        report = run_diff(a, b)
        bad = [(p.name, p.tag) for p in report.pairs if p.tag not in CLEAN]
        assert not bad and not report.config, f"{a.name} vs {b.name}: {bad} {report.config}"
    return len(pairs)


@pytest.mark.falsifies("FALSIFY-DIFF-010")
@pytest.mark.parametrize(
    ("arch", "tied", "dtype"),
    [
        ("qwen2", False, "float32"),
        ("qwen2", True, "float32"),
        ("qwen2", False, "bfloat16"),
        ("qwen2", False, "float16"),
        ("llama", False, "float32"),
    ],
)
def test_lossless_paths_raise_no_alarm(tiny_factory, tmp_path, arch, tied, dtype, evidence):
    tiny = tiny_factory(arch, tied=tied, dtype=dtype)
    pairs = lossless_paths(tiny, tmp_path)
    if dtype != "float32":  # the widened copy holds the same values: EQUIVALENT, not noise
        convert(tiny.safetensors, tmp_path / "wide.apr", dtype=DType.F32)
        pairs.append((tiny.safetensors, tmp_path / "wide.apr"))
    evidence.record(paths=check_no_false_alarm(pairs))
    assert apr(["diff", str(pairs[0][0]), str(pairs[0][1])]) == 0


def check_mixed(src: Path, fmt: str, work: Path) -> str:
    def both(arrays: Arrays) -> None:
        _transpose_ffn(arrays)
        _mislabel_norm(arrays)

    report = run_diff(src, write_variant(src, both, fmt, work / fmt))
    line = report.diagnosis["line"]
    assert line.startswith("DIAGNOSIS: TRANSPOSED mlp.{down,gate,up}_proj.weight in 2/2 layers")
    assert "; also DTYPE_MISLABEL model.norm.weight (BF16 data tagged F16" in line, line
    assert [f["class"] for f in report.diagnosis["also"]] == ["DTYPE_MISLABEL"]
    return line


@pytest.mark.falsifies("FALSIFY-DIFF-011")
@pytest.mark.parametrize("fmt", FORMATS)
def test_mixed_findings_are_all_reported_ranked(tiny_qwen2, tmp_path, fmt, evidence):
    evidence.record(diagnosis=check_mixed(tiny_qwen2.safetensors, fmt, tmp_path))


# --- issue 10: swaps, NaN/Inf, the guilty side, config vs weights, tokenizers -----------


def _swap(pairs: list[tuple[str, str]]) -> Callable[[Arrays], None]:
    def mutate(arrays: Arrays) -> None:
        for x, y in pairs:
            arrays[x], arrays[y] = arrays[y], arrays[x]

    return mutate


def _swap_layers(i: int, j: int) -> Callable[[Arrays], None]:
    def mutate(arrays: Arrays) -> None:
        prefix = f"model.layers.{i}."
        names = [n for n in arrays if n.startswith(prefix)]
        _swap([(n, n.replace(prefix, f"model.layers.{j}.")) for n in names])(arrays)

    return mutate


SWAPS = {
    "layers": (
        _swap_layers(0, 1),
        lambda n: n.startswith("model.layers."),
        "SWAPPED model.layers.0.* <-> model.layers.1.*",
    ),
    "q_k": (
        _swap(
            [
                (
                    "model.layers.1.self_attn.q_proj.weight",
                    "model.layers.1.self_attn.k_proj.weight",
                ),
                ("model.layers.1.self_attn.q_proj.bias", "model.layers.1.self_attn.k_proj.bias"),
            ]
        ),
        lambda n: (
            n.startswith("model.layers.1.self_attn.") and n.split(".")[4] in ("q_proj", "k_proj")
        ),
        "SWAPPED k_proj <-> q_proj in layer 1",
    ),
}


def check_swap(src: Path, kind: str, fmt: str, work: Path) -> str:
    mutate, targets, phrase = SWAPS[kind]
    report = run_diff(src, write_variant(src, mutate, fmt, work / fmt))
    for pair in report.pairs:
        want = "SWAPPED" if targets(pair.name) else IDENTICAL
        assert pair.tag == want, f"{fmt}: {pair.name} tagged {pair.tag}, expected {want}"
    line = report.diagnosis["line"]
    assert line.startswith(f"DIAGNOSIS: {phrase}"), line
    assert not report.diagnosis["also"], line
    return line


@pytest.mark.falsifies("FALSIFY-DIFF-012")
@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("kind", list(SWAPS))
def test_swapped_tensors_are_named_as_a_swap(tiny_qwen2, tmp_path, kind, fmt, evidence):
    evidence.record(diagnosis=check_swap(tiny_qwen2.safetensors, kind, fmt, tmp_path))


def _poison(value: float, where: tuple[int, int]) -> Callable[[Arrays], None]:
    def mutate(arrays: Arrays) -> None:
        name = "model.layers.0.self_attn.k_proj.weight"
        v = f32(arrays[name]).copy()
        v[where] = value
        arrays[name] = (DType.F32, v.shape, v)
        _each("layers.1.mlp.up_proj", _drift)(arrays)  # a value class beside it
        _each("layers.1.mlp.down_proj", _drift)(arrays)

    return mutate


def check_nonfinite(src: Path, value: float, fmt: str, work: Path) -> str:
    tag = "NAN" if np.isnan(value) else "INF"
    label = "NaN" if tag == "NAN" else "Inf"
    report = run_diff(src, write_variant(src, _poison(value, (3, 5)), fmt, work / fmt))
    line = report.diagnosis["line"]
    want = (
        f"DIAGNOSIS: {tag} model.layers.0.self_attn.k_proj.weight: 1 {label} in B only, "
        "first at [3, 5]"
    )
    assert line.startswith(want), line
    assert "also VALUE_DRIFT" in line, line
    pair = next(p for p in report.pairs if p.name == "model.layers.0.self_attn.k_proj.weight")
    stats = {k: v for k, v in pair.stats.items() if isinstance(v, float)}
    assert stats and all(np.isfinite(v) for v in stats.values()), pair.stats
    assert stats["max_abs"] == 0.0 and stats["cosine"] == pytest.approx(1.0), pair.stats
    return line


@pytest.mark.falsifies("FALSIFY-DIFF-013")
@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("value", [float("nan"), float("inf")], ids=["nan", "inf"])
def test_nonfinite_values_are_counted_located_and_ranked_first(
    tiny_qwen2, tmp_path, value, fmt, evidence
):
    evidence.record(diagnosis=check_nonfinite(tiny_qwen2.safetensors, value, fmt, tmp_path))


def _retag(name: str, dtype: DType) -> Callable[[Arrays], None]:
    def mutate(arrays: Arrays) -> None:
        _, shape, raw = arrays[name]
        arrays[name] = (dtype, shape, raw)

    return mutate


def _retag_all(dtype: DType) -> Callable[[Arrays], None]:
    def mutate(arrays: Arrays) -> None:
        for name, (_, shape, raw) in list(arrays.items()):
            arrays[name] = (dtype, shape, raw)

    return mutate


def check_guilty_side(tiny, guilty: str, fmt: str, work: Path, whole_file: bool = False) -> str:
    """Same bytes under two tags: the diff must blame the file whose tag is wrong, for one
    tensor and for a file whose every tensor is retagged (norms near 1 read plausibly under
    either tag, so there the 2-D weights must speak for the file)."""
    src = tiny.safetensors
    true = DType.BF16 if tiny.dtype == "bfloat16" else DType.F16
    lie = DType.F16 if true is DType.BF16 else DType.BF16
    mutate = _retag_all(lie) if whole_file else _retag("model.norm.weight", lie)
    bad = write_variant(src, mutate, fmt, work / fmt)
    a, b = (bad, src) if guilty == "A" else (src, bad)
    report = run_diff(a, b)
    line = report.diagnosis["line"]
    want = f"{true.name} data tagged {lie.name} (in {guilty})"
    first = "DTYPE_MISLABEL" if whole_file else "DTYPE_MISLABEL model.norm.weight"
    assert line.startswith(f"DIAGNOSIS: {first}"), line
    assert want in line, line
    wrong = [p.name for p in report.pairs if p.tag == "DTYPE_MISLABEL" and want not in p.detail]
    assert not wrong, f"blamed on the wrong side: {wrong}"
    return line


@pytest.mark.falsifies("FALSIFY-DIFF-014")
@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("guilty", ["A", "B"])
@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_mislabel_blames_the_side_that_holds_it(
    tiny_factory, tmp_path, dtype, guilty, fmt, evidence
):
    tiny = tiny_factory("qwen2", dtype=dtype)
    evidence.record(diagnosis=check_guilty_side(tiny, guilty, fmt, tmp_path))


@pytest.mark.falsifies("FALSIFY-DIFF-014")
@pytest.mark.parametrize("guilty", ["A", "B"])
@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_a_wholly_mislabelled_file_is_blamed_in_every_tensor(
    tiny_factory, tmp_path, dtype, guilty, evidence
):
    tiny = tiny_factory("qwen2", dtype=dtype)
    evidence.record(diagnosis=check_guilty_side(tiny, guilty, "apr", tmp_path, whole_file=True))


def check_mislabel_outranks_noise(src: Path, fmt: str, work: Path) -> str:
    def both(arrays: Arrays) -> None:
        _to(DType.BF16)(arrays)
        _retag("model.norm.weight", DType.F16)(arrays)

    report = run_diff(src, write_variant(src, both, fmt, work / fmt))
    line = report.diagnosis["line"]
    assert line.startswith(
        "DIAGNOSIS: DTYPE_MISLABEL model.norm.weight: Same values under the wrong dtype tag: "
        "BF16 data tagged F16 (in B)"
    ), line
    assert "; also QUANT_NOISE" in line, line
    return line


@pytest.mark.falsifies("FALSIFY-DIFF-014")
@pytest.mark.parametrize("fmt", ["apr", "gguf"])
def test_mislabel_outranks_quantisation_noise(tiny_qwen2, tmp_path, fmt, evidence):
    evidence.record(diagnosis=check_mislabel_outranks_noise(tiny_qwen2.safetensors, fmt, tmp_path))


def check_contradiction(src: Path, fmt: str, work: Path) -> str:
    report = run_diff(
        src, write_variant(src, lambda a: None, fmt, work / fmt, {"num_key_value_heads": 4})
    )
    line = report.diagnosis["line"]
    assert line.startswith(
        "DIAGNOSIS: CONFIG_CONTRADICTS_WEIGHTS: num_key_value_heads=4 but k_proj has 32 rows "
        "= 2 heads x 16 (in B)"
    ), line
    assert [c.side for c in report.contradictions] == ["B"], report.contradictions
    assert all(p.tag == IDENTICAL for p in report.pairs)
    return line


@pytest.mark.falsifies("FALSIFY-DIFF-015")
@pytest.mark.parametrize("fmt", FORMATS)
def test_config_that_contradicts_its_weights_is_named(tiny_qwen2, tmp_path, fmt, evidence):
    evidence.record(diagnosis=check_contradiction(tiny_qwen2.safetensors, fmt, tmp_path))


def tiny_vocab(n: int, bos: int, swap: tuple[int, int] | None = None) -> dict:
    tokens = [f"<s{i}>" if i < 4 else f"t{i}" for i in range(n)]
    if swap:
        i, j = swap
        tokens[i], tokens[j] = tokens[j], tokens[i]
    return {
        "tokenizer.ggml.model": "gpt2",
        "tokenizer.ggml.pre": "qwen2",
        "tokenizer.ggml.tokens": tokens,
        "tokenizer.ggml.token_type": [3] * 4 + [1] * (n - 4),
        "tokenizer.ggml.merges": ["t 1", "t 2"],
        "tokenizer.ggml.bos_token_id": bos,
        "tokenizer.ggml.eos_token_id": 2,
    }


def write_with_tokenizer(src: Path, tokenizer: dict, dst: Path) -> Path:
    with open_model(src) as model:
        arrays = {n: (t.dtype, t.shape, t.raw().copy()) for n, t in model.tensors.items()}
        config = model.config
    variant = model_from_arrays(arrays, config)
    variant.tokenizer = tokenizer
    dst.parent.mkdir(parents=True, exist_ok=True)
    write_model(variant, dst)
    return dst


def check_tokenizer_mismatch(src: Path, fmt: str, work: Path) -> str:
    n = 96
    a = write_with_tokenizer(src, tiny_vocab(n, 1), work / "a" / f"m.{fmt}")
    same = write_with_tokenizer(src, tiny_vocab(n, 1), work / "same" / f"m.{fmt}")
    b = write_with_tokenizer(src, tiny_vocab(n, 0, swap=(40, 41)), work / "b" / f"m.{fmt}")
    assert run_diff(a, same).clean
    report = run_diff(a, b)
    line = report.diagnosis["line"]
    assert line.startswith("DIAGNOSIS: TOKENIZER_MISMATCH: Tokenizers differ"), line
    assert "bos_token_id: 1 vs 0" in line, line
    assert "tokens: first differing token id 40: 't40' vs 't41'" in line, line
    assert apr(["diff", str(a), str(b)]) == 1
    return line


@pytest.mark.falsifies("FALSIFY-DIFF-016")
@pytest.mark.parametrize("fmt", ["apr", "gguf"])
def test_tokenizers_that_differ_are_named(tiny_qwen2, tmp_path, fmt, evidence):
    evidence.record(diagnosis=check_tokenizer_mismatch(tiny_qwen2.safetensors, fmt, tmp_path))


def check_expect_quantized(src: Path, work: Path, capsys) -> str:
    q8 = write_variant(src, _to(DType.Q8_0, two_d_only=True), "gguf", work / "q8")

    def drift_then_quantise(arrays: Arrays) -> None:
        _each("layers.0.mlp.up_proj", _drift)(arrays)
        _to(DType.Q8_0, two_d_only=True)(arrays)

    drift = write_variant(src, drift_then_quantise, "gguf", work / "drift")
    assert apr(["diff", str(src), str(q8)]) == 1  # noise is a finding unless expected
    capsys.readouterr()
    assert apr(["diff", str(src), str(q8), "--expect", "quantized"]) == 0
    out = capsys.readouterr().out
    assert "bound d/2 per 32-element block (half a Q8_0 step), worst error" in out, out
    assert apr(["diff", str(src), str(drift), "--expect", "quantized"]) == 1
    return out.strip().splitlines()[-2]


@pytest.mark.falsifies("FALSIFY-DIFF-017")
def test_expect_quantized_passes_noise_and_nothing_else(tiny_qwen2, tmp_path, capsys, evidence):
    evidence.record(line=check_expect_quantized(tiny_qwen2.safetensors, tmp_path, capsys)[:300])


CONFIG_MEANINGS = {
    "hidden_act": ({"hidden_act": "gelu"}, "hidden_act 'silu' vs 'gelu'"),
    "rope_scaling": (
        {
            "rope_scaling": {
                "rope_type": "yarn",
                "factor": 4.0,
                "original_max_position_embeddings": 32768,
            }
        },
        # by meaning: transformers' yarn defaults and the temperature they imply spelled out
        "'beta_fast': 32.0, 'beta_slow': 1.0, 'factor': 4.0, "
        "'original_max_position_embeddings': 32768.0, 'rope_type': 'yarn', 'truncate': True}",
    ),
    "sliding_window": ({"sliding_window": 4096}, "sliding_window None vs 4096"),
    "rms_norm_eps": ({"rms_norm_eps": 1e-5}, "rms_norm_eps 1e-06 vs 1e-05"),
}


def check_config_meaning(src: Path, change: str, fmt: str, work: Path) -> str:
    changes, phrase = CONFIG_MEANINGS[change]
    report = run_diff(src, write_variant(src, lambda a: None, fmt, work / fmt, changes))
    line = report.diagnosis["line"]
    assert line.startswith("DIAGNOSIS: CONFIG_MISMATCH: Architecture config differs: "), line
    assert phrase in line, line
    assert [c.field for c in report.config] == [change], report.config
    return line


@pytest.mark.falsifies("FALSIFY-DIFF-018")
@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("change", list(CONFIG_MEANINGS))
def test_config_fields_are_compared_by_meaning(tiny_qwen2, tmp_path, change, fmt, evidence):
    evidence.record(diagnosis=check_config_meaning(tiny_qwen2.safetensors, change, fmt, tmp_path))
