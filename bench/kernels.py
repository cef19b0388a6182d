"""Benchmark the Triton kernels on a GPU (issue 12): one command, every figure with its baseline.

    python bench/kernels.py [--json]

In one run on one GPU: the device's copy bandwidth (a 1 GiB device-to-device clone, the
physical floor for bandwidth-bound kernels), then per kernel the Triton time against torch
eager and ``torch.compile`` of the same reference, with GB/s and the share of copy bandwidth
for the bandwidth-bound ones (RMSNorm, RoPE, SwiGLU, dequantisation; target >= 80 %);
attention against ``scaled_dot_product_attention`` (target within 1.25x); fused
cross-entropy's peak memory and time against the unfused reference at vocab 151936 (targets:
2x less memory, no slower); and, when the reference model is importable, the Triton
backend's 0.5B-shape forward against the reference forward. On a machine without CUDA it
says so and exits 0 (the interpreter's timings mean nothing).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

# run as a script: the repository root first on sys.path, so `import provable_kernels`
# is the checkout's
HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != HERE]
sys.path.insert(0, str(HERE.parent))

import torch  # noqa: E402

Row = dict[str, Any]
Case = tuple[str, Callable[..., Any], Callable[..., Any] | None, tuple[Any, ...], int]


def timed(fn: Callable[[], object]) -> float:
    """Median milliseconds of ``fn`` (triton's do_bench: warm-up, L2 flush, CUDA events)."""
    from triton.testing import do_bench

    return float(do_bench(fn, warmup=25, rep=100, return_mode="median"))


def compiled(fn: Callable) -> Callable:
    return torch.compile(fn, dynamic=False)


def copy_bandwidth() -> float:
    """GB/s of a device-to-device clone of 1 GiB (read + write)."""
    src = torch.empty(1 << 30, dtype=torch.uint8, device="cuda")
    ms = timed(lambda: src.clone())
    return 2 * src.numel() / ms / 1e6


def bandwidth_rows(copy_gbs: float) -> list[Row]:
    import provable_kernels

    dev, bf16 = "cuda", torch.bfloat16
    rows: list[Row] = []
    x = torch.randn(8192, 4096, device=dev, dtype=bf16)
    w = torch.randn(4096, device=dev, dtype=bf16)
    q = torch.randn(1, 32, 4096, 128, device=dev, dtype=bf16)
    cos, sin = provable_kernels.rope_cos_sin(128, torch.arange(4096), 10000.0, dtype=bf16)
    cos, sin = cos.to(dev), sin.to(dev)
    gate = torch.randn(8192, 14336, device=dev, dtype=bf16)
    up = torch.randn_like(gate)
    cases: list[Case] = [
        (
            "rms_norm",
            provable_kernels.rms_norm,
            provable_kernels.rms_norm_reference,
            (x, w, 1e-6),
            2 * x.nbytes,
        ),
        (
            "rope",
            provable_kernels.rope,
            provable_kernels.rope_reference,
            (q, cos, sin),
            2 * q.nbytes,
        ),
        (
            "swiglu",
            provable_kernels.swiglu,
            provable_kernels.swiglu_reference,
            (gate, up),
            3 * gate.nbytes,
        ),
    ]
    from aprlib.formats.dtypes import DType, from_float32

    shape = (4096, 4096)
    values = shape[0] * shape[1]
    for kind in ("q8_0", "q4_k"):
        host = torch.randn(4096, 4096).numpy()
        raw = from_float32(host, {"q8_0": DType.Q8_0, "q4_k": DType.Q4_K}[kind])
        raw_t = torch.from_numpy(raw.reshape(-1).copy()).to(dev)
        cases.append(
            (
                f"dequant.{kind}",
                lambda r=raw_t, k=kind: provable_kernels.dequantize(r, k, shape),
                None,
                (),
                raw_t.nbytes + 4 * values,
            )
        )
    for name, kernel, reference, args, nbytes in cases:
        row: Row = {"kernel": name}
        ms = timed(partial(kernel, *args))
        row.update(triton_ms=ms, gbs=nbytes / ms / 1e6, pct_copy=100 * nbytes / ms / 1e6 / copy_gbs)
        if reference is not None:
            row["eager_ms"] = timed(partial(reference, *args))
            fast = compiled(reference)
            fast(*args)
            row["compile_ms"] = timed(partial(fast, *args))
        rows.append(row)
    return rows


def attention_row() -> Row:
    import torch.nn.functional as F

    import provable_kernels

    q = torch.randn(1, 14, 2048, 64, device="cuda", dtype=torch.bfloat16)
    k = torch.randn(1, 2, 2048, 64, device="cuda", dtype=torch.bfloat16)
    v = torch.randn_like(k)
    ours = timed(lambda: provable_kernels.attention(q, k, v))
    sdpa = timed(lambda: F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True))
    eager = timed(lambda: provable_kernels.attention_reference(q, k, v))
    return {"kernel": "attention", "triton_ms": ours, "sdpa_ms": sdpa, "eager_ms": eager,
            "vs_sdpa": ours / sdpa}  # fmt: skip


def cross_entropy_row() -> Row:
    import provable_kernels

    logits = torch.randn(4096, 151936, device="cuda", dtype=torch.bfloat16)
    targets = torch.randint(0, 151936, (4096,), device="cuda")

    def peak(fn: Callable[[], object]) -> int:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        fn()
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - base

    fused = lambda: provable_kernels.cross_entropy(logits, targets)  # noqa: E731
    unfused = lambda: provable_kernels.cross_entropy_reference(logits, targets)  # noqa: E731
    return {
        "kernel": "cross_entropy",
        "triton_ms": timed(fused),
        "eager_ms": timed(unfused),
        "triton_peak_mib": peak(fused) / 2**20,
        "eager_peak_mib": peak(unfused) / 2**20,
    }


def forward_row() -> Row | None:
    """The Triton backend's forward of a 0.5B-shaped model against the reference forward."""
    try:
        from aprlib import Transformer
        from aprlib.config.modelconfig import qwen2_0_5b
    except ImportError:
        return None
    import provable_kernels

    config = qwen2_0_5b()
    tokens = torch.randint(0, config.vocab_size, (1, 512), device="cuda")
    reference = Transformer(config).eval()  # parameters on the meta device until assigned
    state = {
        name: (1.0 if "norm" in name else 0.0)
        + 0.02 * torch.randn(p.shape, device="cuda", dtype=torch.bfloat16)
        for name, p in reference.state_dict().items()
    }
    reference.load_state_dict(state, assign=True)
    triton = Transformer(config, ops=provable_kernels.TritonOps()).eval()
    triton.load_state_dict(state, assign=True)
    with torch.no_grad():
        return {
            "kernel": "forward 0.5B x 512 tokens",
            "triton_ms": timed(lambda: triton(tokens)),
            "eager_ms": timed(lambda: reference(tokens)),
        }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--json", action="store_true", help="one JSON object on stdout")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print("bench/kernels.py needs a CUDA GPU (none here): nothing measured.")
        return 0
    torch.manual_seed(0)
    copy_gbs = copy_bandwidth()
    rows = [*bandwidth_rows(copy_gbs), attention_row(), cross_entropy_row()]
    forward = forward_row()
    if forward is not None:
        rows.append(forward)
    result = {"device": torch.cuda.get_device_name(), "copy_gbs": copy_gbs, "rows": rows}
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    print(f"{result['device']}: copy bandwidth {copy_gbs:.0f} GB/s (1 GiB clone, read + write)")
    for row in rows:
        for base in ("eager_ms", "compile_ms", "sdpa_ms"):
            if base in row:  # > 1: the Triton kernel is faster than that baseline
                row[f"speedup_vs_{base[:-3]}"] = float(row[base]) / float(row["triton_ms"])
        cells = [f"{k} {v:.3f}" if isinstance(v, float) else str(v) for k, v in row.items()]
        print("  " + " | ".join(cells))
    return 0


if __name__ == "__main__":
    sys.exit(main())
