"""Benchmark the reference forward, trace and bisect (issue 11) on Qwen2.5-0.5B shapes.

Random float32 weights of Qwen2.5-0.5B's shape (tied, 24 layers), batch 1 x 128 tokens,
this CPU. Measured in one run, each against its baseline:

* our forward vs transformers' forward on the very same weight tensors (target <= 1.1x);
* a forward with every capture point traced vs a plain one (target < +30 %);
* bisect of A vs B (two files, a float64 reference beside them) vs running A's and B's
  forwards once each (target < 3x); bisect is the whole `apr bisect` in a fresh
  interpreter, from before torch is imported, and its start-up (imports, opening both
  files) is printed apart from its compute;
* bisect's peak RSS in a fresh interpreter vs one model's float32 size (target < 2x).

Bisect and its floor are timed in alternating rounds (``--bisect-rounds``), each the best
of its rounds, so that load from other work on a shared machine falls on both alike (the
floor was always a best of three; a median bisect beside it counted any such load against
bisect alone). Every figure is printed beside its same-run baseline, under the CPU model.

    python bench/bench_forward.py [--layers 24] [--repeat 3]

The bench writes two ~2 GB safetensors files under a temporary folder and needs ~8 GB RAM;
it is not part of the test suite.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

# run as a script: the repository root first on sys.path, and bench/ itself off it, or
# bench/kernels.py shadows the `kernels` package transformers imports
HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != HERE]
sys.path.insert(0, str(HERE.parent))

from aprlib import DType, Transformer, model_from_arrays, qwen2_0_5b, write_model  # noqa: E402
from aprlib.compare.shapes import expected_shapes  # noqa: E402
from aprlib.forward.trace import trace_forward  # noqa: E402
from bench.machine import cpu_model  # noqa: E402

BISECT = (  # timed from before torch is imported: a user waits for all of it
    "import re, sys, time\n"
    "start = time.perf_counter()\n"
    "import torch\n"
    "import aprlib.forward.bisect\n"
    "from aprlib.cli.main import main\n"
    "loading = time.perf_counter() - start\n"
    "load_side = aprlib.forward.bisect.load_side\n"
    "def timed_load(*args, **kwargs):\n"
    "    global loading\n"
    "    begin = time.perf_counter()\n"
    "    net = load_side(*args, **kwargs)\n"
    "    loading += time.perf_counter() - begin\n"
    "    return net\n"
    "aprlib.forward.bisect.load_side = timed_load\n"
    "rc = main(['bisect', sys.argv[1], sys.argv[2], '--tokens', sys.argv[3], '--json'])\n"
    "took = time.perf_counter() - start\n"
    "status = open('/proc/self/status').read()\n"
    "hwm = re.search(r'VmHWM:\\s+(\\d+) kB', status).group(1)\n"
    "print('VmHWM', hwm, took, loading, torch.get_num_threads(), file=sys.stderr)\n"
)


def best(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def interleaved(fns, repeat: int) -> list[float]:
    """Best time of each, taken in alternating rounds so that a shared machine's load
    falls on every contender alike."""
    times: list[list[float]] = [[] for _ in fns]
    for _ in range(repeat):
        for fn, out in zip(fns, times, strict=True):
            start = time.perf_counter()
            fn()
            out.append(time.perf_counter() - start)
    return [min(t) for t in times]


def random_state(cfg, seed: int) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    state = {}
    for name, shape in expected_shapes(cfg).items():
        x = torch.randn(shape, generator=gen)
        state[name] = 1.0 + 0.1 * x if "norm" in name else x * 0.02
    return state


def write(state: dict[str, torch.Tensor], cfg, folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    arrays = {n: (DType.F32, tuple(v.shape), v.numpy()) for n, v in state.items()}
    path = folder / "model.safetensors"
    write_model(model_from_arrays(arrays, cfg), path)
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=24)
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--bisect-rounds", type=int, default=3)
    args = parser.parse_args()

    import dataclasses

    cfg = dataclasses.replace(qwen2_0_5b(), num_hidden_layers=args.layers)
    state = random_state(cfg, 0)
    model_bytes = sum(v.numel() * 4 for v in state.values())
    tokens = torch.randint(
        0, cfg.vocab_size, (1, args.tokens), generator=torch.Generator().manual_seed(1)
    )
    print(f"CPU: {cpu_model()}, {os.cpu_count()} logical CPUs; torch {torch.__version__}")
    print(
        f"Qwen2.5-0.5B shape, {args.layers} layers, {model_bytes / 1e9:.2f} GB float32, "
        f"1x{args.tokens} tokens, torch threads {torch.get_num_threads()}"
    )

    t_hf, t_ours, t_trace, diff = time_forward(cfg, state, tokens, args.repeat)
    print(
        f"forward   transformers {t_hf:.3f} s   ours {t_ours:.3f} s   ratio "
        f"{t_ours / t_hf:.2f}x (target <= 1.1x)   max|Δlogits| {diff:.2g}"
    )
    print(
        f"trace     plain {t_ours:.3f} s   traced {t_trace:.3f} s   overhead "
        f"{(t_trace / t_ours - 1) * 100:+.0f} % (target < +30 %)"
    )
    with tempfile.TemporaryDirectory(prefix="bench-forward-") as tmp:
        layer = args.layers // 2
        a, b = write_pair(state, cfg, Path(tmp), layer)
        state.clear()
        t_two, rss, t_bisect, t_start, found, threads, t_median = time_bisect(
            a, b, tokens, args.bisect_rounds
        )
    print(
        f"bisect    A+B forwards {t_two:.3f} s   bisect {t_bisect:.3f} s   ratio "
        f"{t_bisect / t_two:.2f}x (target < 3x)   introduced at {found} "
        f"(injected: layers.{layer}.attn.k.post_bias)"
    )
    print(
        f"bisect    best of {args.bisect_rounds} rounds each; bisect's median "
        f"{t_median:.3f} s = {t_median / t_two:.2f}x; torch threads in bisect {threads}"
    )
    print(
        f"bisect    of which start-up {t_start:.3f} s (import torch and aprlib, open both "
        f"files), compute {t_bisect - t_start:.3f} s = {(t_bisect - t_start) / t_two:.2f}x "
        "the forwards (the floor has no start-up: both models loaded and warm)"
    )
    print(
        f"bisect    peak RSS {rss / 1e9:.2f} GB   one model {model_bytes / 1e9:.2f} GB   "
        f"ratio {rss / model_bytes:.2f}x (target < 2x)"
    )


def time_forward(cfg, state, tokens, repeat: int) -> tuple[float, float, float, float]:
    """transformers and ours on the very same weight tensors; then ours traced."""
    from transformers import AutoConfig, AutoModelForCausalLM

    from aprlib.config.modelconfig import to_hf

    hf_cfg = to_hf(cfg)
    hf = AutoModelForCausalLM.from_config(
        AutoConfig.for_model(hf_cfg.pop("model_type"), **hf_cfg), dtype=torch.float32
    ).eval()
    head = {"lm_head.weight": state["model.embed_tokens.weight"]}
    hf.load_state_dict({**state, **head}, strict=True, assign=True)
    ours = Transformer(cfg)
    ours.load_state_dict(state, strict=True, assign=True)
    ids = tokens[0].tolist()
    with torch.no_grad():
        diff = float((ours(tokens) - hf(tokens).logits).abs().max())
        t_hf, t_ours, t_trace = interleaved(
            [lambda: hf(tokens), lambda: ours(tokens), lambda: trace_forward(ours, ids)], repeat
        )
    return t_hf, t_ours, t_trace, diff


def write_pair(state, cfg, folder: Path, layer: int) -> tuple[Path, Path]:
    """A, and B with one k bias 10x (the incident), as two safetensors files."""
    a = write(state, cfg, folder / "a")
    bias = f"model.layers.{layer}.self_attn.k_proj.bias"
    b = write({**state, bias: state[bias] * 10}, cfg, folder / "b")
    return a, b


def time_bisect(
    a: Path, b: Path, tokens: torch.Tensor, rounds: int
) -> tuple[float, int, float, float, str, int, float]:
    """The floor and ``apr bisect`` in alternating rounds: (best floor, peak RSS, best
    bisect, its start-up, first point, bisect's torch threads, median bisect)."""
    net_a, net_b = Transformer.from_file(a), Transformer.from_file(b)
    floors, runs = [], []
    for _ in range(rounds):
        floors.append(time_two_forwards(net_a, net_b, tokens))
        runs.append(run_bisect(a, b, tokens))
    took, start, _, found, threads = min(runs)
    return (
        min(floors),
        max(r[2] for r in runs),
        took,
        start,
        found,
        threads,
        statistics.median(r[0] for r in runs),
    )


def time_two_forwards(net_a: Transformer, net_b: Transformer, tokens: torch.Tensor) -> float:
    """The floor bisect is held to: A's and B's forwards, each warm, best of three."""
    with torch.no_grad():
        net_a(tokens), net_b(tokens)  # warm both: page faults are not the forward
        return best(lambda: (net_a(tokens), net_b(tokens)), 3)


def run_bisect(a: Path, b: Path, tokens: torch.Tensor) -> tuple[float, float, int, str, int]:
    """``apr bisect A B`` in a fresh interpreter: (seconds, of which start-up seconds, peak
    RSS bytes, first point, torch threads)."""
    ids = ",".join(map(str, tokens[0].tolist()))
    proc = subprocess.run(
        [sys.executable, "-c", BISECT, str(a), str(b), ids],
        capture_output=True,
        text=True,
        check=False,
        cwd=Path(__file__).resolve().parents[1],
    )
    m = re.search(r"VmHWM (\d+) ([\d.]+) ([\d.]+) (\d+)", proc.stderr)
    if m is None:
        raise SystemExit(f"bisect failed: {proc.stderr[-2000:]}")
    hit = re.search(r'"introduced": \[\s*"([^"]+)"', proc.stdout)
    return (
        float(m.group(2)),
        float(m.group(3)),
        int(m.group(1)) * 1024,
        str(hit.group(1) if hit else None),
        int(m.group(4)),
    )


if __name__ == "__main__":
    main()
