"""Falsifiers of gguf-llamacpp-parity-v1: real llama.cpp on our GGUF vs our reference."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from aprlib import DType, model_from_arrays, open_model, write_model
from aprlib.cli import main as apr
from aprlib.dtypes import from_float32
from aprlib.logits import DTYPE_GATES, compare_logits, llamacpp_logits, reference_logits
from falsifiers.llamacpp_oracle import require_llama_cpp

WIDE = dict(hidden_size=256, intermediate_size=512)  # Q4_K needs rows of 256
EARNED_M = 3.0


def gguf_in(src: Path, dst: Path, dtype: DType) -> Path:
    """2-D weights in ``dtype``, 1-D (norms, biases) in F32, as llama.cpp's converter writes."""
    with open_model(src) as model:
        arrays = {}
        for t in model:
            d = dtype if len(t.shape) == 2 else DType.F32
            arrays[t.name] = (d, t.shape, from_float32(t.to_float32(), d))
        write_model(model_from_arrays(arrays, model.config), dst)
    return dst


def tokens_for(seed: int) -> list[int]:
    return [int(t) for t in np.random.default_rng(seed).integers(0, 96, 40)]


def check_parity(tiny, work: Path, dtype: DType) -> dict[str, float]:
    require_llama_cpp()
    tokens = tokens_for(1)
    reference = reference_logits(tiny.safetensors, tokens)
    gguf = gguf_in(tiny.safetensors, work / f"m-{dtype.name}.gguf", dtype)
    theirs = llamacpp_logits(gguf, tokens)
    c = compare_logits(reference, theirs, tokens, tokens, DTYPE_GATES[dtype.name.lower()])
    assert c.verdict == "PASS", f"{dtype.name}: failed {c.failed}: {c.gates}"
    out = {"kl_mean": c.kl_mean, "top1": c.top1, "nmse": c.nmse}
    if dtype is not DType.F32:  # the bound earned from the dtype's own error in this run
        ours_q = reference_logits(gguf, tokens)
        own = compare_logits(reference, ours_q, tokens, tokens).kl_mean
        assert c.kl_mean <= EARNED_M * own + 1e-9, (
            f"{dtype.name}: llama.cpp KL {c.kl_mean:.3g} > {EARNED_M} x the dequantised "
            f"weights' own KL {own:.3g}"
        )
        out["own_kl"] = own
    return out


@pytest.mark.falsifies("FALSIFY-LLAMACPP-001")
@pytest.mark.parametrize("arch", ["qwen2", "llama"])
def test_f32_gguf_in_llamacpp_equals_reference(tiny_factory, tmp_path, arch, evidence):
    evidence.record(**check_parity(tiny_factory(arch, **WIDE), tmp_path, DType.F32))


@pytest.mark.falsifies("FALSIFY-LLAMACPP-002")
@pytest.mark.parametrize("dtype", [DType.BF16, DType.Q8_0, DType.Q4_K], ids=lambda d: d.name)
@pytest.mark.parametrize("arch", ["qwen2", "llama"])
def test_quantised_gguf_in_llamacpp_within_dtype_bound(
    tiny_factory, tmp_path, arch, dtype, evidence
):
    evidence.record(**check_parity(tiny_factory(arch, **WIDE), tmp_path, dtype))


ROOT = Path(__file__).resolve().parents[1]
CHILD = (
    "import sys, numpy as np\n"
    "from aprlib.logits import llamacpp_logits\n"
    "tokens = [int(t) for t in sys.argv[3].split(',')]\n"
    "np.save(sys.argv[2], llamacpp_logits(sys.argv[1], tokens))\n"
)


def llamacpp_logits_in_child(gguf: Path, tokens: list[int], work: Path) -> np.ndarray:
    """llama.cpp in a child process: a GGUF it cannot run aborts the child, not pytest."""
    out = work / f"{gguf.stem}-logits.npy"
    proc = subprocess.run(
        [sys.executable, "-c", CHILD, str(gguf), str(out), ",".join(map(str, tokens))],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    said = [ln for ln in proc.stderr.splitlines() if "ggml" in ln or "Error" in ln][-2:]
    assert proc.returncode == 0, f"llama.cpp died on {gguf.name} (exit {proc.returncode}): {said}"
    return np.load(out)


def check_half_precision_convert(tiny, work: Path) -> dict[str, float]:
    """`apr convert` of an F16/BF16 HF model, dtype kept, must give a GGUF llama.cpp runs.

    The reference runs the same half-precision weights in float32, so llama.cpp's only error
    is rounding its activations to the weights' dtype: the BF16 gate (rounding step 2^-8)
    bounds it for F16 too, whose step is 2^-11."""
    require_llama_cpp()
    tokens = tokens_for(2)
    gguf = work / "half.gguf"
    assert apr(["convert", str(tiny.safetensors), str(gguf)]) == 0
    reference = reference_logits(tiny.safetensors, tokens)
    theirs = llamacpp_logits_in_child(gguf, tokens, work)
    c = compare_logits(reference, theirs, tokens, tokens, DTYPE_GATES["bf16"])
    assert c.verdict == "PASS", f"{tiny.dtype}: failed {c.failed}: {c.gates}"
    return {"kl_mean": c.kl_mean, "top1": c.top1, "nmse": c.nmse}


@pytest.mark.falsifies("FALSIFY-LLAMACPP-003")
@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
@pytest.mark.parametrize("arch", ["qwen2", "llama"])
def test_half_precision_model_converted_runs_in_llamacpp(
    tiny_factory, tmp_path, arch, dtype, evidence
):
    tiny = tiny_factory(arch, dtype=dtype, **WIDE)
    evidence.record(**check_half_precision_convert(tiny, tmp_path))
