"""``provable_kernels.TritonOps`` against ``aprlib.forward.model.Ops``, op by op, and the kernels'
input checks.

The whole-model parity is a falsifier (cpu-cuda-forward-parity-v1); these pin each op to the
reference op it replaces, with the same earned bound, so a failure names the op.
"""

from __future__ import annotations

import inspect
from pathlib import Path

import numpy as np
import pytest
import torch

import provable_kernels
from aprlib.forward.model import Ops
from falsifiers.kernel_cases import random

REFERENCE, TRITON = Ops(), provable_kernels.TritonOps()


def test_triton_ops_override_every_arithmetic_op_with_the_same_signature():
    public = [n for n, f in inspect.getmembers(Ops, inspect.isfunction) if not n.startswith("_")]
    assert set(public) >= {"rms_norm", "linear", "rope", "attention", "swiglu", "cross_entropy"}
    for name in public:
        ours, theirs = getattr(provable_kernels.TritonOps, name), getattr(Ops, name)
        assert (
            inspect.signature(ours).parameters.keys() == inspect.signature(theirs).parameters.keys()
        )
        # a gather, and the q/k norms' scope rule over the Triton RMSNorm: no arithmetic
        if name not in ("embedding", "qk_norm"):
            assert ours is not theirs, f"TritonOps.{name} falls back to torch"


def op_cases(dtype: torch.dtype):
    x = random(1, (2, 5, 48)).to(dtype)
    q = random(2, (2, 6, 5, 16)).to(dtype)
    k = random(3, (2, 2, 11, 16)).to(dtype)  # a cache: 5 queries after 11 keys
    v = random(4, (2, 2, 11, 16)).to(dtype)
    cos, sin = provable_kernels.rope_cos_sin(16, torch.arange(6, 11), 10000.0)
    yield "rms_norm", (x, (1 + random(5, (48,))).float(), 1e-6)
    yield "linear", (x, random(6, (40, 48)).float() / 7, random(7, (40,)).float())
    yield "add_bias", (x, random(11, (48,)).float())
    yield "rope", (q, cos, sin)
    yield "attention", (q, k, v)
    yield "swiglu", (x, random(8, (2, 5, 48)).to(dtype))
    yield "geglu", (x * 4, random(12, (2, 5, 48)).to(dtype))  # wide: the tanh saturates
    yield "qk_norm", (q, (1 + random(13, (16,))).float(), 1e-6)
    yield "qk_norm", (q, (1 + random(14, (5 * 16,))).float(), 1e-6)  # over the projection
    gen = torch.Generator().manual_seed(0)
    yield (
        "cross_entropy",
        (random(9, (2, 5, 33)).to(dtype), torch.randint(0, 33, (2, 5), generator=gen)),
    )


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_each_triton_op_is_within_the_bound_of_the_reference_op(dtype):
    for name, args in op_cases(dtype):
        wide = tuple(a.double() if a.is_floating_point() else a for a in args if torch.is_tensor(a))
        wide = (*wide, *[a for a in args if not torch.is_tensor(a)])
        eager = getattr(REFERENCE, name)(*args)
        ref64 = getattr(REFERENCE, name)(*wide)
        got = getattr(TRITON, name)(*args)
        # the reference op computes the loss in float32 whatever the logits' dtype
        floor = torch.float32 if name == "cross_entropy" else dtype
        result = provable_kernels.check_parity(
            name, got, eager, ref64, dtype if got.dtype == dtype else floor, 0
        )
        assert result.passed, str(result)


def test_cross_entropy_backward_is_the_kernels_gradient():
    logits = random(10, (3, 7, 50)).float().requires_grad_(True)
    targets = torch.randint(0, 50, (3, 7), generator=torch.Generator().manual_seed(0))
    TRITON.cross_entropy(logits, targets).mul(3.0).backward()
    ours = logits.grad.clone()
    logits.grad = None
    REFERENCE.cross_entropy(logits, targets).mul(3.0).backward()
    assert torch.allclose(ours, logits.grad, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: provable_kernels.linear(torch.ones(2, 3), torch.ones(4, 5)), "do not fit"),
        (
            lambda: provable_kernels.rope(
                torch.ones(1, 1, 2, 3), torch.ones(2, 3), torch.ones(2, 3)
            ),
            "even",
        ),
        (
            lambda: provable_kernels.attention(
                torch.ones(1, 2, 5, 4), torch.ones(1, 2, 3, 4), torch.ones(1, 2, 3, 4)
            ),
            "Tq <= Tk",
        ),
        (
            lambda: provable_kernels.attention(
                torch.ones(1, 3, 2, 4), torch.ones(1, 2, 2, 4), torch.ones(1, 2, 2, 4)
            ),
            "multiple of Hkv",
        ),
        (lambda: provable_kernels.swiglu(torch.ones(3), torch.ones(4)), "differ"),
        (
            lambda: provable_kernels.cross_entropy(torch.ones(2, 5), torch.tensor([0, 5])),
            "outside the vocabulary",
        ),
        (
            lambda: provable_kernels.cross_entropy(
                torch.ones(0, 5), torch.ones(0, dtype=torch.long)
            ),
            "no rows",
        ),
        (
            lambda: provable_kernels.dequantize(torch.zeros(33, dtype=torch.uint8), "q8_0", (32,)),
            "needs 34 bytes",
        ),
        (
            lambda: provable_kernels.dequantize(torch.zeros(34, dtype=torch.uint8), "q5_k", (32,)),
            "unknown",
        ),
        (
            lambda: provable_kernels.rope_cos_sin(
                8, torch.arange(3), 1e4, {"rope_type": "yarn", "factor": 2}
            ),
            "not supported",
        ),
    ],
)
def test_bad_inputs_raise_a_one_line_value_error(call, message):
    with pytest.raises(ValueError, match=message) as info:
        call()
    assert "\n" not in str(info.value)


def test_dequantize_handles_nan_and_subnormal_scales_like_gguf():
    """fp16 scales that are NaN, Inf or subnormal decode as the gguf package decodes them."""
    blocks = np.zeros((4, 34), dtype=np.uint8)
    blocks[:, 2:] = np.arange(32, dtype=np.int8).view(np.uint8) - 16
    for i, scale in enumerate([np.nan, np.inf, 6e-8, -3.5]):
        blocks[i, :2] = np.array([scale], dtype=np.float16).view(np.uint8)
    raw = torch.from_numpy(blocks.reshape(-1).copy())
    got = provable_kernels.dequantize(raw, "q8_0", (4, 32))
    want = provable_kernels.dequantize_reference(raw, "q8_0", (4, 32))
    assert torch.equal(got.view(torch.int32), want.view(torch.int32))


def test_kernels_run_after_torch_imported_triton_natively():
    """torch._dynamo imports triton (natively) before kernels on a CPU host: still interpreted."""
    import os
    import subprocess
    import sys

    if torch.cuda.is_available():
        pytest.skip("a CUDA host compiles natively")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    code = (
        "import sys, torch, triton\n"
        "import provable_kernels\n"
        "from falsifiers import kernel_cases as kc\n"
        "r = kc.attention_case(1, 2, 2, 9, 3, 24, 'float32', 0.0, 1)\n"
        "print(r.passed, kc.rms_norm_case(3, 40, 'bfloat16', 0.0, 1e-6, 2).passed)\n"
    )
    root = Path(__file__).resolve().parents[1]
    done = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300, cwd=root
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == ["True", "True"]


def test_share_of_bound_is_zero_without_error_and_infinite_past_a_zero_bound():
    exact = provable_kernels.ParityResult("k", torch.float32, 1, 0.0, 0.0, 2.0, 0.0)
    wrong = provable_kernels.ParityResult("k", torch.float32, 1, 1e-3, 0.0, 2.0, 0.0)
    assert exact.passed and exact.ratio == 0.0
    assert not wrong.passed and wrong.ratio == float("inf")
