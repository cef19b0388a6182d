"""Benchmark one `apr finetune` training step against a plain `transformers` training step.

Same architecture, same weights, same batch, same optimiser (AdamW, grad-norm clipping)
in one run: our step is exactly the one aprlib.train.finetune runs (the reference Transformer's
``loss``, backward, clip, AdamW); the baseline is what a user would write with
transformers (``Qwen2ForCausalLM`` forward, cross-entropy, the same backward, clip and
AdamW). Steps alternate between the two so that load on a shared machine hits both
alike; the median step time of each is reported as tokens/s, with the ratio (ours / HF;
the target is >= 0.9).

    python bench/bench_finetune.py                                 # small Qwen2 on CPU
    python bench/bench_finetune.py --preset qwen2_0_5b --device cuda --bf16 --seq 1024
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's aprlib
from aprlib.config.modelconfig import ModelConfig, to_hf
from aprlib.forward.model import Transformer
from aprlib.train.finetune import Batches

SMALL_QWEN2 = ModelConfig(
    architecture="qwen2",
    vocab_size=4096,
    hidden_size=256,
    intermediate_size=704,
    num_hidden_layers=4,
    num_attention_heads=4,
    num_key_value_heads=2,
    rms_norm_eps=1e-6,
    rope_theta=1_000_000.0,
    max_position_embeddings=2048,
    tie_word_embeddings=True,
)


def build(config: ModelConfig, device: str) -> tuple[torch.nn.Module, Transformer]:
    """The transformers model (random init) and ours holding the very same weights."""
    from transformers import AutoConfig, AutoModelForCausalLM

    hf_config = AutoConfig.for_model(**to_hf(config))
    hf_config._attn_implementation = "sdpa"
    torch.manual_seed(0)
    hf = AutoModelForCausalLM.from_config(hf_config).to(device)
    state = {k: v.detach().clone() for k, v in hf.state_dict().items()}
    if config.tie_word_embeddings:
        state.pop("lm_head.weight", None)
    ours = Transformer(config)
    ours.load_state_dict(state, strict=True, assign=True)
    return hf.train(), ours.train()


def stepper(
    model: torch.nn.Module, loss_of: Callable[[torch.Tensor], torch.Tensor], bf16: bool
) -> Callable[[torch.Tensor], float]:
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5)
    device = next(model.parameters()).device

    def step(window: torch.Tensor) -> float:
        if device.type == "cuda":
            torch.cuda.synchronize()
        began = time.perf_counter()
        with torch.autocast(device.type, torch.bfloat16, enabled=bf16):
            loss = loss_of(window)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - began

    return step


def peak_memory(step: Callable[[torch.Tensor], float], window: torch.Tensor) -> int | None:
    if not torch.cuda.is_available() or window.device.type != "cuda":
        return None
    torch.cuda.reset_peak_memory_stats()
    step(window)
    return torch.cuda.max_memory_allocated()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--preset", help="an aprlib.config.modelconfig preset (default: a small Qwen2)"
    )
    parser.add_argument("--layers", type=int, help="override num_hidden_layers")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--seq", type=int, default=256)
    parser.add_argument("--steps", type=int, default=10, help="timed steps of each")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--bf16", action="store_true", help="bf16 autocast (both sides)")
    parser.add_argument("--threads", type=int, help="torch intra-op threads")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.preset:
        import aprlib.config.modelconfig as presets

        config = getattr(presets, args.preset)()
    else:
        config = SMALL_QWEN2
    if args.layers:
        config = dataclasses.replace(config, num_hidden_layers=args.layers)
    hf, ours = build(config, args.device)
    vocab = config.vocab_size

    def hf_loss(window: torch.Tensor) -> torch.Tensor:
        logits = hf(input_ids=window[:, :-1]).logits
        return F.cross_entropy(logits.reshape(-1, vocab).float(), window[:, 1:].reshape(-1))

    steps = {
        "apr finetune": stepper(ours, ours.loss, args.bf16),
        "transformers": stepper(hf, hf_loss, args.bf16),
    }
    ids = torch.randint(0, vocab, (1_000_000,), generator=torch.Generator().manual_seed(0))
    batches = Batches(ids.numpy(), args.batch, args.seq, seed=0)
    times: dict[str, list[float]] = {name: [] for name in steps}
    peaks: dict[str, int | None] = {}
    for i in range(args.steps + 2):  # two warm-up steps each
        window = batches.next().to(args.device)
        for name, step in steps.items():
            elapsed = step(window)
            if i >= 2:
                times[name].append(elapsed)
    window = batches.next().to(args.device)
    for name, step in steps.items():
        peaks[name] = peak_memory(step, window)
    tokens = args.batch * args.seq
    rate = {name: tokens / statistics.median(t) for name, t in times.items()}
    params = sum(p.numel() for p in ours.parameters())
    print(
        f"shape: {args.preset or 'small qwen2'} ({params / 1e6:.1f}M parameters, "
        f"{config.num_hidden_layers} layers, hidden {config.hidden_size}, vocab {vocab}), "
        f"batch {args.batch} x seq {args.seq}, device {args.device}"
        f"{', bf16 autocast' if args.bf16 else ''}, threads {torch.get_num_threads()}"
    )
    for name in steps:
        used = peaks[name]
        peak = f", peak {used / 2**30:.2f} GiB" if used is not None else ""
        spread = f"{min(times[name]) * 1e3:.0f}-{max(times[name]) * 1e3:.0f} ms"
        print(f"{name:>13}: {rate[name]:,.0f} tokens/s (median of {args.steps}, {spread}){peak}")
    print(f"ratio (apr finetune / transformers): {rate['apr finetune'] / rate['transformers']:.2f}")


if __name__ == "__main__":
    main()
