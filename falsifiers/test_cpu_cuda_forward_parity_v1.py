"""Falsifiers of cpu-cuda-forward-parity-v1: the Triton backend runs the reference forward.

Same weights, same tokens: the model with every op routed through
``provable_kernels.TritonOps`` (the interpreter on a CPU host, native on a GPU) against the
torch reference forward in the same dtype, both held against the float64 reference pass,
under the earned bound of ``provable_kernels.bounds``. The incident: a CUDA forward with a
loss above ln(vocab) beside a sensible CPU forward of the same weights.
"""

from __future__ import annotations

import pytest
import torch

import provable_kernels
from aprlib import Transformer
from aprlib.forward.model import KVCache, as_reference64
from falsifiers import kernel_cases as kc
from provable_kernels import ParityResult

MODELS = [("qwen2", False), ("llama", True)]
SEEDS = {"qwen2": 1201, "llama": 1202}


def backends(tiny, dtype: torch.dtype, device: torch.device):
    """(triton, reference, float64 reference) over one file's weights."""
    triton = Transformer.from_file(
        tiny.safetensors, dtype=dtype, device=device, ops=provable_kernels.TritonOps()
    )
    reference = Transformer.from_file(tiny.safetensors, dtype=dtype, device=device)
    ref64 = as_reference64(Transformer.from_file(tiny.safetensors, device=device))
    return triton, reference, ref64


def tokens_for(seed: int, vocab: int, shape: tuple[int, int], device: torch.device):
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(0, vocab, shape, generator=gen).to(device)


def forward_parity(tiny, dtype: str, device: str, seed: int) -> tuple[ParityResult, ...]:
    """Logits and loss of the Triton backend against the reference, under the earned bound."""
    dt, dev = kc.DTYPES[dtype], kc.device_of(device)
    triton, reference, ref64 = backends(tiny, dt, dev)
    tokens = tokens_for(seed, triton.config.vocab_size, (2, 17), dev)
    with torch.no_grad():
        logits = provable_kernels.check_parity(
            "logits", triton(tokens), reference(tokens), ref64(tokens), dt, seed
        )
        # the loss's inputs carry the dtype's rounding: one unit of it is the floor (eps)
        loss = provable_kernels.check_parity(
            "loss", triton.loss(tokens), reference.loss(tokens), ref64.loss(tokens), dt, seed
        )
    return logits, loss


@pytest.mark.falsifies("FALSIFY-FWDPAR-001")
@pytest.mark.parametrize("device", kc.DEVICES)
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize(("architecture", "tied"), MODELS)
def test_triton_forward_logits_and_loss_within_bound(
    architecture, tied, dtype, device, tiny_factory, evidence
):
    log = kc.CaseLog()
    log.check(
        *forward_parity(tiny_factory(architecture, tied=tied), dtype, device, SEEDS[architecture])
    )
    log.record(evidence)


@pytest.mark.falsifies("FALSIFY-FWDPAR-002")
@pytest.mark.parametrize("device", kc.DEVICES)
@pytest.mark.parametrize(("architecture", "tied"), MODELS)
def test_triton_decode_with_kv_cache_within_bound(
    architecture, tied, device, tiny_factory, evidence
):
    tiny = tiny_factory(architecture, tied=tied)
    dev = kc.device_of(device)
    triton, reference, ref64 = backends(tiny, torch.float32, dev)
    seed = SEEDS[architecture] + 10
    prompt = tokens_for(seed, triton.config.vocab_size, (1, 9), dev)
    caches = [KVCache(), KVCache(), KVCache()]
    log = kc.CaseLog()
    with torch.no_grad():
        step = prompt
        for i in range(4):  # the prompt, then three one-token steps (Tq = 1 < Tk)
            outs = [
                net(step, cache)
                for net, cache in zip((triton, reference, ref64), caches, strict=True)
            ]
            log.check(provable_kernels.check_parity(f"decode step {i}", *outs, torch.float32, seed))
            step = outs[2][:, -1:].argmax(-1)
    log.record(evidence, steps=4)


# planted kernel bug -> the capture point bisect must name as the first that introduces it
PLANTED = {
    "rms_norm eps outside sqrt": (
        "rms_norm",
        "_rms_norm_kernel",
        [("1.0 / tl.sqrt(mean_sq + eps)", "1.0 / (tl.sqrt(mean_sq) + eps)")],
        "layers.0.attn_norm",
    ),
    "rope wrong half": (
        "rope",
        "_rope_kernel",
        [("x1 * cos1 - x2 * sin1", "x1 * cos1 + x2 * sin1")],
        "layers.0.attn.q.rope",
    ),
    "attention kv-head mapping": (
        "attention",
        "_attention_kernel",
        [("kv_h = h // group", "kv_h = h % (n_q_heads // group)")],
        "layers.0.attn.out",
    ),
    "swiglu sigmoid sign": (
        "swiglu",
        "_swiglu_kernel",
        [("g / (1.0 + tl.exp(-g)) * u", "g / (1.0 + tl.exp(g)) * u")],
        "layers.0.mlp.swiglu",
    ),
    "linear K tail dropped": (
        "linear",
        "_linear_kernel",
        [("for k0 in range(0, K, BLOCK_K):", "for k0 in range(0, K - BLOCK_K + 1, BLOCK_K):")],
        "layers.0.mlp.down",  # the first K (160) that is not a multiple of its block
    ),
}


@pytest.mark.falsifies("FALSIFY-FWDPAR-003")
@pytest.mark.parametrize("bug", list(PLANTED))
def test_bisect_names_the_capture_point_of_a_planted_kernel_bug(
    bug, tiny_factory, monkeypatch, tmp_path, evidence
):
    import importlib

    from aprlib.forward.bisect import bisect, load_side, twin
    from falsifiers.kernel_mutants import plant

    module, kernel, edits, expected = PLANTED[bug]
    path = tiny_factory("qwen2", tied=False).safetensors
    tokens = tokens_for(SEEDS["qwen2"] + 20, 96, (1, 11), torch.device("cpu"))[0].tolist()
    reference = load_side(path)
    assert bisect(reference, twin(reference, "triton"), tokens).clean, "clean before planting"
    plant(
        monkeypatch, tmp_path, importlib.import_module(f"provable_kernels.{module}"), kernel, *edits
    )
    report = bisect(reference, twin(reference, "triton"), tokens)
    introduced = [p.name for p in report.introduced]
    evidence.record(first_introduced=introduced[0] if introduced else None, expected=expected)
    assert introduced and introduced[0] == expected, f"bisect named {introduced[:3]}"
