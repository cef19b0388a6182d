"""issue 22, items 6 and 7: `apr inspect` lists what the loaders would refuse, `apr trace
--compare` has a verdict, `apr qa` names a suspected mislabel, usage errors exit 2 first."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import numpy as np
import pytest

from aprlib.cli.main import main

TOKENS = "3,1,4,1,5,9,2,6"


def run(capsys, *argv: object) -> tuple[int, str, str]:
    capsys.readouterr()
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def copy_of(tiny, work: Path, name: str = "m") -> Path:
    folder = work / name
    shutil.copytree(tiny.folder, folder)
    return folder


def edit_config(folder: Path, **changes: object) -> None:
    path = folder / "config.json"
    cfg = json.loads(path.read_text())
    cfg.update(changes)
    path.write_text(json.dumps(cfg))


def edit_tensors(folder: Path, edit) -> None:
    from safetensors.numpy import load_file, save_file

    path = folder / "model.safetensors"
    arrays = load_file(str(path))
    edit(arrays)
    save_file(arrays, str(path), metadata={"format": "pt"})


# --- apr inspect ---------------------------------------------------------------------------


def test_inspect_of_a_consistent_file_has_no_finding(tiny_factory, capsys):
    code, out, _ = run(capsys, "inspect", tiny_factory("qwen2").folder, "--json")
    assert code == 0 and json.loads(out)["findings"] == []


def _kv_heads(folder: Path) -> None:
    edit_config(folder, num_key_value_heads=4)


def _tied(folder: Path) -> None:
    edit_config(folder, tie_word_embeddings=True)


def _ffn_swapped(folder: Path) -> None:
    def swap(arrays):
        for name in list(arrays):
            if ".mlp." in name:
                arrays[name] = np.ascontiguousarray(arrays[name].T)

    edit_tensors(folder, swap)


CASES = {
    "kv-heads": (
        _kv_heads,
        "num_key_value_heads",
        "num_key_value_heads=4 but k_proj has 32 rows = 2 heads x 16",
    ),
    "tied": (_tied, "tie_word_embeddings", "tie_word_embeddings=true but the file also stores"),
    "ffn-swapped": (_ffn_swapped, "intermediate_size", "the transpose of the 160x64"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_inspect_lists_each_contradiction_and_exits_1(tiny_factory, tmp_path, capsys, case):
    edit, field, words = CASES[case]
    folder = copy_of(tiny_factory("qwen2"), tmp_path)
    edit(folder)
    code, out, _ = run(capsys, "inspect", folder)
    assert code == 1, out
    line = next(x for x in out.splitlines() if x.startswith("CONFIG_CONTRADICTS_WEIGHTS"))
    assert field in line and words in out.replace("\n", " "), out
    code, out, _ = run(capsys, "inspect", folder, "--json")
    found = json.loads(out)["findings"]
    assert code == 1 and [f["field"] for f in found] == [field], found


def test_inspect_flags_a_bfloat16_config_over_f16_tensors(tiny_factory, tmp_path, capsys):
    folder = copy_of(tiny_factory("qwen2", dtype="float16"), tmp_path)
    edit_config(folder, torch_dtype="bfloat16")
    code, out, _ = run(capsys, "inspect", folder)
    assert code == 1
    line = next(x for x in out.splitlines() if "torch_dtype" in x and "CONTRADICTS" in x)
    assert "torch_dtype: bfloat16 but the tensors are F16 ×" in line, line
    # a float32 checkpoint under a half-precision torch_dtype is an upcast, not a finding
    folder = copy_of(tiny_factory("qwen2"), tmp_path, "f32")
    edit_config(folder, torch_dtype="bfloat16")
    assert run(capsys, "inspect", folder)[0] == 0


# --- apr trace --compare -------------------------------------------------------------------


def test_trace_compare_has_a_verdict_with_named_gates(tiny_factory, tmp_path, capsys):
    a = tmp_path / "a.json"
    code, _, _ = run(capsys, "trace", tiny_factory("qwen2").folder, "--tokens", TOKENS, "--json", a)
    assert code == 0
    code, out, _ = run(capsys, "trace", a, "--compare", a)
    assert code == 0 and "VERDICT: PASS" in out, out
    data = json.loads(a.read_text())
    point = next(p for p in data["points"] if p["name"] == "layers.1.mlp.swiglu")
    point["std"] *= 10  # one point's spread 10x: a mis-scaled tensor upstream
    b = tmp_path / "b.json"
    b.write_text(json.dumps(data))
    code, out, _ = run(capsys, "trace", a, "--compare", b)
    verdict = next(x for x in out.splitlines() if x.startswith("VERDICT"))
    assert code == 1, out
    assert verdict.startswith("VERDICT: FAIL (std_ratio: 10 at layers.1.mlp.swiglu"), verdict
    assert "bound 1.25" in verdict, verdict
    # the same model in bfloat16: rounding, not a defect, passes the default gates
    bf16 = tmp_path / "bf16.json"
    folder = tiny_factory("qwen2").folder
    run(capsys, "trace", folder, "--tokens", TOKENS, "--dtype", "bfloat16", "--json", bf16)
    code, out, _ = run(capsys, "trace", a, "--compare", bf16)
    assert code == 0 and "VERDICT: PASS" in out, out
    # the bound is the user's to widen, and the verdict follows it
    code, out, _ = run(capsys, "trace", a, "--compare", b, "--max-std-ratio", "20")
    assert code == 0 and "VERDICT: PASS" in out, out


# --- apr qa --------------------------------------------------------------------------------


def _retagged(folder: Path, src, dst) -> None:
    """Every ``src`` tensor's bytes kept, its tag changed to ``dst`` (the mislabel itself)."""
    from safetensors.torch import load_file, save_file

    path = folder / "model.safetensors"
    tensors = load_file(str(path))
    save_file(
        {k: v.view(dst) if v.dtype == src else v for k, v in tensors.items()},
        str(path),
        metadata={"format": "pt"},
    )


@pytest.mark.parametrize(("stored", "tag"), [("bfloat16", "float16"), ("float16", "bfloat16")])
def test_qa_names_a_suspected_mislabel(tiny_factory, tmp_path, capsys, stored, tag):
    import torch

    clean = tiny_factory("qwen2", dtype=stored).folder
    code, out, _ = run(capsys, "qa", clean, "--no-parity", "--json")
    gates = {g["name"]: g for g in json.loads(out)["gates"]}
    assert gates["dtype_label"]["status"] == "PASS", gates["dtype_label"]
    folder = copy_of(tiny_factory("qwen2", dtype=stored), tmp_path)
    _retagged(folder, getattr(torch, stored), getattr(torch, tag))
    code, out, _ = run(capsys, "qa", folder, "--no-parity", "--json")
    report = json.loads(out)
    gate = next(g for g in report["gates"] if g["name"] == "dtype_label")
    assert code == 1 and "dtype_label" in report["failed"], report["failed"]
    names = {"bfloat16": "BF16", "float16": "F16"}
    words = f"this looks like {names[stored]} data tagged {names[tag]}"
    assert f"model.layers.0.mlp.down_proj.weight: {words}" in gate["detail"], gate["detail"]


def test_qa_does_not_suspect_a_clean_f16_file(tiny_factory, capsys):
    _, out, _ = run(
        capsys, "qa", tiny_factory("qwen2", dtype="float16").folder, "--no-parity", "--json"
    )
    gates = {g["name"]: g for g in json.loads(out)["gates"]}
    assert gates["dtype_label"]["status"] == "PASS", gates["dtype_label"]


# --- apr finetune: usage before work -------------------------------------------------------


@pytest.fixture
def no_training(monkeypatch):
    """Importing aprlib.train.finetune (torch, the model) now fails: a check made before it made
    no work."""
    import sys

    monkeypatch.setitem(sys.modules, "aprlib.train.finetune", None)


def test_finetune_unknown_arch_is_a_usage_error_before_any_work(no_training, tmp_path, capsys):
    start = time.monotonic()
    code, _, err = run(
        capsys, "finetune", "--arch", "nonesuch", "--data", tmp_path / "d.bin", "--steps", "1"
    )
    assert code == 2, err
    assert err.startswith("apr: error: unknown --arch 'nonesuch'; one of ") and "qwen2" in err
    assert time.monotonic() - start < 2.0
    code, _, err = run(
        capsys,
        "finetune",
        "--arch",
        "qwen2_0_5b",
        "--config",
        tmp_path,
        "--data",
        tmp_path,
        "--steps",
        "1",
    )
    assert code == 2 and "give --config or --arch, not both" in err, err


def test_finetune_out_exists_is_told_before_any_work(no_training, tmp_path, capsys):
    out = tmp_path / "ckpt.apr"
    out.write_bytes(b"done")
    argv = ["finetune", "--init", tmp_path / "nothing", "--data", tmp_path / "d.bin"]
    code, _, err = run(capsys, *argv, "--steps", "1", "--out", out)
    assert code == 1 and f"{out} exists: pass --resume" in err, err
    assert out.read_bytes() == b"done"


def test_convert_to_another_half_dtype_relabels_torch_dtype(tmp_path, tiny_factory):
    """Our own converter must not write what `apr inspect` calls a contradiction: a BF16
    folder converted with --dtype f16 gets torch_dtype float16, and inspect exits 0."""
    from aprlib import DType, convert, open_model
    from aprlib.cli.main import main

    bf16 = tiny_factory("qwen2", dtype="bfloat16")
    out = tmp_path / "f16.apr"
    report = convert(bf16.safetensors, out, DType.F16)
    assert any("torch_dtype bfloat16 -> float16" in n for n in report.notes)
    with open_model(out) as model:
        assert model.config.torch_dtype == "float16"
    assert main(["inspect", str(out)]) == 0


def test_inspect_reads_torch_dtype_as_diff_does_prefix_and_all():
    """`torch.bfloat16` (as some exporters write it) is the same claim as `bfloat16`: inspect
    and diff share one reading of the config (consistency.config_dtype)."""
    from types import SimpleNamespace

    from aprlib.compare.consistency import dtype_contradiction
    from aprlib.formats.dtypes import DType

    tensors = {f"t{i}": SimpleNamespace(dtype=DType.F16) for i in range(3)}
    for said in ("bfloat16", "torch.bfloat16"):
        model = SimpleNamespace(config=SimpleNamespace(torch_dtype=said), tensors=tensors)
        found = dtype_contradiction(model)  # type: ignore[arg-type]
        assert found is not None and f"torch_dtype: {said}" in found[2], (said, found)
