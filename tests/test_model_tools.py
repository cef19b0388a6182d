"""apr logits / trace / bisect / qa: the issue's cases, end to end through the CLI."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from aprlib import DType, Ops, model_from_arrays, write_model
from aprlib.cli.main import main
from aprlib.forward.backends import register_backend
from aprlib.forward.logits import TokenMismatchError, compare_logits
from falsifiers import test_loss_sanity_v1 as loss
from falsifiers.loss_stream import eval_tokens, save, train

TOKENS = "3,1,4,1,5,9,2,6,5,3,5,8"


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def arrays_of(path: Path) -> tuple[dict, object]:
    from aprlib import open_model

    with open_model(path) as m:
        return {t.name: (DType.F32, t.shape, t.to_float32().copy()) for t in m}, m.config


def variant(src: Path, dst: Path, edit) -> Path:
    arrays, cfg = arrays_of(src)
    edit(arrays)
    write_model(model_from_arrays(arrays, cfg), dst)
    return dst


@pytest.fixture(scope="module")
def three_layers(tmp_path_factory):
    from conftest import build_tiny

    folder = tmp_path_factory.mktemp("three")
    tiny = build_tiny(folder, "qwen2", tied=False, num_hidden_layers=3)
    apr = folder / "m.apr"
    write_model(model_from_arrays(*arrays_of(tiny.safetensors)), apr)
    return apr


# --- bisect --------------------------------------------------------------------------------


def test_bisect_names_the_layer_and_point_where_a_bias_blows_up(three_layers, tmp_path, capsys):
    """The incident: a k bias 10x too large, found three layers upstream of where people looked."""

    def blow_up(arrays):
        d, s, v = arrays["model.layers.1.self_attn.k_proj.bias"]
        arrays["model.layers.1.self_attn.k_proj.bias"] = (d, s, v * 10)

    b = variant(three_layers, tmp_path / "b.apr", blow_up)
    code, out, _ = run(capsys, "bisect", three_layers, b, "--tokens", TOKENS, "--json")
    report = json.loads(out)
    assert code == 1 and report["verdict"] == "DIVERGED"
    assert report["introduced"] == ["layers.1.attn.k.post_bias"]
    assert report["first_introduced"]["inputs"] == ["layers.1.attn.k.pre_bias"]
    assert report["point_before"]["name"] == "layers.1.attn.k.pre_bias"
    assert report["point_before"]["diverged"] is False
    assert "layers.1.attn.k.rope" in report["inherited"] and "logits" in report["inherited"]
    upstream = [p for p in report["points"] if p["name"].startswith(("embed", "layers.0."))]
    assert upstream and not any(p["diverged"] for p in upstream)
    needed = report["first_introduced"]["needed"]
    assert needed["m"] > 1000 and needed["atol"] > 0
    code, out, _ = run(capsys, "bisect", three_layers, b, "--tokens", TOKENS)
    assert code == 1 and "INTRODUCED at layers.1.attn.k.post_bias" in out


def test_bisect_of_identical_models_is_clean(three_layers, tmp_path, capsys):
    copy = variant(three_layers, tmp_path / "same.apr", lambda arrays: None)
    code, out, _ = run(capsys, "bisect", three_layers, copy, "--tokens", TOKENS)
    assert code == 0 and "CLEAN" in out


def test_bisect_first_nan_is_its_own_finding(three_layers, tmp_path, capsys):
    def poison(arrays):
        d, s, v = arrays["model.layers.2.mlp.down_proj.weight"]
        v = v.copy()
        v[0, 0] = np.nan
        arrays["model.layers.2.mlp.down_proj.weight"] = (d, s, v)

    b = variant(three_layers, tmp_path / "nan.apr", poison)
    code, out, _ = run(capsys, "bisect", three_layers, b, "--tokens", TOKENS, "--json")
    report = json.loads(out)
    assert code == 1 and report["first_nonfinite"]["name"] == "layers.2.mlp.down"


class SwigluWithoutGate(Ops):
    """A backend whose SwiGLU forgets the SiLU (the GPU-only bug class)."""

    def swiglu(self, gate, up):
        return gate * up


def test_bisect_across_backends_names_the_kernel(three_layers, tmp_path, capsys):
    register_backend("test-broken-swiglu", f"{__name__}:SwigluWithoutGate")
    code, out, _ = run(
        capsys,
        "bisect",
        three_layers,
        "--tokens",
        TOKENS,
        "--backend-b",
        "test-broken-swiglu",
        "--json",
        "--bundle",
        tmp_path / "bundle",
    )
    report = json.loads(out)
    assert code == 1 and report["introduced"][0] == "layers.0.mlp.swiglu"
    assert (tmp_path / "bundle" / "b.layers.0.mlp.swiglu.npy").is_file()
    meta = json.loads((tmp_path / "bundle" / "bundle.json").read_text())
    assert meta["inputs"] == ["layers.0.mlp.gate", "layers.0.mlp.up"]


class EmbeddingInBfloat16(Ops):
    """A float32 backend that rounds the embedding rows to bfloat16 (a storage choice)."""

    def embedding(self, tokens, weight):
        return super().embedding(tokens, weight).bfloat16().float()


def test_bisect_override_by_pattern_lets_a_point_pass(three_layers, capsys):
    register_backend("test-embed-bf16", f"{__name__}:EmbeddingInBfloat16")
    argv = ("bisect", three_layers, "--tokens", TOKENS, "--backend-b", "test-embed-bf16", "--json")
    code, out, _ = run(capsys, *argv)
    assert code == 1 and json.loads(out)["introduced"][0] == "embed"
    code, out, _ = run(capsys, *argv, "--override", "embed=atol:1e-2")
    assert json.loads(out)["introduced"][0] != "embed"


def test_bisect_of_a_dtype_twin_is_its_own_floor(three_layers, capsys):
    """`--dtype-b bfloat16` on the reference backend is the clean run in bfloat16: expected
    rounding, not a divergence (seen: DIVERGED — introduced at embed)."""
    code, out, _ = run(
        capsys, "bisect", three_layers, "--tokens", TOKENS, "--dtype-b", "bfloat16", "--json"
    )
    report = json.loads(out)
    assert code == 0 and report["verdict"] == "CLEAN" and report["trusted"] == ["A", "B"]


def test_bisect_usage_errors_are_one_line(three_layers, capsys):
    code, _, err = run(capsys, "bisect", three_layers, "--tokens", TOKENS)
    assert code == 2 and err.count("\n") == 1
    code, _, err = run(capsys, "bisect", three_layers, "--tokens", TOKENS, "--backend-b", "nope")
    assert code == 2 and "unknown backend" in err


# --- trace ---------------------------------------------------------------------------------


def test_trace_compares_only_like_points(three_layers, tmp_path, capsys):
    """The incidents: all-token statistics against last-token ones; pre- vs post-bias."""
    out_json = tmp_path / "t.json"
    code, _, _ = run(capsys, "trace", three_layers, "--tokens", TOKENS, "--json", out_json)
    assert code == 0
    data = json.loads(out_json.read_text())
    names = {(p["name"], p["scope"]) for p in data["points"]}
    assert ("layers.0.attn.q.pre_bias", "last") in names
    assert ("layers.0.attn.q.post_bias", "all") in names
    last_only = {**data, "points": [p for p in data["points"] if p["scope"] == "last"]}
    other = tmp_path / "last.json"
    other.write_text(json.dumps(last_only))
    code, out, _ = run(capsys, "trace", out_json, "--compare", other, "--scope", "all")
    assert code == 1 and "missing in B" in out
    code, out, _ = run(capsys, "trace", out_json, "--compare", out_json)
    assert code == 0 and "missing" not in out


# --- logits --------------------------------------------------------------------------------


def test_logits_save_compare_and_verdict_agree(three_layers, tmp_path, capsys):
    out = tmp_path / "a.npy"
    code, _, _ = run(capsys, "logits", three_layers, "--tokens", TOKENS, "--out", out)
    assert code == 0 and out.is_file() and Path(f"{out}.json").is_file()
    code, text, _ = run(
        capsys, "logits", three_layers, "--tokens", TOKENS, "--compare", out, "--json"
    )
    report = json.loads(text)
    assert code == 0 and report["verdict"] == "PASS" and report["nmse"] == 0.0
    assert "A is the reference" in report["kl_direction"]
    # another backend on the same file agrees (transformers, the independent one)
    code, text, _ = run(
        capsys,
        "logits",
        three_layers,
        "--tokens",
        TOKENS,
        "--compare",
        three_layers,
        "--compare-backend",
        "transformers",
        "--json",
    )
    assert code == 0 and json.loads(text)["verdict"] == "PASS"


def test_logits_never_pass_while_a_gate_fails(three_layers, tmp_path, capsys):
    """llama.cpp's compare once printed success on a max abs diff of 1.67."""
    out = tmp_path / "a.npy"
    run(capsys, "logits", three_layers, "--tokens", TOKENS, "--out", out)
    logits = np.load(out)
    logits[4, 7] += 1.67
    np.save(out, logits)
    code, text, _ = run(
        capsys, "logits", three_layers, "--tokens", TOKENS, "--compare", out, "--json"
    )
    report = json.loads(text)
    assert code == 1 and report["verdict"] == "FAIL" and "nmse" in report["failed"]
    assert abs(report["max_abs"] - 1.67) < 1e-3


def test_logits_refuse_unlike_token_ids(three_layers, tmp_path, capsys):
    out = tmp_path / "a.npy"
    run(capsys, "logits", three_layers, "--tokens", TOKENS, "--out", out)
    code, _, err = run(capsys, "logits", three_layers, "--tokens", "3,1,4", "--compare", out)
    assert code == 2 and "token ids differ" in err
    with pytest.raises(TokenMismatchError):
        compare_logits(np.zeros((2, 4)), np.zeros((2, 4)), [1, 2], [1, 3])


def test_logits_bad_input_is_one_line(tmp_path, capsys):
    code, _, err = run(capsys, "logits", tmp_path / "none.gguf", "--tokens", "1,2")
    assert code == 1 and err.count("\n") == 1 and "none.gguf" in err
    code, _, err = run(capsys, "logits", tmp_path / "none.gguf", "--tokens", "1,x")
    assert code == 2 and "'x'" in err


# --- qa ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    folder = tmp_path_factory.mktemp("trained")
    path = save(train(), folder / "trained.apr")
    stream = folder / "stream.txt"
    stream.write_text(" ".join(map(str, eval_tokens()[0].tolist())))
    return path, stream


def test_qa_passes_a_clean_trained_model(trained, capsys):
    path, stream = trained
    code, out, _ = run(
        capsys, "qa", path, "--stream", stream, "--max-loss", loss.CLEAN_LIMIT, "--json"
    )
    report = json.loads(out)
    assert code == 0 and report["verdict"] == "PASS", report
    statuses = {g["name"]: g["status"] for g in report["gates"]}
    assert statuses["loss"] == "PASS" and statuses["round_trip"] == "PASS"


GATE_FOR_DEFECT = {
    "transpose": "loss",
    "dtype-mislabel": "std_range",
    "dropped-bias": "loss",
    "doubled-bias": "loss",
    "rope-theta": "loss",
    "untied-head": "loss",
}


@pytest.mark.parametrize("defect", sorted(GATE_FOR_DEFECT))
def test_qa_fails_each_defect_with_its_gate(trained, tmp_path, capsys, defect):
    _, stream = trained
    net = train()
    arrays = {
        n: (DType.F32, tuple(v.shape), v.detach().float().contiguous().numpy())
        for n, v in net.state_dict().items()
    }
    bad_arrays, bad_cfg = loss.DEFECTS[defect](arrays, net.config)
    bad = tmp_path / "bad.apr"
    write_model(model_from_arrays(bad_arrays, bad_cfg), bad)
    code, out, _ = run(
        capsys,
        "qa",
        bad,
        "--stream",
        stream,
        "--max-loss",
        loss.CLEAN_LIMIT,
        "--no-parity",
        "--json",
    )
    report = json.loads(out)
    assert code == 1 and GATE_FOR_DEFECT[defect] in report["failed"], report["failed"]


def test_qa_names_nan_weights_and_config_mismatch(trained, tmp_path, capsys):
    path, _ = trained
    arrays, cfg = arrays_of(path)
    arrays["model.layers.0.mlp.up_proj.weight"][2][3, 3] = np.inf
    nan = tmp_path / "nan.apr"
    write_model(model_from_arrays(arrays, cfg), nan)
    code, out, _ = run(capsys, "qa", nan, "--no-parity")
    assert code == 1 and "QA: FAIL" in out and "tensors" in out
    wrong = tmp_path / "wrong.apr"
    write_model(model_from_arrays(arrays, dataclasses.replace(cfg, intermediate_size=64)), wrong)
    code, out, _ = run(capsys, "qa", wrong, "--no-parity", "--json")
    report = json.loads(out)
    assert code == 1 and "load" in report["failed"]
    load = next(g for g in report["gates"] if g["name"] == "load")
    assert "intermediate_size: config 64, weights 96" in load["detail"]


def test_trace_of_a_model_on_another_backend_and_dtype(three_layers, capsys):
    code, out, _ = run(
        capsys, "trace", three_layers, "--tokens", TOKENS, "--dtype", "float64", "--scope", "last"
    )
    assert code == 0 and "float64" in out
    assert torch.get_default_dtype() == torch.float32
