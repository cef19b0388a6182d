"""``apr finetune``: the command line of aprlib.train.finetune (torch is imported only to run it).

Exit codes: 0 trained; 1 the run was refused or failed (missing/corrupt init or data, an
architecture mismatch, ids outside the vocabulary, step-0 loss not below ln(vocab) and the
from-scratch loss, a checkpoint that cannot be resumed, an ``--out`` that exists); 2 usage
(``--config`` with ``--arch``, an unknown ``--arch``, ``--steps 0`` and the other ranges).
Usage and ``--out`` are checked before torch is imported or a file is read.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

EXIT_OK, EXIT_REFUSED, EXIT_USAGE = 0, 1, 2


def register(sub: Any) -> None:
    """Add the ``finetune`` subcommand to ``apr``'s subparsers."""
    p = sub.add_parser(
        "finetune",
        help="fine-tune the reference model from an init checkpoint (or from scratch)",
        description="Train the reference model with AdamW on a token stream. The architecture "
        "is read from --init (safetensors folder, GGUF or APR); before the first update the "
        "init's validation loss is printed beside ln(vocab) and the from-scratch loss, and "
        "the run is refused unless it is below both. Exit 0 trained, 1 refused or failed, "
        "2 usage.",
    )
    p.add_argument("--init", type=Path, help="init model: safetensors file/folder, GGUF or APR")
    p.add_argument("--data", type=Path, required=True, help="token ids: flat uint16/uint32 or .npy")
    p.add_argument("--val", type=Path, help="validation ids (default: the last 10%% of --data)")
    p.add_argument("--data-dtype", default="uint16", choices=("uint16", "uint32"))
    p.add_argument(
        "--tokenizer", type=Path, help="tokenizer.json that made --data; must fit the embedding"
    )
    p.add_argument("--steps", type=int, required=True, help="total optimiser steps")
    p.add_argument("--lr", type=float, default=3e-4, help="peak learning rate (3e-4)")
    p.add_argument("--warmup", type=int, default=0, help="linear warmup steps (0)")
    p.add_argument("--weight-decay", type=float, default=0.0)
    p.add_argument("--batch", type=int, default=8, help="windows per step (8)")
    p.add_argument("--seq", type=int, default=128, help="tokens predicted per window (128)")
    p.add_argument("--eval-every", type=int, default=50, help="validation every N steps (50)")
    p.add_argument("--save-every", type=int, default=0, help="checkpoint every N steps (end)")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--out", type=Path, help="checkpoint CKPT.apr (+ CKPT.apr.optim.pt)")
    p.add_argument("--log", type=Path, help="JSONL log (default: CKPT.jsonl)")
    p.add_argument("--from-scratch", action="store_true", help="fresh weights, same architecture")
    p.add_argument("--resume", action="store_true", help="continue from --out and its state")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--force", action="store_true", help="train even if step 0 fails")
    p.add_argument(
        "--expect-loss",
        type=float,
        help="val loss the init is known to reach; step 0 must reproduce it (see --expect-tol)",
    )
    p.add_argument("--expect-tol", type=float, default=0.05, help="nats above it allowed (0.05)")
    p.add_argument("--config", type=Path, help="expected HF config.json; must match the init")
    p.add_argument("--arch", help="expected preset (e.g. qwen2_0_5b); must match the init")
    p.add_argument("--json", action="store_true", help="print the result as one JSON document")
    p.set_defaults(handler=run)


def usage_error(args: argparse.Namespace) -> str | None:
    """What makes this command line unusable, told before any import of torch or work (the
    ranges are ``finetune.Settings``'s, in its words)."""
    for name in ("steps", "batch", "seq", "eval_every"):
        if getattr(args, name) < 1:
            return f"--{name.replace('_', '-')} must be >= 1"
    for name in ("warmup", "save_every", "weight_decay"):
        if getattr(args, name) < 0:
            return f"--{name.replace('_', '-')} must be >= 0"
    if not args.lr > 0:
        return "--lr must be > 0"
    if args.config is not None and args.arch is not None:
        return "give --config or --arch, not both"
    if args.arch is not None:
        from aprlib.config.arch_presets import unknown_arch

        return unknown_arch(args.arch)
    return None


def out_refusal(args: argparse.Namespace) -> str | None:
    """The ``--out``/``--resume`` refusal (exit 1), told before any work: a finished run is
    never clobbered, and a resume needs its checkpoint."""
    out = args.out
    if args.resume and (out is None or not out.is_file()):
        return f"--resume needs an existing checkpoint at --out ({out})"
    if not args.resume and out is not None and out.exists():
        return f"{out} exists: pass --resume to continue it, or choose another --out"
    return None


def run(args: argparse.Namespace) -> int:
    import json

    problem = usage_error(args)
    if problem is not None:
        print(f"apr: error: {problem}", file=sys.stderr)
        return EXIT_USAGE
    refusal = out_refusal(args)
    if refusal is not None:
        print(f"apr: error: {refusal}", file=sys.stderr)
        return EXIT_REFUSED

    from aprlib.errors import ModelFileError
    from aprlib.train.finetune import Settings, finetune, requested_config

    try:
        settings = Settings(
            steps=args.steps,
            lr=args.lr,
            batch=args.batch,
            seq=args.seq,
            warmup=args.warmup,
            weight_decay=args.weight_decay,
            eval_every=args.eval_every,
            save_every=args.save_every,
            seed=args.seed,
            device=args.device,
            data_dtype=args.data_dtype,
        )
        requested = requested_config(args.config, args.arch)
        with _Progress(args.steps, quiet=args.json) as progress:
            result = finetune(
                args.data,
                settings,
                init=args.init,
                val=args.val,
                out=args.out,
                requested=requested,
                from_scratch=args.from_scratch,
                resume=args.resume,
                force=args.force,
                log=args.log,
                report=progress.record,
                expect_loss=args.expect_loss,
                expect_tolerance=args.expect_tol,
                tokenizer_file=args.tokenizer,
            )
    # FinetuneError, TokenDataError, ConfigError and the model's shape errors are ValueErrors;
    # a missing tensor is a KeyError naming it
    except (ModelFileError, ValueError, KeyError) as exc:
        message = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
        print(f"apr: error: {message}", file=sys.stderr)
        return EXIT_REFUSED
    if args.json:
        print(
            json.dumps(
                {
                    "step_zero": vars(result.step_zero) if result.step_zero else None,
                    "records": result.records,
                    "checkpoint": str(result.checkpoint) if result.checkpoint else None,
                }
            )
        )
    else:
        last = result.records[-1]
        print(
            f"done: step {last['step']}, train loss {last.get('train_loss', float('nan')):.4f}, "
            f"val loss {last.get('val_loss') or float('nan'):.4f}"
            + (f", checkpoint {result.checkpoint}" if result.checkpoint else "")
        )
    return EXIT_OK


class _Progress:
    """A rich bar with loss and tokens/s on a terminal; plain lines at each eval elsewhere."""

    def __init__(self, total: int, quiet: bool) -> None:
        from rich.console import Console

        self.console = Console(stderr=quiet)
        self.total, self.quiet = total, quiet
        self.bar: Any = None
        self.task: Any = None
        self.speed: float | None = None  # smoothed: one step's rate jumps with the load

    def __enter__(self) -> _Progress:
        if self.console.is_terminal and not self.quiet:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

            self.bar = Progress(
                "[progress.description]{task.description}",
                BarColumn(),
                MofNCompleteColumn(),
                "loss {task.fields[loss]}  {task.fields[speed]} tok/s",
                TimeRemainingColumn(),
                console=self.console,
            )
            self.task = self.bar.add_task("training", total=self.total, loss="-", speed="-")
            self.bar.start()
        return self

    def record(self, r: dict[str, Any]) -> None:
        if r["step"] == 0:
            if not self.quiet:
                self.console.print(_step_zero_line(r), highlight=False, soft_wrap=True)
            return
        rate = r["tokens_per_s"]
        self.speed = rate if self.speed is None else 0.9 * self.speed + 0.1 * rate
        if self.bar is not None:
            self.bar.update(
                self.task,
                completed=r["step"],
                loss=f"{r['train_loss']:.4f}",
                speed=f"{self.speed:,.0f}",
            )
        if r.get("val_loss") is not None and not self.quiet:
            self.console.print(
                f"step {r['step']}: train {r['train_loss']:.4f}  val {r['val_loss']:.4f}  "
                f"lr {r['lr']:.2e}  grad norm {r['grad_norm']:.3f}  "
                f"{self.speed:,.0f} tok/s",
                highlight=False,
                soft_wrap=True,
            )

    def __exit__(self, *exc: Any) -> None:
        if self.bar is not None:
            self.bar.stop()


def _step_zero_line(r: dict[str, Any]) -> str:
    who = "init" if r.get("init") else "fresh weights"
    expected = r.get("expected_val_loss")
    verdict = "the weights arrived" if r["arrived"] else "NOT below the bounds"
    return (
        f"step 0: val loss {r['val_loss']:.4f} ({who}) | ln(vocab) {r['ln_vocab']:.4f} | "
        f"from scratch {r['scratch_val_loss']:.4f}"
        + (f" | expected {expected:.4f}" if expected is not None else "")
        + (f": {verdict}" if r.get("init") else "")
    )
