"""Benchmark bisecting an outside engine (issue 24) on Qwen2.5-0.5B shapes, 128 tokens.

Measured in one run, each against its baseline, under the CPU model:

* an activation dump of every capture point written (``write_dump``) and read back as
  capture points (``read_dump``) vs the same bytes written into the page cache and read
  back with plain ``write``/``readinto`` (target: at least 50 % of that speed);
* llama.cpp's forward with the eval callback copying every mapped tensor vs its plain
  forward, both in the oracle's child process (target: under 2x);
* the whole ``apr bisect HF_DIR MODEL.gguf --backend-b llama.cpp`` in a fresh interpreter
  vs llama.cpp's own forward plus our float32 forward of the same weights (target: under
  4x); start-up (imports, opening the files) printed apart.

    python bench/bench_engine_bisect.py [--layers 24] [--tokens 128] [--skip-llamacpp]

Writes a ~2 GB model and its F32 GGUF under a temporary folder; not part of the test suite.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != HERE]
sys.path.insert(0, str(HERE.parent))

from aprlib import Transformer, qwen2_0_5b, read_dump, write_dump  # noqa: E402
from aprlib.forward.dump import canonical_dims, dim_sizes  # noqa: E402
from aprlib.forward.model import capture_graph  # noqa: E402
from bench.bench_forward import best, interleaved, random_state, write  # noqa: E402
from bench.machine import cpu_model  # noqa: E402


def all_points(cfg, n_tokens: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Random float32 activations of every capture point, canonical layouts."""
    rng = np.random.default_rng(seed)
    out = {}
    for point in capture_graph(cfg.num_hidden_layers):
        sizes = dim_sizes(point, cfg, n_tokens)
        shape = [sizes[d] for d in canonical_dims(point)]
        out[point] = rng.standard_normal(shape, dtype=np.float32)
    return out


def copy_through_page_cache(points: dict[str, np.ndarray], path: Path) -> None:
    """The same bytes written from memory into the page cache and read back out: the
    floor of any writer and reader of them (a plain write() and readinto())."""
    with open(path, "wb") as f:
        for array in points.values():
            f.write(memoryview(array).cast("B"))
    back = bytearray(path.stat().st_size)
    with open(path, "rb") as f:
        f.readinto(back)


def bench_dump(cfg, n_tokens: int, folder: Path, repeat: int) -> None:
    points = all_points(cfg, n_tokens)
    path, raw = folder / "dump.safetensors", folder / "raw.bin"
    tokens = list(range(n_tokens))
    write_dump(path, tokens, points, engine="bench")
    size = path.stat().st_size
    t_copy, t_write, t_read = interleaved(
        [
            lambda: copy_through_page_cache(points, raw),
            lambda: write_dump(path, tokens, points, engine="bench"),
            lambda: read_dump(path, cfg),
        ],
        repeat,
    )
    print(
        f"dump      {len(points)} points, {size / 1e9:.2f} GB: write {t_write:.3f} s + read "
        f"{t_read:.3f} s vs the same bytes written to and read back from the page cache "
        f"{t_copy:.3f} s: {t_copy / (t_write + t_read) * 100:.0f} % of its speed (target >= 50 %)"
    )


def bench_llamacpp(cfg, n_tokens: int, folder: Path, repeat: int) -> None:
    from aprlib import convert
    from aprlib.forward.llamacpp import activations

    state = random_state(cfg, 0)
    src = write(state, cfg, folder / "hf")
    del state
    gguf = folder / "model.gguf"
    convert(src, gguf)
    tokens = torch.randint(
        0, cfg.vocab_size, (n_tokens,), generator=torch.Generator().manual_seed(1)
    ).tolist()
    activations(gguf, tokens[:4], plain=True)  # child started, model file in the page cache
    plain, captured = [], []
    for _ in range(repeat):  # alternating: a shared machine's load falls on both alike
        for out, kwargs in ((plain, {"plain": True}), (captured, {})):
            start = time.perf_counter()
            run = activations(gguf, tokens, **kwargs)
            out.append((run.decode_seconds, time.perf_counter() - start))
            del run
    (d_plain, c_plain), (d_cap, c_cap) = min(plain), min(captured)
    print(
        f"llama.cpp decode plain {d_plain:.3f} s   with the capture callback {d_cap:.3f} s   "
        f"ratio {d_cap / d_plain:.2f}x (target < 2x); whole call (load, decode, arrays to the "
        f"parent) {c_plain:.3f} s -> {c_cap:.3f} s"
    )
    net = Transformer.from_file(src)
    batch = torch.tensor([tokens])
    with torch.no_grad():
        t_ours = best(lambda: net(batch), repeat)
    net = None  # its weights go before bisect's child loads its own
    text = ",".join(map(str, tokens))
    argv = [sys.executable, "-m", "aprlib.cli.main"]
    start = time.perf_counter()
    subprocess.run([*argv, "--version"], check=True, capture_output=True)
    t_start = time.perf_counter() - start
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        command = ["bisect", str(src), str(gguf), "--backend-b", "llama.cpp"]
        done = subprocess.run(
            [*argv, *command, "--tokens", text, "--json"],
            capture_output=True,
            text=True,
        )
        times.append(time.perf_counter() - start)
        if done.returncode not in (0, 1):
            raise SystemExit(done.stderr[-2000:])
    t_bisect = min(times)
    floor = c_plain + t_ours
    print(
        f"bisect    llama.cpp call {c_plain:.3f} s + ours float32 forward {t_ours:.3f} s = "
        f"{floor:.3f} s;   apr bisect --backend-b llama.cpp, whole process {t_bisect:.3f} s "
        f"(interpreter start {t_start:.2f} s)   ratio {t_bisect / floor:.2f}x (target < 4x); "
        f"exit {done.returncode}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=24)
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--skip-llamacpp", action="store_true")
    args = parser.parse_args()
    cfg = dataclasses.replace(qwen2_0_5b(), num_hidden_layers=args.layers)
    print(f"CPU: {cpu_model()}, {os.cpu_count()} logical CPUs; torch {torch.__version__}")
    print(f"Qwen2.5-0.5B shape, {args.layers} layers, 1x{args.tokens} tokens")
    with tempfile.TemporaryDirectory(prefix="bench-engine-bisect-") as tmp:
        bench_dump(cfg, args.tokens, Path(tmp), args.repeat)
        if not args.skip_llamacpp:
            bench_llamacpp(cfg, args.tokens, Path(tmp), args.repeat)


if __name__ == "__main__":
    main()
