"""apr bisect's rule trusts neither side (issue 24, "What was seen" 1-4), end to end.

Each case failed before the rule changed: a broken side A bisected CLEAN because its floor
was its own error; expected bf16/Q8_0 rounding was a divergence at ``embed``; a backend
could not get the q/k/v bias wrong; a config difference was reported as an op bug.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch

from aprlib import DType, Ops, model_from_arrays, open_model, write_model
from aprlib.cli.main import main
from aprlib.forward.backends import register_backend
from aprlib.forward.bisect import Side, bisect, plan
from aprlib.forward.model import Transformer
from falsifiers.test_engine_bisect_v1 import BiasTwice, GateUpSwapped, KvHeadsModulo

TOKENS = "3,1,4,1,5,9,2,6,5,3,5,8"


for _name, _cls in (
    ("test-kv-modulo", KvHeadsModulo),
    ("test-gate-up", GateUpSwapped),
    ("test-bias-twice", BiasTwice),
):
    register_backend(_name, f"{__name__}:{_cls.__name__}")


def run(capsys, *argv) -> tuple[int, dict | str, str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, (json.loads(out) if "--json" in argv else out), err


def write_variant(src: Path, dst: Path, edit=None, **config_changes) -> Path:
    with open_model(src) as m:
        arrays = {t.name: (DType.F32, t.shape, t.to_float32().copy()) for t in m}
        cfg = m.config
    if edit is not None:
        edit(arrays)
    write_model(model_from_arrays(arrays, dataclasses.replace(cfg, **config_changes)), dst)
    return dst


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    from conftest import build_tiny

    folder = tmp_path_factory.mktemp("two-sided")
    tiny = build_tiny(folder, "qwen2", tied=False, num_hidden_layers=2)
    return write_variant(tiny.safetensors, folder / "m.apr")


# --- 1: a broken side A is named, not passed --------------------------------------------------


@pytest.mark.parametrize(
    ("backend", "point"),
    [("test-kv-modulo", "layers.0.attn.out"), ("test-gate-up", "layers.0.mlp.swiglu")],
)
@pytest.mark.parametrize("broken", ["a", "b"])
def test_a_broken_side_is_named_whichever_side_it_is(model, capsys, backend, point, broken):
    other = "b" if broken == "a" else "a"
    code, report, _ = run(
        capsys,
        "bisect",
        model,
        "--tokens",
        TOKENS,
        f"--backend-{broken}",
        backend,
        f"--backend-{other}",
        "reference",
        "--json",
    )
    side = broken.upper()
    assert code == 1 and report["verdict"] == "DIVERGED"
    assert report["findings"] == [f"introduced in {side}'s engine at {point}"]
    (check,) = report["checks"]
    assert (check["kind"], check["side"]) == ("engine", side)
    assert report["trusted"] == [other.upper()]


def test_both_sides_broken_are_both_named(model, capsys):
    code, report, _ = run(
        capsys,
        "bisect",
        model,
        "--tokens",
        TOKENS,
        "--backend-a",
        "test-kv-modulo",
        "--backend-b",
        "test-gate-up",
        "--json",
    )
    assert code == 1
    assert report["findings"] == [
        "introduced in A's engine at layers.0.attn.out",
        "introduced in B's engine at layers.0.mlp.swiglu",
    ]


def test_the_floor_never_comes_from_the_side_judged(model):
    """The plan: a judged side's floor is a reference-Ops run, never the side itself."""
    net = Transformer.from_file(model)
    broken = Transformer(net.config, KvHeadsModulo())
    broken.load_state_dict(net.state_dict(), strict=True, assign=True)
    for a, b in ((broken, net), (net, broken)):
        (check,) = plan(Side("A", a, weights="w"), Side("B", b, weights="w"))
        assert check.floor.kind == "clean" and check.subject.kind == "side"


# --- 2: expected rounding is not a divergence -------------------------------------------------


@pytest.mark.parametrize(("dtype", "suffix"), [("bf16", "apr"), ("f16", "apr"), ("q8_0", "gguf")])
def test_expected_rounding_is_clean_and_a_real_defect_still_shows(
    model, tmp_path, capsys, dtype, suffix
):
    rounded = tmp_path / f"m_{dtype}.{suffix}"
    assert main(["convert", str(model), str(rounded), "--dtype", dtype]) == 0
    capsys.readouterr()
    code, report, _ = run(capsys, "bisect", model, rounded, "--tokens", TOKENS, "--json")
    assert code == 1 and report["introduced"][0] == "embed"  # unexpected: named
    argv = ("bisect", model, rounded, "--tokens", TOKENS, "--expect", dtype, "--json")
    code, report, _ = run(capsys, *argv)
    assert code == 0 and report["verdict"] == "CLEAN", report["findings"]

    def blow_up(arrays):
        d, s, v = arrays["model.layers.1.self_attn.k_proj.bias"]
        arrays["model.layers.1.self_attn.k_proj.bias"] = (d, s, v * 10)

    broken = write_variant(rounded, tmp_path / f"broken_{dtype}.apr", blow_up)
    code, report, _ = run(capsys, "bisect", model, broken, *argv[3:])
    assert code == 1 and report["findings"] == [
        "introduced by B's weights at layers.1.attn.k.post_bias"
    ]


# --- 3: the q/k/v bias goes through Ops ------------------------------------------------------


def test_a_backend_that_adds_the_qkv_bias_twice_is_named_at_post_bias(model, capsys):
    code, report, _ = run(
        capsys, "bisect", model, "--tokens", TOKENS, "--backend-b", "test-bias-twice", "--json"
    )
    assert code == 1 and report["introduced"][0] == "layers.0.attn.q.post_bias"
    assert report["first_introduced"]["inputs"] == ["layers.0.attn.q.pre_bias"]


# --- 4: a config difference is named before any op -------------------------------------------


@pytest.mark.parametrize(
    ("field", "value", "point"),
    [("rope_theta", 1e6, "layers.0.attn.q.rope"), ("rms_norm_eps", 0.5, "layers.0.attn_norm")],
)
def test_a_config_difference_is_named_first(model, tmp_path, capsys, field, value, point):
    other = write_variant(model, tmp_path / "other.apr", **{field: value})
    code, report, _ = run(capsys, "bisect", model, other, "--tokens", TOKENS, "--json")
    assert code == 1 and report["configs_differ"][0]["field"] == field
    assert report["config_note"].startswith(f"configs differ: {field} ")
    assert report["config_note"].endswith(f"the divergence at {point} follows from it")
    code, out, _ = run(capsys, "bisect", model, other, "--tokens", TOKENS)
    assert 0 <= out.index("configs differ") < out.index(f"INTRODUCED at {point}")


def test_identical_files_compare_no_weights_and_run_three_forwards_at_most(model, tmp_path):
    copy = write_variant(model, tmp_path / "copy.apr")
    a, b = Transformer.from_file(model), Transformer.from_file(copy)
    checks = plan(Side("A", a, weights=str(model)), Side("B", b, weights=str(copy)))
    runs = {r for c in checks for r in (c.subject, c.reference, c.floor)}
    assert [c.kind for c in checks] == ["weights"] and len(runs) == 3
    with torch.no_grad():
        assert bisect(
            Side("A", a, weights=str(model)), Side("B", b, weights=str(copy)), [1, 2, 3]
        ).clean


# --- review findings -------------------------------------------------------------------------


def test_a_side_loaded_rounded_does_not_round_the_other_sides_reference(model, capsys):
    """Two sides over one file, A loaded in bfloat16: B's reference and floor come from the
    file's float32 weights (seen: B blamed at embed for A's rounding)."""
    register_backend("test-same", f"{__name__}:SameArithmetic")
    code, report, _ = run(
        capsys,
        *("bisect", model, model, "--tokens", TOKENS, "--dtype-a", "bfloat16"),
        *("--dtype-b", "float32", "--backend-b", "test-same", "--json"),
    )
    assert code == 0 and report["verdict"] == "CLEAN", report["findings"]


class SameArithmetic(Ops):
    """The reference arithmetic under another name: judged, and clean."""


@pytest.mark.parametrize(
    "argv",
    [
        ("--atol", "nan"),
        ("--rtol", "inf"),
        ("--m", "-1"),
        ("--override", "*=m:nan"),
    ],
)
def test_a_non_finite_tolerance_is_a_usage_error_not_a_clean_verdict(model, capsys, argv):
    code, _, err = run(
        capsys, "bisect", model, "--backend-b", "test-gate-up", "--tokens", TOKENS, *argv
    )
    assert code == 2 and err.count("\n") == 1 and "finite" in err


def test_an_override_keeps_the_command_lines_other_values(model, capsys):
    from aprlib.forward.bisect import Tolerance, parse_override

    _, tol = parse_override("embed=atol:1e-2", Tolerance(m=5.0, rtol=1e-3))
    assert tol == Tolerance(m=5.0, atol=1e-2, rtol=1e-3)


def test_a_missing_file_is_named(model, tmp_path, capsys):
    code, _, err = run(capsys, "bisect", model, tmp_path / "nope.gguf", "--tokens", TOKENS)
    assert code == 1 and "nope.gguf" in err and "no such file" in err and err.count("\n") == 1


def test_a_quantised_file_given_as_a_is_judged_with_expect_a(model, tmp_path, capsys):
    rounded = tmp_path / "q8.gguf"
    assert main(["convert", str(model), str(rounded), "--dtype", "q8_0"]) == 0
    capsys.readouterr()
    code, report, _ = run(
        capsys, "bisect", rounded, model, "--tokens", TOKENS, "--expect-a", "q8_0", "--json"
    )
    assert code == 0 and report["verdict"] == "CLEAN", report["findings"]
    (check,) = report["checks"]
    assert (check["kind"], check["side"]) == ("weights", "A")


def test_a_config_difference_is_not_blamed_for_a_point_it_does_not_feed(model, tmp_path, capsys):
    bf16 = tmp_path / "bf16.apr"
    assert main(["convert", str(model), str(bf16), "--dtype", "bf16"]) == 0
    capsys.readouterr()
    other = write_variant(bf16, tmp_path / "bf16-theta.apr", rope_theta=1e6)
    code, report, _ = run(capsys, "bisect", model, other, "--tokens", TOKENS, "--json")
    assert code == 1 and report["introduced"][0] == "embed"
    assert "follows from it" not in report["config_note"]
    assert "none of them feeds embed" in report["config_note"]


def test_nan_only_in_the_clean_run_is_not_the_engines():
    from aprlib.forward.bisect import Check, PointResult

    def point(name, floor_bad, side_bad):
        return PointResult(name, (), (1,), 0.1, 0.1, 0.0, 1.0, 1.0, floor_bad, side_bad, False)

    engine = Check("engine", "B", "engine", "clean f16", [point("embed", 0, 0), point("x", 3, 0)])
    assert engine.clean and engine.floor_not_finite.name == "x"
    engine.points.append(point("y", 0, 2))
    assert engine.first_nonfinite.name == "y" and not engine.clean
    weights = Check("weights", "B", "w", "f", [point("embed", 3, 0)])
    assert weights.first_nonfinite.name == "embed"  # a NaN in A's weights is a difference


def test_nothing_to_judge_says_so(model, capsys):
    code, out, _ = run(capsys, "bisect", model, "--tokens", TOKENS, "--dtype-b", "bfloat16")
    assert code == 0 and "nothing to judge" in out
