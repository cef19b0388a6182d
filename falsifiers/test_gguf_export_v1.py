"""Falsifiers of gguf-export-v1: our GGUF runs in real llama.cpp with transformers' logits."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from aprlib.cli.main import main as apr
from falsifiers import llamacpp_oracle as oracle

TOKENS = [1, 17, 5, 42, 7, 88, 3, 64, 11, 29]
TOLERANCE = 1e-4


def check_logits(tiny, work: Path) -> float:
    import torch

    oracle.require_llama_cpp()
    gguf = work / "model.gguf"
    assert apr(["convert", str(tiny.safetensors), str(gguf)]) == 0
    ours = oracle.logits(gguf, TOKENS)
    with torch.no_grad():
        reference = tiny.model(torch.tensor([TOKENS])).logits[0].numpy()
    diff = float(np.abs(ours - reference).max())
    assert diff < TOLERANCE, f"llama.cpp and transformers differ by {diff:.3g}"
    return diff


@pytest.mark.falsifies("FALSIFY-GGUF-LLAMACPP-001")
def test_qwen2_gguf_matches_transformers_in_llama_cpp(tiny_factory, tmp_path, evidence):
    diff = check_logits(tiny_factory("qwen2", tied=False), tmp_path)
    evidence.record(max_abs_diff=diff, tolerance=TOLERANCE, tokens=len(TOKENS))


@pytest.mark.falsifies("FALSIFY-GGUF-LLAMACPP-002")
@pytest.mark.parametrize("tied", [False, True], ids=["untied", "tied"])
def test_llama_gguf_matches_transformers_in_llama_cpp(tiny_factory, tmp_path, tied, evidence):
    diff = check_logits(tiny_factory("llama", tied=tied), tmp_path)
    evidence.record(max_abs_diff=diff, tolerance=TOLERANCE, tokens=len(TOKENS))
