"""The llama.cpp oracle, portable build against a native one: same parity, what speed?

    python bench/bench_llamacpp_build.py --native DIR [--layers 4] [--tokens 128] [--json]

``requirements.lock`` builds llama-cpp-python for any x86-64 CPU with AVX2 (no
``-march=native``, no AVX-512, no AMX), because a native build dies with SIGILL where the CPU
advertises AMX that the OS or hypervisor does not enable. This measures what that costs.
``DIR`` holds a natively built ``llama_cpp`` package (unzip a wheel built with
``pip wheel --no-cache-dir --no-deps llama-cpp-python==VERSION``); the portable one is the
installed package. For each of Q8_0 and Q4_K, a Qwen2.5-0.5B-shaped model (896 wide, 14
heads, 2 kv heads, FFN 4864, vocab 151936; random weights, ``--layers`` of them) is run by
each build in its own child process (``aprlib.forward.llamacpp``): prompt time per token (best of
``--repeat``, one thread per core of this machine, the child's start-up excluded) and the
parity figures against the reference forward of the same file (NMSE in dB, top-1). A build
that crashes is reported as such (that is the point of the portable one), not timed.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np

from aprlib import DType, OracleError, convert, model_from_arrays, qwen2_0_5b, write_model
from aprlib.compare.shapes import expected_shapes
from aprlib.forward import llamacpp
from aprlib.forward.logits import compare_logits, reference_logits


def random_model(folder: Path, layers: int, seed: int = 0) -> Path:
    cfg = dataclasses.replace(qwen2_0_5b(), num_hidden_layers=layers)
    rng = np.random.default_rng(seed)
    arrays: dict[str, Any] = {}
    for name, shape in expected_shapes(cfg).items():
        x = rng.standard_normal(shape, dtype=np.float32)
        value = 1.0 + 0.1 * x if "norm" in name else 0.02 * x
        arrays[name] = (DType.F32, tuple(shape), value)
    path = folder / "model.safetensors"
    write_model(model_from_arrays(arrays, cfg), path)
    return path


def run_build(
    label: str, pythonpath: str | None, gguf: Path, tokens: list[int], repeat: int
) -> dict[str, Any]:
    """Time and answer of one build, in its own child (the PYTHONPATH picks the build)."""
    llamacpp.close_all()
    saved = os.environ.get("PYTHONPATH")
    if pythonpath:
        os.environ["PYTHONPATH"] = pythonpath
    else:
        os.environ.pop("PYTHONPATH", None)
    try:
        info = llamacpp.system_info()
        llamacpp.logits(gguf, tokens[:4])  # start the child, load the libraries: not timed
        times, logits = [], None
        for _ in range(repeat):
            start = time.perf_counter()
            logits = llamacpp.logits(gguf, tokens)
            times.append(time.perf_counter() - start)
        return {"build": label, "system_info": info, "best_s": min(times), "logits": logits}
    except OracleError as exc:
        return {"build": label, "error": str(exc)}
    finally:
        llamacpp.close_all()
        if saved is None:
            os.environ.pop("PYTHONPATH", None)
        else:
            os.environ["PYTHONPATH"] = saved


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--native", type=Path, required=True, help="folder holding llama_cpp/")
    parser.add_argument(
        "--label", default="native", help="what DIR's build is (e.g. avx512: native minus AMX)"
    )
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    if not (args.native / "llama_cpp" / "__init__.py").is_file():
        parser.error(f"{args.native}: no llama_cpp package there")
    rng = np.random.default_rng(1)
    tokens = [int(t) for t in rng.integers(0, 151936, args.tokens)]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        source = random_model(Path(tmp), args.layers)
        for kind in ("q8_0", "q4_k"):
            gguf = Path(tmp) / f"model-{kind}.gguf"
            convert(source, gguf, DType[kind.upper()])
            reference = reference_logits(gguf, tokens)
            results = [
                run_build("portable", None, gguf, tokens, args.repeat),
                run_build(args.label, str(args.native.resolve()), gguf, tokens, args.repeat),
            ]
            for r in results:
                logits = r.pop("logits", None)
                if logits is not None:
                    c = compare_logits(reference, logits, tokens, tokens)
                    r.update(nmse_db=c.nmse_db, top1=c.top1)
                r["dtype"] = kind
                rows.append(r)
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    print(
        f"{args.layers} layers of Qwen2.5-0.5B shape, {args.tokens}-token prompt, best of "
        f"{args.repeat}, {os.cpu_count()} cores"
    )
    for r in rows:
        if "error" in r:
            print(f"{r['dtype']:5} {r['build']:8} {r['error']}")  # a crash is the finding
            continue
        print(
            f"{r['dtype']:5} {r['build']:8} {r['best_s'] * 1e3 / args.tokens:7.2f} ms/token  "
            f"NMSE {r['nmse_db']:7.1f} dB  top-1 {r['top1']:.3f}"
        )
    for kind in ("q8_0", "q4_k"):
        pair = {r["build"]: r for r in rows if r["dtype"] == kind and "best_s" in r}
        if len(pair) == 2:
            ratio = pair["portable"]["best_s"] / pair[args.label]["best_s"]
            print(f"{kind}: portable takes {ratio:.2f}x the {args.label} build's time")
    return 0


if __name__ == "__main__":
    sys.exit(main())
