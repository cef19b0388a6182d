"""Benchmark `apr convert` (issue 4) on a Qwen2.5-0.5B-shaped model with random BF16 weights.

In one run: generate the model as safetensors (~1 GB), time `cp` of it (the baseline),
time `apr convert` of it to APR in a subprocess and read its peak RSS, and time
`open_model` on the APR file. Targets: the converter reaches at least 50 % of cp's
throughput; peak RSS under 1.5x the largest tensor + 300 MB; open_model under 50 ms.

    python bench/bench_convert.py [--layers 24] [--keep DIR]
"""

from __future__ import annotations

import argparse
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


def generate(folder: Path, cfg: dict) -> tuple[Path, int]:
    """Random BF16 safetensors written tensor by tensor; returns (path, largest tensor)."""
    rng = np.random.default_rng(0)
    plan, offset = {}, 0
    for name, shape in shapes(cfg):
        size = int(np.prod(shape)) * 2
        plan[name] = {
            "dtype": "BF16",
            "shape": list(shape),
            "data_offsets": [offset, offset + size],
        }
        offset += size
    head = json.dumps(plan).encode()
    head += b" " * (-len(head) % 8)
    path = folder / "model.safetensors"
    with open(path, "wb") as fh:
        fh.write(struct.pack("<Q", len(head)) + head)
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


def timed(cmd: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=QWEN["num_hidden_layers"])
    parser.add_argument("--keep", type=Path, help="generate into (and keep) this folder")
    args = parser.parse_args()
    cfg = {**QWEN, "num_hidden_layers": args.layers}
    folder = args.keep or Path(tempfile.mkdtemp(prefix="apr-bench-"))
    folder.mkdir(parents=True, exist_ok=True)
    try:
        src, largest = generate(folder, cfg)
        size = src.stat().st_size
        subprocess.run(["cat", str(src)], check=True, stdout=subprocess.DEVNULL)  # warm cache
        cp_times, cp_sync_times, convert_times, rss = [], [], [], 0
        for _ in range(3):  # interleaved, best of three: all see the same cache and disk
            copy = folder / "copy.safetensors"
            cp_times.append(timed(["cp", str(src), str(copy)]))
            os.unlink(copy)
            # the converter fsyncs its output before renaming it: cp with the same durability
            cp_sync_times.append(timed(["sh", "-c", f"cp '{src}' '{copy}' && sync '{copy}'"]))
            os.unlink(copy)
            start = time.perf_counter()
            # a fresh interpreter reports its own peak RSS (a forked child's ru_maxrss
            # would include the parent's memory at fork time)
            out = subprocess.run(
                [sys.executable, "-c", CONVERT, str(src), str(folder / "model.apr")],
                check=True,
                capture_output=True,
                text=True,
            ).stdout
            convert_times.append(time.perf_counter() - start)
            rss = max(rss, int(out.split()[-1]) * 1024)
        cp_s, cp_sync_s, convert_s = min(cp_times), min(cp_sync_times), min(convert_times)
        from aprlib.formats.io import open_model

        start = time.perf_counter()
        model = open_model(folder / "model.apr")
        open_ms = (time.perf_counter() - start) * 1000
        tensors = len(model.tensors)
        model.close()
    finally:
        if args.keep is None:
            shutil.rmtree(folder, ignore_errors=True)
    mb = size / 2**20
    limit = 1.5 * largest + 300 * 2**20
    print(
        f"model: {mb:,.0f} MiB BF16 safetensors, {tensors} tensors, "
        f"largest {largest / 2**20:.0f} MiB"
    )
    print(f"cp + sync:   {cp_sync_s:.2f} s  ({mb / cp_sync_s:,.0f} MiB/s, best of 3)")
    print(
        f"cp alone:    {cp_s:.2f} s  ({mb / cp_s:,.0f} MiB/s, best of 3; a page-cache "
        "copy_file_range, nothing on disk yet)"
    )
    print(
        f"apr convert: {convert_s:.2f} s  ({mb / convert_s:,.0f} MiB/s, best of 3, with "
        f"fsync and interpreter start)  -> {cp_sync_s / convert_s * 100:.0f} % of cp+sync's "
        f"throughput (target >= 50 %), {cp_s / convert_s * 100:.0f} % of bare cp's"
    )
    print(
        f"peak RSS of apr convert: {rss / 2**20:,.0f} MiB (limit 1.5 x largest + 300 MiB = "
        f"{limit / 2**20:,.0f} MiB)"
    )
    print(f"open_model(model.apr): {open_ms:.1f} ms (target < 50 ms)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
