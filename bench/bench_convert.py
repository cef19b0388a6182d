"""Benchmark `apr convert` (issues 4, 27) on a Qwen2.5-0.5B-shaped model, random BF16 weights.

In one run: generate the model as safetensors (~1 GB); then, interleaved round by round so
that every contender sees the same page cache and disk, time `cp` + `sync` of it (the
baseline: the same bytes, made as durable as the converter makes them), `apr convert` of it
to APR and to GGUF (same dtype: the bytes go file to file), each as a whole fresh process
as a user waits for it (interpreter start-up included) with its peak RSS, and the start-up
alone (a process that imports what convert imports and exits). Before each timed run the
previous outputs are removed and the disk is synced, so no run pays for another's
write-back. Then time `open_model` on the APR file.

Targets: each same-dtype conversion reaches at least 90 % of cp + sync's throughput; peak
RSS under 1.5x the largest tensor + 300 MB; open_model under 50 ms. The machine (CPU model,
CPUs, load) is printed first: the times are only comparable on one machine, and a busy
CPU slows the converter (which checksums every byte) more than cp.

    python bench/bench_convert.py [--layers 24] [--rounds 5] [--keep DIR]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

try:
    from machine import machine  # run as a script: bench/ is this script's folder
except ImportError:  # imported as bench.bench_convert (bench_streaming reuses its layout)
    from bench.machine import machine

QWEN = dict(
    vocab_size=151936,
    hidden_size=896,
    intermediate_size=4864,
    num_hidden_layers=24,
    num_attention_heads=14,
    num_key_value_heads=2,
)


def shapes(cfg: dict) -> list[tuple[str, tuple[int, ...]]]:
    h, i, v = cfg["hidden_size"], cfg["intermediate_size"], cfg["vocab_size"]
    kv = h // cfg["num_attention_heads"] * cfg["num_key_value_heads"]
    out = [("model.embed_tokens.weight", (v, h))]
    for n in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{n}."
        out += [
            (p + "input_layernorm.weight", (h,)),
            (p + "self_attn.q_proj.weight", (h, h)),
            (p + "self_attn.q_proj.bias", (h,)),
            (p + "self_attn.k_proj.weight", (kv, h)),
            (p + "self_attn.k_proj.bias", (kv,)),
            (p + "self_attn.v_proj.weight", (kv, h)),
            (p + "self_attn.v_proj.bias", (kv,)),
            (p + "self_attn.o_proj.weight", (h, h)),
            (p + "post_attention_layernorm.weight", (h,)),
            (p + "mlp.gate_proj.weight", (i, h)),
            (p + "mlp.up_proj.weight", (i, h)),
            (p + "mlp.down_proj.weight", (h, i)),
        ]
    return [*out, ("model.norm.weight", (h,))]


def bf16_header(layout: list[tuple[str, tuple[int, ...]]]) -> bytes:
    """A safetensors header (length prefix included) for BF16 tensors laid out in order."""
    plan, offset = {}, 0
    for name, shape in layout:
        size = int(np.prod(shape)) * 2
        plan[name] = {
            "dtype": "BF16",
            "shape": list(shape),
            "data_offsets": [offset, offset + size],
        }
        offset += size
    head = json.dumps(plan).encode()
    head += b" " * (-len(head) % 8)
    return struct.pack("<Q", len(head)) + head


def generate(folder: Path, cfg: dict) -> tuple[Path, int]:
    """Random BF16 safetensors written tensor by tensor; returns (path, largest tensor)."""
    rng = np.random.default_rng(0)
    path = folder / "model.safetensors"
    with open(path, "wb") as fh:
        fh.write(bf16_header(shapes(cfg)))
        for _name, shape in shapes(cfg):
            values = rng.standard_normal(int(np.prod(shape)), dtype=np.float32) * 0.02
            fh.write(((values.view(np.uint32) + 0x8000) >> 16).astype(np.uint16).tobytes())
    config = {
        "architectures": ["Qwen2ForCausalLM"],
        "model_type": "qwen2",
        "rms_norm_eps": 1e-6,
        "rope_theta": 1000000.0,
        "max_position_embeddings": 32768,
        "tie_word_embeddings": True,
        "torch_dtype": "bfloat16",
        **cfg,
    }
    (folder / "config.json").write_text(json.dumps(config))
    largest = max(int(np.prod(s)) * 2 for _, s in shapes(cfg))
    return path, largest


# VmHWM is the peak RSS of this process image; ru_maxrss would survive exec and report
# the memory of the (large) benchmark process the child was forked from.
CONVERT = (
    "import re, sys\n"
    "from aprlib.cli.main import main\n"
    "rc = main(['convert', sys.argv[1], sys.argv[2]])\n"
    "status = open('/proc/self/status').read()\n"
    "print(re.search(r'VmHWM:\\s+(\\d+) kB', status).group(1))\n"
    "sys.exit(rc)\n"
)
#: what a convert process does before its first byte: start, import the CLI and the writer
STARTUP = (
    "import sys\n"
    "from aprlib.cli.main import main\n"
    "import aprlib.formats.conversion\n"
    "if sys.argv[1] == 'gguf':\n"
    "    import gguf\n"
)


def settle(*paths: Path) -> None:
    """Remove earlier outputs and flush the disk, so that a run pays for no other's writes."""
    for path in paths:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
    os.sync()
    time.sleep(0.5)


def timed(cmd: list[str]) -> tuple[float, str]:
    start = time.perf_counter()
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return time.perf_counter() - start, out


def stats(times: list[float]) -> tuple[float, float]:
    """(best, median)"""
    ordered = sorted(times)
    return ordered[0], ordered[len(ordered) // 2]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=QWEN["num_hidden_layers"])
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds (5)")
    parser.add_argument("--keep", type=Path, help="generate into (and keep) this folder")
    args = parser.parse_args()
    cfg = {**QWEN, "num_hidden_layers": args.layers}
    print(machine(), flush=True)
    folder = args.keep or Path(tempfile.mkdtemp(prefix="apr-bench-"))
    folder.mkdir(parents=True, exist_ok=True)
    formats = ("apr", "gguf")
    times: dict[str, list[float]] = {k: [] for k in ("cp", "cp+sync", *formats)}
    startup: dict[str, list[float]] = {f: [] for f in formats}
    rss = dict.fromkeys(formats, 0)
    try:
        src, largest = generate(folder, cfg)
        size = src.stat().st_size
        subprocess.run(["cat", str(src)], check=True, stdout=subprocess.DEVNULL)  # warm cache
        copy = folder / "copy.safetensors"
        outputs = {f: folder / f"model.{f}" for f in formats}
        for _ in range(args.rounds):  # interleaved: all see the same cache and disk
            settle(copy, *outputs.values())
            times["cp"].append(timed(["cp", str(src), str(copy)])[0])
            settle(copy)
            # the converter fsyncs its output before renaming it: cp with the same durability
            cmd = ["sh", "-c", f"cp '{src}' '{copy}' && sync '{copy}'"]
            times["cp+sync"].append(timed(cmd)[0])
            for fmt in formats:
                settle(copy, outputs[fmt])
                startup[fmt].append(timed([sys.executable, "-c", STARTUP, fmt])[0])
                # a fresh interpreter reports its own peak RSS (a forked child's ru_maxrss
                # would include the parent's memory at fork time)
                cmd = [sys.executable, "-c", CONVERT, str(src), str(outputs[fmt])]
                elapsed, out = timed(cmd)
                times[fmt].append(elapsed)
                rss[fmt] = max(rss[fmt], int(out.split()[-1]) * 1024)
        from aprlib.formats.io import open_model

        start = time.perf_counter()
        model = open_model(outputs["apr"])
        open_ms = (time.perf_counter() - start) * 1000
        tensors = len(model.tensors)
        model.close()
    finally:
        if args.keep is None:
            shutil.rmtree(folder, ignore_errors=True)
    mb = size / 2**20
    limit = 1.5 * largest + 300 * 2**20
    rounds = f"best / median of {args.rounds}"
    print(
        f"model: {mb:,.0f} MiB BF16 safetensors, {tensors} tensors, "
        f"largest {largest / 2**20:.0f} MiB"
    )
    cp_sync_s, cp_sync_med = stats(times["cp+sync"])
    cp_s, _ = stats(times["cp"])
    print(
        f"cp + sync:   {cp_sync_s:.2f} / {cp_sync_med:.2f} s  "
        f"({mb / cp_sync_s:,.0f} MiB/s, {rounds})"
    )
    print(
        f"cp alone:    {cp_s:.2f} s  ({mb / cp_s:,.0f} MiB/s, best; a page-cache "
        "copy_file_range, nothing on disk yet)"
    )
    for fmt in formats:
        best, med = stats(times[fmt])
        boot, _ = stats(startup[fmt])
        print(
            f"apr convert -> {fmt.upper():4} {best:.2f} / {med:.2f} s  ({mb / best:,.0f} MiB/s, "
            f"{rounds}, whole process: start-up {boot:.2f} s, work and fsync "
            f"{best - boot:.2f} s)  -> {cp_sync_s / best * 100:.0f} % of cp+sync's throughput "
            f"(median {cp_sync_med / med * 100:.0f} %; target >= 90 %)"
        )
        print(
            f"  peak RSS: {rss[fmt] / 2**20:,.0f} MiB (limit 1.5 x largest + 300 MiB = "
            f"{limit / 2**20:,.0f} MiB)"
        )
    print(f"open_model(model.apr): {open_ms:.1f} ms (target < 50 ms)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
