"""Falsifiers of cpu-cuda-forward-parity-v1: the Triton backend runs the reference forward.

Same weights, same tokens: the model with every op routed through ``kernels.TritonOps`` (the
interpreter on a CPU host, native on a GPU) against the torch reference forward in the same
dtype, both held against the float64 reference pass, under the earned bound of
``kernels.bounds``. The incident: a CUDA forward with a loss above ln(vocab) beside a sensible
CPU forward of the same weights.
"""

from __future__ import annotations

import pytest
import torch

import kernels
from aprlib import Transformer
from aprlib.model import KVCache, as_reference64
from falsifiers import kernel_cases as kc
from kernels import ParityResult

MODELS = [("qwen2", False), ("llama", True)]
SEEDS = {"qwen2": 1201, "llama": 1202}


def backends(tiny, dtype: torch.dtype, device: torch.device):
    """(triton, reference, float64 reference) over one file's weights."""
    triton = Transformer.from_file(
        tiny.safetensors, dtype=dtype, device=device, ops=kernels.TritonOps()
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
        logits = kernels.check_parity(
            "logits", triton(tokens), reference(tokens), ref64(tokens), dt, seed
        )
        # the loss's inputs carry the dtype's rounding: one unit of it is the floor (eps)
        loss = kernels.check_parity(
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
            log.check(kernels.check_parity(f"decode step {i}", *outs, torch.float32, seed))
            step = outs[2][:, -1:].argmax(-1)
    log.record(evidence, steps=4)
