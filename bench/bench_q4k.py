"""Benchmark the Q4_K quantiser (issue 10) against ggml's ``ggml_quantize_chunk`` on one
thread, on the 896x4864 matrix of a Qwen2.5-0.5B MLP, and check the bytes are identical.

    python bench/bench_q4k.py [--repeat 3]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent.parent))


def best(fn, repeat: int) -> tuple[float, np.ndarray]:
    times, out = [], None
    for _ in range(repeat):
        start = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - start)
    return min(times), out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    from aprlib.formats.q4k import quantize_q4_k
    from falsifiers.llamacpp_oracle import ggml_quantize

    x = np.random.default_rng(0).standard_normal((896, 4864)).astype(np.float32) * 0.02
    base_s, ref = best(lambda: ggml_quantize(x, "Q4_K"), args.repeat)
    ours_s, got = best(lambda: quantize_q4_k(x), args.repeat)
    print(f"ggml_quantize_chunk (one thread): {base_s:.3f} s (best of {args.repeat})")
    print(
        f"aprlib quantize_q4_k:             {ours_s:.3f} s -> {ours_s / base_s:.2f}x (target <= 3x)"
    )
    print(f"bytes identical to ggml: {np.array_equal(got, ref)}")
    return 0 if np.array_equal(got, ref) else 1


if __name__ == "__main__":
    sys.exit(main())
