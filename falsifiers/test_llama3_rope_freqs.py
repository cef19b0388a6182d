"""Falsifiers for Llama-3 GGUFs and ``rope_freqs.weight`` (llama3 rope scaling as llama.cpp
carries it): FALSIFY-GGUFREAL-005 (gguf-real-files-v1) and FALSIFY-LLAMACPP-004
(gguf-llamacpp-parity-v1). In a module of their own so that the evidence of those
contracts' other falsifiers stays about unchanged test files."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from gguf import GGUFReader

from aprlib import convert, diff_models, open_model
from aprlib.cli.main import main as apr
from aprlib.forward.logits import DTYPE_GATES, compare_logits, llamacpp_logits, reference_logits
from falsifiers.llama3_rope import build_llama3_tiny, hf_rope_scaling
from falsifiers.llamacpp_converter import convert_hf_to_gguf
from falsifiers.llamacpp_oracle import require_llama_cpp
from falsifiers.test_gguf_llamacpp_parity_v1 import tokens_for
from falsifiers.test_gguf_real_files_v1 import PRE
from falsifiers.test_tokenizer_fidelity_v1 import VOCAB, hf_folder_with_tokenizer


def check_llama3_rope_freqs(work: Path) -> dict[str, Any]:
    """llama.cpp's GGUF of a Llama with llama3 rope scaling carries ``rope_freqs.weight``
    and no scaling key: it opens, the scaling is recovered from the divisors, the diff
    against the HF source is clean (no EXTRA/MISSING tensor, config equal) and the
    safetensors it converts back to states the same ``rope_scaling``."""
    work.mkdir(parents=True, exist_ok=True)
    tiny = build_llama3_tiny(work / "tiny", vocab_size=VOCAB)
    folder, _ = hf_folder_with_tokenizer(tiny, PRE["llama"], work)
    gguf = convert_hf_to_gguf(folder, work / "llama-cpp-llama3.gguf", PRE["llama"], "f32")
    names = [t.name for t in GGUFReader(gguf).tensors]
    assert "rope_freqs.weight" in names, f"llama.cpp wrote no rope_freqs.weight: {names[:5]}"
    with open_model(folder) as hf, open_model(gguf) as theirs:
        assert theirs.config.rope_scaling == hf_rope_scaling(), theirs.config.rope_scaling
        assert "rope_freqs.weight" not in theirs.tensors
        report = diff_models(hf, theirs)
        line = report.diagnosis["line"]
        assert report.clean and not report.config and not report.tokenizer, line
    (work / "back").mkdir()
    convert(gguf, work / "back" / "model.safetensors")
    back = json.loads((work / "back" / "config.json").read_text())
    assert back["rope_scaling"] == hf_rope_scaling(), back.get("rope_scaling")
    with open_model(folder) as hf, open_model(work / "back" / "model.safetensors") as mb:
        again = diff_models(hf, mb)
        assert again.clean and not again.config, again.diagnosis["line"]
    return {"diagnosis": line[:300], "rope_scaling": back["rope_scaling"]}


@pytest.mark.falsifies("FALSIFY-GGUFREAL-005")
def test_llama_cpp_llama3_gguf_recovers_rope_scaling_from_rope_freqs(tmp_path, evidence):
    evidence.record(**check_llama3_rope_freqs(tmp_path))


def check_llama3_rope_parity(work: Path, context: int = 8192) -> dict[str, float]:
    """Our F32 GGUF of a llama3-scaled Llama: llama.cpp applies the scaling only through
    ``rope_freqs.weight`` (it has no key for it), so its logits meet the F32 gate of our
    reference forward only if the writer put the divisors there, and put them right.
    ``context`` 16: the 40 tokens run past the original context, where the scaling bites."""
    require_llama_cpp()
    tiny = build_llama3_tiny(work / "tiny", context=context)
    tokens = tokens_for(4)
    gguf = work / "llama3.gguf"
    assert apr(["convert", str(tiny.safetensors), str(gguf), "--dtype", "f32"]) == 0
    reference = reference_logits(tiny.safetensors, tokens)
    theirs = llamacpp_logits(gguf, tokens)
    c = compare_logits(reference, theirs, tokens, tokens, DTYPE_GATES["f32"])
    assert c.verdict == "PASS", f"llama3 rope: failed {c.failed}: {c.gates}"
    return {"kl_mean": c.kl_mean, "top1": c.top1, "nmse": c.nmse}


@pytest.mark.falsifies("FALSIFY-LLAMACPP-004")
@pytest.mark.parametrize("context", [8192, 16])
def test_llama3_scaled_gguf_in_llamacpp_equals_reference(tmp_path, context, evidence):
    evidence.record(**check_llama3_rope_parity(tmp_path, context))
