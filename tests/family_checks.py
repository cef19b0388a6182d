"""Checks every family's own test file runs the same way (issue 25's families): one place,
so a family added is a call, not a copy."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from aprlib import convert, diff_models, open_model
from aprlib.cli.main import main as apr
from aprlib.forward.hf_capture import (
    capture_hf,
    eager_experts,
    reference_from_hf,
    reference_points,
)


def check_capture_matches_reference(model: Any, tokens: list[int]) -> dict[str, Any]:
    """transformers' modules give every capture point of our reference forward, in its
    order and layouts, equal to float32 rounding; returns the reference's points."""
    cap = capture_hf(model, tokens)
    ref = reference_points(reference_from_hf(model), tokens)
    assert cap.absent == [] and list(cap.points) == list(ref)
    for name, want in ref.items():
        got = cap.points[name]
        assert got.shape == want.shape, name
        assert float((got - want).abs().max()) <= 2e-5 * float(want.abs().max()), name
    return ref


def check_every_format_and_back(tiny: Any, work: Path, tokens: list[int]) -> Any:
    """HF folder → GGUF → APR → HF folder: the config and every tensor kept (diff clean),
    and transformers loads the folder written back to logits equal to the source's within
    ``1e-5``; returns the model loaded back (a family's test asks more of it)."""
    from transformers import AutoModelForCausalLM

    convert(tiny.folder, work / "m.gguf")
    convert(work / "m.gguf", work / "m.apr")
    (work / "back").mkdir()
    convert(work / "m.apr", work / "back" / "model.safetensors")
    with open_model(tiny.folder) as src:
        for path in (work / "m.gguf", work / "m.apr", work / "back"):
            with open_model(path) as m:
                assert m.config == src.config, path.name
                assert diff_models(src, m).clean, path.name
    back = eager_experts(AutoModelForCausalLM.from_pretrained(work / "back", dtype=torch.float32))
    back.eval()
    with torch.no_grad():
        ours = back(torch.tensor([tokens])).logits
        theirs = tiny.model(torch.tensor([tokens])).logits
    assert float((ours - theirs).abs().max()) < 1e-5
    return back


def diff_of_edited_gguf(
    tiny: Any, work: Path, edit: Callable[[str, Any, Any], tuple[Any, Any]], capsys: Any
) -> dict[str, Any]:
    """``apr diff --json`` of the tiny model against its GGUF with tensors edited (exit 1)."""
    from falsifiers.test_gguf_real_files_v1 import rewrite_gguf

    convert(tiny.folder, work / "m.gguf")
    rewrite_gguf(work / "m.gguf", work / "bad.gguf", tensor=edit)
    capsys.readouterr()
    assert apr(["diff", str(tiny.folder), str(work / "bad.gguf"), "--json"]) == 1
    return json.loads(capsys.readouterr().out)


def llama_cpp_bisect_json(
    folder: Path, gguf: Path, tokens: list[int], capsys: Any
) -> tuple[int, dict[str, Any]]:
    """``apr bisect FOLDER GGUF --backend-b llama.cpp --json``: its exit code and report."""
    capsys.readouterr()
    ids = ",".join(map(str, tokens))
    args = ["bisect", str(folder), str(gguf), "--backend-b", "llama.cpp", "--tokens", ids]
    code = apr([*args, "--json"])
    return code, json.loads(capsys.readouterr().out)
