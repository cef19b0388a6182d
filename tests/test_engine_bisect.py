"""``apr bisect REF DUMP`` against an engine that is not ours (falsifiers/numpy_engine.py): one
planted bug per capture-point family is named at its point, on either side; the clean
engine's float32 error is the reference's own (well within the bound); engine names
through a ``--map`` with GGML ``ne[]`` layouts and transposes, and partial dumps, give the
same answers."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from aprlib.cli.main import main
from aprlib.forward.bisect import bisect
from aprlib.forward.model import capture_graph
from aprlib.forward.sides import dump_side, file_side
from falsifiers import numpy_engine as ne

pytestmark = pytest.mark.usefixtures("one_torch_thread")

TOKENS = [5, 17, 3, 88, 42, 7, 61, 20]
#: what the clean engine's float32 error may reach, as a share of each point's bound
CLEAN_SHARE = 0.5


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    return {
        "qwen2": ne.write_tiny(tmp_path_factory.mktemp("qwen2"), "qwen2"),
        "llama": ne.write_tiny(tmp_path_factory.mktemp("llama"), "llama", tied=True, seed=1),
    }


def run_bisect(capsys, *args: object) -> tuple[int, dict]:
    capsys.readouterr()
    rc = main(["bisect", *map(str, args), "--json"])
    out, err = capsys.readouterr()
    assert not err, err
    return rc, json.loads(out)


def engine_check(report: dict, side: str = "B") -> dict:
    (check,) = [c for c in report["checks"] if c["kind"] == "engine" and c["side"] == side]
    return check


def dump_of(model: Path, tmp_path: Path, bug: str | None, **kwargs) -> Path:
    acts = ne.forward(ne.NumpyModel.load(model), TOKENS, bug)
    return ne.write_points(tmp_path / f"{bug}.safetensors", TOKENS, acts, **kwargs)


CASES = [("qwen2", bug) for bug in ne.BUGS] + [
    ("llama", bug)
    for bug in ne.BUGS
    if bug != "bias_twice"  # llama has no q/k/v bias
]


@pytest.mark.parametrize(("arch", "bug"), CASES)
def test_a_planted_bug_is_named_at_its_point_in_bs_engine(models, tmp_path, capsys, arch, bug):
    dump = dump_of(models[arch], tmp_path, bug, drop=("attn.scores",))
    rc, report = run_bisect(capsys, models[arch], dump)
    assert rc == 1 and report["verdict"] == "DIVERGED"
    want = ne.EXPECTED[bug]
    assert report["findings"] == [f"introduced in B's engine at {want}"]
    check = engine_check(report)
    assert check["introduced"][0] == want
    assert check["absent"] == [p for p in capture_graph(2) if "attn.scores" in p]
    assert "A" in report["trusted"]  # the reference Ops on REF: its own clean run


@pytest.mark.parametrize("bug", ne.CHANGES_SCORES)
def test_a_dumped_attn_scores_names_the_bugs_that_change_it(models, tmp_path, capsys, bug):
    rc, report = run_bisect(capsys, models["qwen2"], dump_of(models["qwen2"], tmp_path, bug))
    assert rc == 1
    assert engine_check(report)["introduced"][:2] == ["layers.0.attn.scores", "layers.0.attn.out"]


@pytest.mark.parametrize("arch", ["qwen2", "llama"])
def test_the_clean_engine_is_clean_well_under_its_floor(models, tmp_path, capsys, arch):
    rc, report = run_bisect(capsys, models[arch], dump_of(models[arch], tmp_path, None))
    assert rc == 0 and report["verdict"] == "CLEAN" and report["findings"] == []
    check = engine_check(report)
    assert check["absent"] == [] and check["introduced"] == []
    share = max(p["rmse_b"] / p["bound"] for p in check["points"])
    assert share < CLEAN_SHARE, share


def test_engine_names_through_a_map_with_ggml_layouts(models, tmp_path, capsys):
    model = ne.NumpyModel.load(models["qwen2"])
    for bug, want in (
        (None, None),
        ("rope_theta", "layers.0.attn.q.rope"),
        ("bias_twice", "layers.0.attn.q.post_bias"),
        ("gqa_mapping", "layers.0.attn.out"),
        ("gate_up_swapped", "layers.0.mlp.gate"),
    ):
        acts = ne.forward(model, TOKENS, bug)
        dump, map_path = ne.write_engine_names(tmp_path / f"{bug}.st", TOKENS, acts, model.layers)
        rc, report = run_bisect(capsys, models["qwen2"], dump, "--map", map_path)
        check = engine_check(report)
        held = {p["name"] for p in check["points"] if p["role"] != "absent"}
        assert len(held) == 1 + 12 * 2 + 2, sorted(held)
        last = {p["name"]: p["scope"] for p in check["points"] if p["scope"] == "last"}
        assert last == {"final_norm": "last", "logits": "last"}
        if want is None:
            assert rc == 0 and report["verdict"] == "CLEAN", report["findings"]
            shares = [p["rmse_b"] / p["bound"] for p in check["points"] if p["role"] != "absent"]
            assert max(shares) < CLEAN_SHARE, max(shares)
        else:
            assert rc == 1 and check["introduced"][0] == want, check["introduced"]


def test_a_partial_dump_judges_across_its_gaps(models, tmp_path, capsys):
    """No rope points: a rope bug shows where the next held point uses them (attn.out),
    judged against the nearest held inputs upstream (post_bias), which agree."""
    dump = dump_of(models["qwen2"], tmp_path, "rope_theta", drop=(".rope", "attn.scores"))
    rc, report = run_bisect(capsys, models["qwen2"], dump)
    check = engine_check(report)
    assert rc == 1 and check["introduced"][0] == "layers.0.attn.out"
    assert "layers.0.attn.q.rope" in check["absent"]

    sparse = ["layers.0.attn_norm", "layers.0.resid.mlp", "layers.1.resid.mlp", "logits"]
    dump = dump_of(models["qwen2"], tmp_path, "gate_up_swapped", keep=sparse)
    rc, report = run_bisect(capsys, models["qwen2"], dump)
    check = engine_check(report)
    assert rc == 1 and check["introduced"] == ["layers.0.resid.mlp"]
    assert len(check["absent"]) == len(capture_graph(2)) - len(sparse)
    assert check["inherited"] == ["layers.1.resid.mlp", "logits"]


@pytest.mark.parametrize("bug", ne.BUGS)
def test_the_bug_on_side_a_is_named_in_as_engine(models, tmp_path, bug):
    """Through the Python API, the dump as A and the reference as B: the rule trusts
    neither side, so a broken A is named (an A-side floor would have passed it)."""
    reference = file_side(models["qwen2"])
    engine, held = dump_side(reference, dump_of(models["qwen2"], tmp_path, bug))
    report = bisect(engine, reference, held.tokens)
    want = "layers.0.attn.scores" if bug in ne.CHANGES_SCORES else ne.EXPECTED[bug]
    assert report.findings() == [f"introduced in A's engine at {want}"]
    assert report.trusted == ["B"]
    (check,) = report.checks
    assert (check.kind, check.side) == ("engine", "A")

    clean, held = dump_side(reference, dump_of(models["qwen2"], tmp_path, None))
    assert bisect(clean, reference, held.tokens).clean


def test_a_nan_the_engine_wrote_is_its_own_finding(models, tmp_path, capsys):
    acts = ne.forward(ne.NumpyModel.load(models["qwen2"]), TOKENS)
    acts["layers.1.mlp.swiglu"][2, 5] = float("nan")
    dump = ne.write_points(tmp_path / "nan.safetensors", TOKENS, acts)
    rc, report = run_bisect(capsys, models["qwen2"], dump)
    assert rc == 1 and report["findings"] == ["first NaN/Inf in B's engine at layers.1.mlp.swiglu"]


def test_the_docs_python_example_runs(models, tmp_path, capsys):
    from tests.test_activation_dump import code_blocks

    (example,) = [b for b in code_blocks("python") if "dump_side" in b]
    dump = dump_of(models["qwen2"], tmp_path, "causal_mask")
    example = example.replace('"model_dir"', repr(str(models["qwen2"])))
    exec(example.replace('"my_engine.safetensors"', repr(str(dump))), {})
    out = capsys.readouterr().out
    assert "introduced in A's engine at layers.0.attn.out" in out
