"""Benchmark streamed weights (issue 26): a 7B-shaped model on a machine it does not fit.

A synthetic Qwen2.5-7B-shaped model (random BF16 weights, 28 layers, hidden 3584,
intermediate 18944, 28 heads, 4 kv heads, vocab 152064, untied; ~15 GB) is written once
under ``--work`` (default ``/tmp/apr-bench-7b``), with ``b``: the same model with layer 3's
k bias x 10. Measured in one run, each against its baseline:

* ``apr bisect a b --tokens <16>``, whole process: names ``layers.3.attn.k.post_bias``;
  peak RSS against 2 x one layer's float64 weights + 1 GB; wall time against ``cat`` of
  both files to /dev/null (the read floor when they do not fit in the page cache),
  the page cache dropped before each where this process may (root);
* ``apr logits a --tokens <16>``: peak RSS against 2 x one layer's float32 weights + 1 GB;
  wall time against the read floor (``cat a``) + the float32 FLOP time (a bare torch matmul
  of every weight's shape on 16 rows, same thread count, same run) x 1.5;
* at the 0.5B shape: the streamed forward against the held one (load + forward, in this
  process, best of ``--repeat``), and whether their logits are bit-identical.

    python bench/bench_streaming.py [--work DIR] [--skip-7b] [--repeat 3]

Needs ~31 GB of disk for the 7B pair; not part of the test suite.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != HERE]
sys.path.insert(0, str(HERE.parent))

from aprlib import Transformer  # noqa: E402
from bench.bench_convert import QWEN, bf16_header  # noqa: E402
from bench.bench_convert import shapes as tied_shapes  # noqa: E402
from bench.machine import machine  # noqa: E402

QWEN_7B = dict(
    vocab_size=152064,
    hidden_size=3584,
    intermediate_size=18944,
    num_hidden_layers=28,
    num_attention_heads=28,
    num_key_value_heads=4,
)
QWEN_05B = QWEN  # bench_convert's Qwen2.5-0.5B shape
PLANTED = "model.layers.3.self_attn.k_proj.bias"
TOKENS = [151643, 9707, 11, 1879, 0, 1234, 88, 42, 7, 99, 100000, 5, 6, 2048, 13, 17]
POOL = 64 << 20  # random values reused across tensors (generation is not what is timed)


def shapes(cfg: dict, tied: bool) -> list[tuple[str, tuple[int, ...]]]:
    """bench_convert's Qwen2 tensor list (tied), with an output head when untied."""
    out = tied_shapes(cfg)
    return out if tied else [*out, ("lm_head.weight", (cfg["vocab_size"], cfg["hidden_size"]))]


def bf16(values: np.ndarray) -> np.ndarray:
    return ((values.astype(np.float32).view(np.uint32) + 0x8000) >> 16).astype(np.uint16)


def generate(folders: list[Path], cfg: dict, tied: bool, planted: str | None) -> None:
    """Random BF16 safetensors, tensor by tensor, into each folder; the last folder's
    ``planted`` tensor x 10 (the incident's k bias). Norms around 1, weights ~N(0, 0.02)."""
    rng = np.random.default_rng(0)
    pool = bf16(rng.standard_normal(POOL // 2, dtype=np.float32) * 0.02)
    norms = bf16(1 + rng.standard_normal(1 << 16, dtype=np.float32) * 0.1)
    layout = shapes(cfg, tied)
    head = bf16_header(layout)
    config = {
        "architectures": ["Qwen2ForCausalLM"],
        "model_type": "qwen2",
        "rms_norm_eps": 1e-6,
        "rope_theta": 1000000.0,
        "max_position_embeddings": 32768,
        "tie_word_embeddings": tied,
        "torch_dtype": "bfloat16",
        **cfg,
    }
    handles = []
    for folder in folders:
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "config.json").write_text(json.dumps(config))
        fh = open(folder / "model.safetensors.part", "wb")  # noqa: SIM115
        fh.write(head)
        handles.append(fh)
    for name, shape in layout:
        n = int(np.prod(shape))
        source = norms if "norm" in name else pool
        start = int(rng.integers(0, source.size))
        values = np.resize(np.roll(source, -start), n)
        for k, fh in enumerate(handles):
            if name == planted and k == len(handles) - 1:
                wide = (values.astype(np.uint32) << 16).view(np.float32) * 10
                fh.write(bf16(wide).tobytes())
            else:
                fh.write(values.tobytes())
    for folder, fh in zip(folders, handles, strict=True):
        fh.close()
        os.replace(folder / "model.safetensors.part", folder / "model.safetensors")


def drop_caches() -> bool:
    """Empty the page cache (root only), so each command reads from the disk as a user's
    first run does; False where this process may not."""
    os.sync()
    try:
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
        return True
    except OSError:
        return False


def cat(paths: list[Path]) -> float:
    start = time.perf_counter()
    subprocess.run(["cat", *map(str, paths)], stdout=subprocess.DEVNULL, check=True)
    return time.perf_counter() - start


def apr(*args: str) -> tuple[float, dict, str]:
    """A whole ``apr`` process as a user waits for it: wall time, its JSON, its stderr."""
    start = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "aprlib.cli.main", *args, "--json"],
        capture_output=True,
        text=True,
        cwd=HERE.parent,
    )
    wall = time.perf_counter() - start
    if not done.stdout.strip():
        raise SystemExit(f"apr {' '.join(args)} failed ({done.returncode}):\n{done.stderr}")
    return wall, json.loads(done.stdout), done.stderr.strip()


def flop_time(cfg: dict, rows: int) -> float:
    """A bare float32 matmul of every weight's shape on ``rows`` rows (one layer's
    matrices reused for every layer: the FLOPs, not the reading), best of 3."""
    h, i, v = cfg["hidden_size"], cfg["intermediate_size"], cfg["vocab_size"]
    kv = h // cfg["num_attention_heads"] * cfg["num_key_value_heads"]
    mats = [torch.randn(o, n) for o, n in ((h, h), (kv, h), (kv, h), (h, h), (i, h), (i, h))]
    down, x, xi = torch.randn(h, i), torch.randn(rows, h), torch.randn(rows, i)
    head = torch.randn(v, h)
    best = float("inf")
    for _ in range(3):
        start = time.perf_counter()
        for _layer in range(cfg["num_hidden_layers"]):
            for w in mats:
                torch.nn.functional.linear(x, w)
            torch.nn.functional.linear(xi, down)
        torch.nn.functional.linear(x, head)
        best = min(best, time.perf_counter() - start)
    return best


def layer_params(cfg: dict) -> int:
    h, i = cfg["hidden_size"], cfg["intermediate_size"]
    kv = h // cfg["num_attention_heads"] * cfg["num_key_value_heads"]
    return 2 * h * h + 2 * kv * h + 3 * h * i + h + 2 * kv + 2 * h


def bench_7b(work: Path) -> None:
    a, b = work / "a", work / "b"
    if not (a / "model.safetensors").exists() or not (b / "model.safetensors").exists():
        print(f"writing the 7B-shaped pair under {work} (once) ...", flush=True)
        start = time.perf_counter()
        generate([a, b], QWEN_7B, tied=False, planted=PLANTED)
        print(f"  written in {time.perf_counter() - start:.0f} s", flush=True)
    files = [a / "model.safetensors", b / "model.safetensors"]
    size = sum(f.stat().st_size for f in files)
    per_layer = layer_params(QWEN_7B)
    tokens = ",".join(map(str, TOKENS))
    print(
        f"7B shape: {files[0].stat().st_size / 1e9:.1f} GB per file; one layer "
        f"{per_layer * 4 / 1e9:.2f} GB float32, {per_layer * 8 / 1e9:.2f} GB float64"
    )

    cold = drop_caches()
    floor = cat(files)
    drop_caches()
    wall, report, said = apr("bisect", str(a), str(b), "--tokens", tokens)
    found = [c["first_introduced"] for c in report["checks"] if c["first_introduced"]]
    named = found[0]["name"] if found else "nothing"
    verdict = "as planted" if named == "layers.3.attn.k.post_bias" else "WRONG"
    bound = 2 * per_layer * 8 + (1 << 30)
    print(f"\nbisect a b, 16 tokens ({'page cache dropped' if cold else 'page cache as is'}):")
    print(f"  {said}")
    print(f"  introduced: {named} ({verdict})")
    print(
        f"  wall {wall:.1f} s; cat of both files ({size / 1e9:.1f} GB) {floor:.1f} s: "
        f"{wall / floor:.2f}x the read floor"
    )
    print(
        f"  peak RSS {report['peak_rss_bytes'] / 1e9:.2f} GB; bound 2 x layer float64 + 1 GB "
        f"= {bound / 1e9:.2f} GB ({report['peak_rss_bytes'] / bound:.2f} of it)"
    )

    drop_caches()
    read = cat(files[:1])
    drop_caches()
    wall, report, said = apr("logits", str(a), "--tokens", tokens)
    flops = flop_time(QWEN_7B, len(TOKENS))
    bound = 2 * per_layer * 4 + (1 << 30)
    print(f"\nlogits a, 16 tokens: {said}")
    print(
        f"  wall {wall:.1f} s; read floor (cat a) {read:.1f} s + float32 FLOP time "
        f"{flops:.1f} s = {read + flops:.1f} s: {wall / (read + flops):.2f}x (target <= 1.5x)"
    )
    print(
        f"  peak RSS {report['peak_rss_bytes'] / 1e9:.2f} GB; bound 2 x layer float32 + 1 GB "
        f"= {bound / 1e9:.2f} GB ({report['peak_rss_bytes'] / bound:.2f} of it)"
    )


def bench_05b(work: Path, repeat: int) -> None:
    folder = work / "qwen05b"
    if not (folder / "model.safetensors").exists():
        generate([folder], QWEN_05B, tied=True, planted=None)
    tokens = torch.tensor([TOKENS * 8])  # 128 tokens

    def run(stream: bool) -> tuple[float, torch.Tensor]:
        start = time.perf_counter()
        net = Transformer.from_file(folder, stream=stream)
        with torch.no_grad():
            out = net(tokens)
        return time.perf_counter() - start, out

    held, streamed = [], []
    for _ in range(repeat):  # alternating, so other load falls on both alike
        t, logits_held = run(False)
        held.append(t)
        t, logits_streamed = run(True)
        streamed.append(t)
    same = torch.equal(logits_held, logits_streamed)
    print(
        f"\n0.5B shape (BF16 file, float32 compute, 128 tokens, {torch.get_num_threads()} threads):"
    )
    print(
        f"  held load+forward {min(held):.2f} s; streamed {min(streamed):.2f} s: "
        f"{min(streamed) / min(held):.2f}x (target <= 1.10x); logits bit-identical: {same}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=Path("/tmp/apr-bench-7b"))
    parser.add_argument("--skip-7b", action="store_true")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    print(machine())
    bench_05b(args.work, args.repeat)
    if not args.skip_7b:
        bench_7b(args.work)


if __name__ == "__main__":
    main()
