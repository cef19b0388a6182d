"""Fine-tune the reference model from an init checkpoint, or train it from scratch.

The architecture always comes from the init file's own config (safetensors folder, GGUF or
APR), never from a default: a trainer with hard-coded constants turns a 0.5B checkpoint
into a category error. A ``--config``/``--arch`` the user passes is compared with it field
by field and a disagreement stops the run by name. Before the first update the validation
loss of the init weights is measured beside ln(vocab) and the from-scratch loss (and the
loss the source is known to reach, when the user gives it): weights that arrived intact
are below them all; a BF16 tensor read as F16, a transposed FFN, a dropped bias or an
untrained head push it up, and training on top of that would waste the run. Checkpoints
are APR files (atomic) with the optimiser state beside them, so a run resumes exactly
where it stopped.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch

from aprlib.config.arch_presets import preset_name, presets, unknown_arch
from aprlib.config.modelconfig import ModelConfig, from_hf
from aprlib.formats.atomic import atomic_output
from aprlib.formats.io import open_model
from aprlib.forward.model import Transformer
from aprlib.train.checkpoint import load_state, save_checkpoint
from aprlib.train.tokens import (
    check_ids,
    check_tokenizer,
    load_tokens,
    tokenizer_json_size,
    tokenizer_size,
)

#: config fields that describe provenance or tokens, not the shapes or maths of the network
NOT_ARCHITECTURE = frozenset({"torch_dtype", "bos_token_id", "eos_token_id"})
INIT_STD = 0.02  # transformers' initializer_range for Qwen2 and Llama


class FinetuneError(ValueError):
    """A run that must not start (or continue); the message is the one-line diagnosis."""


class ArchitectureMismatchError(FinetuneError):
    """The init file's architecture differs from the one the user asked for."""

    def __init__(self, init: Path | str, differences: list[str]) -> None:
        self.differences = differences
        super().__init__(
            f"{init}: init architecture differs from the requested one: " + "; ".join(differences)
        )


class InitLossError(FinetuneError):
    """Step 0 shows the init weights did not arrive: training on them would waste the run."""


@dataclass(frozen=True)
class Settings:
    """How to train. ``seq`` tokens are predicted per window (each window holds seq+1 ids)."""

    steps: int
    lr: float = 3e-4
    batch: int = 8
    seq: int = 128
    warmup: int = 0
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    eval_every: int = 50
    eval_windows: int = 32
    save_every: int = 0  # 0: save only at the end
    seed: int = 0
    device: str = "cpu"
    data_dtype: str = "uint16"

    def __post_init__(self) -> None:
        for name in ("steps", "batch", "seq", "eval_windows", "eval_every"):
            if getattr(self, name) < 1:
                raise FinetuneError(f"--{name.replace('_', '-')} must be >= 1")
        for name in ("warmup", "save_every", "weight_decay", "grad_clip"):
            if getattr(self, name) < 0:
                raise FinetuneError(f"--{name.replace('_', '-')} must be >= 0")
        if not self.lr > 0:
            raise FinetuneError("--lr must be > 0")


@dataclass
class StepZero:
    """The proof that the weights arrived: the init loss against the bounds it must beat.

    ln(vocab) and the from-scratch loss hold for every model, but only a defect that makes
    the model confidently wrong crosses them (the incident's 18.55 > 17.21); a shallow model
    survives a transposed FFN or a dropped bias with a loss well under ln(vocab). The loss
    the source is known to reach (``expected``, e.g. what its trainer or transformers
    measured) catches those too: an intact load reproduces it to float precision.
    """

    init_loss: float
    scratch_loss: float
    ln_vocab: float
    expected: float | None = None
    tolerance: float = 0.05

    @property
    def failures(self) -> list[str]:
        out = []
        if not self.init_loss < self.ln_vocab:
            out.append(f"not below ln(vocab) {self.ln_vocab:.4f}")
        if not self.init_loss < self.scratch_loss:
            out.append(f"not below the from-scratch loss {self.scratch_loss:.4f}")
        if self.expected is not None and not self.init_loss <= self.expected + self.tolerance:
            out.append(f"above the expected {self.expected:.4f} by more than {self.tolerance:g}")
        return out

    @property
    def arrived(self) -> bool:
        return not self.failures

    def line(self) -> str:
        verdict = "ok" if self.arrived else "; ".join(self.failures)
        expected = f", expected {self.expected:.4f}" if self.expected is not None else ""
        return (
            f"step 0: val loss {self.init_loss:.4f} (init) vs ln(vocab) {self.ln_vocab:.4f}, "
            f"from scratch {self.scratch_loss:.4f}{expected}: {verdict}"
        )


@dataclass
class Result:
    """What a run did; ``records`` are the JSONL log lines it wrote, in order."""

    step_zero: StepZero | None
    records: list[dict[str, Any]] = field(default_factory=list)
    checkpoint: Path | None = None

    @property
    def train_losses(self) -> list[float]:
        return [r["train_loss"] for r in self.records if "train_loss" in r]


# --- architecture ------------------------------------------------------------------------


def config_differences(init: ModelConfig, requested: ModelConfig) -> list[str]:
    """``field: init X, requested Y`` for every architectural field that differs.

    Fields a format may leave implicit are compared as resolved (``head_dim`` from the
    heads, ``attention_bias`` from the family), so a GGUF and its config.json agree.
    """
    resolved = {"head_dim": "attention_head_dim", "attention_bias": "qkv_bias"}
    out = []
    for f in fields(ModelConfig):
        if f.name in NOT_ARCHITECTURE:
            continue
        a = getattr(init, resolved.get(f.name, f.name))
        b = getattr(requested, resolved.get(f.name, f.name))
        if a != b:
            out.append(f"{f.name}: init {a}, requested {b}")
    return out


def requested_config(
    config: Path | str | None = None, arch: str | None = None
) -> ModelConfig | None:
    """The architecture the user named: an HF ``config.json`` or a named preset
    (``aprlib.config.modelconfig``)."""
    if config is not None and arch is not None:
        raise FinetuneError("give --config or --arch, not both")
    if config is not None:
        path = Path(config)
        if path.is_dir():
            path = path / "config.json"
        try:
            return from_hf(json.loads(path.read_text(encoding="utf-8")))
        except OSError as exc:
            raise FinetuneError(f"{path}: cannot read: {exc.strerror}") from None
        except ValueError as exc:  # JSONDecodeError and ConfigError
            raise FinetuneError(f"{path}: {exc}") from None
    if arch is not None:
        problem = unknown_arch(arch)
        if problem is not None:
            raise FinetuneError(problem)
        return presets()[preset_name(arch)]()
    return None


def device_of(name: str) -> torch.device:
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise FinetuneError(f"--device {name}: no CUDA device on this host")
    if not (name == "cpu" or name.startswith("cuda")):
        raise FinetuneError(f"--device {name!r}: cpu or cuda")
    return torch.device(name)


def load_init(
    path: Path | str, requested: ModelConfig | None = None, device: str = "cpu"
) -> tuple[Transformer, ModelConfig, dict[str, Any] | None]:
    """The init model, its config (read from the file) and its tokenizer metadata.

    Fails, by name, on anything short of a faithful load: a missing or corrupt file, a
    file without a config, weights that disagree with the config, a requested architecture
    that differs. There is no fallback to random weights.
    """
    path = Path(path)
    with open_model(path) as model:
        if model.config is None:
            raise FinetuneError(
                f"{path}: no architecture config in the file (config.json beside the "
                "safetensors?); the architecture is read from the init, never assumed"
            )
        if requested is not None:
            differences = config_differences(model.config, requested)
            if differences:
                raise ArchitectureMismatchError(path, differences)
        folder = path if path.is_dir() else path.parent
        size = tokenizer_size(model.tokenizer, folder if model.format == "safetensors" else None)
        check_tokenizer(size, model.config.vocab_size, str(path))
        net = Transformer.from_file(model, dtype=torch.float32, device=device_of(device))
        return net, model.config, model.tokenizer


def fresh_model(config: ModelConfig, seed: int, device: str = "cpu") -> Transformer:
    """The from-scratch model: the same architecture, weights drawn from ``seed``.

    transformers' initialisation (normal, std 0.02; zero biases; unit norms), drawn in name
    order from a generator of its own, so the same seed gives the same weights on any device.
    """
    net = Transformer(config).to_empty(device=device_of(device))
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in sorted(net.named_parameters()):
            if name.endswith("norm.weight"):
                p.fill_(1.0)
            elif name.endswith(".bias"):
                p.zero_()
            else:
                p.copy_(torch.randn(p.shape, generator=generator) * INIT_STD)
    return net


# --- data --------------------------------------------------------------------------------


def val_windows(ids: np.ndarray, seq: int, count: int) -> torch.Tensor:
    """Up to ``count`` non-overlapping windows of seq+1 ids from the start: the same
    windows for every model, so step-0 losses compare like for like."""
    n = min(count, len(ids) // (seq + 1))
    if n < 1:
        raise FinetuneError(
            f"validation data holds {len(ids)} ids: fewer than one window of {seq + 1}"
        )
    return torch.from_numpy(np.asarray(ids[: n * (seq + 1)], dtype=np.int64).reshape(n, seq + 1))


class Batches:
    """Random training windows from a seeded generator whose state checkpoints with the run."""

    def __init__(self, ids: np.ndarray, batch: int, seq: int, seed: int) -> None:
        if len(ids) < seq + 2:
            raise FinetuneError(f"training data holds {len(ids)} ids: fewer than {seq + 2}")
        self.ids, self.batch, self.seq = ids, batch, seq
        self.generator = torch.Generator().manual_seed(seed)

    def next(self) -> torch.Tensor:
        starts = torch.randint(0, len(self.ids) - self.seq, (self.batch,), generator=self.generator)
        rows = [np.asarray(self.ids[s : s + self.seq + 1], dtype=np.int64) for s in starts.tolist()]
        return torch.from_numpy(np.stack(rows))


@torch.no_grad()
def evaluate(model: Transformer, windows: torch.Tensor, batch: int) -> float:
    """Mean next-token cross-entropy over ``windows`` (every window weighs the same)."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    total, count = 0.0, 0
    for chunk in windows.split(batch):
        total += float(model.loss(chunk.to(device))) * len(chunk)
        count += len(chunk)
    model.train(was_training)
    return total / count


def step_zero(
    model: Transformer,
    config: ModelConfig,
    windows: torch.Tensor,
    settings: Settings,
    expected: float | None = None,
    tolerance: float = 0.05,
) -> StepZero:
    """All three losses on the same windows (the fresh model draws from a generator of its
    own, so measuring it leaves the run's random streams untouched)."""
    scratch = fresh_model(config, settings.seed, settings.device)
    scratch_loss = evaluate(scratch, windows, settings.batch)
    del scratch
    return StepZero(
        evaluate(model, windows, settings.batch),
        scratch_loss,
        math.log(config.vocab_size),
        expected,
        tolerance,
    )


def diagnose(init: Path | str, zero: StepZero) -> str:
    """The symptom and what ``apr qa``'s tensor gates say about the file, in one line.

    A gate that fails names the tensor (a BF16 read as F16 is far outside its family's
    spread); when they all pass the values are plausible but wired wrong (a transposed
    weight, a dropped bias), which only a comparison with the source shows.
    """
    from aprlib.forward.qa import tensor_gates

    with open_model(init) as model:
        failed = [g for g in tensor_gates(model) if g.status == "FAIL"]
    qa = (
        "apr qa: " + "; ".join(f"{g.name} FAIL: {g.detail}" for g in failed)
        if failed
        else "apr qa's tensor gates pass, so plausible values are wired wrong (a transposed "
        "weight, a dropped bias, an untrained head)"
    )
    return (
        f"{init}: step-0 val loss {zero.init_loss:.4f} is {' and '.join(zero.failures)}: the "
        f"weights did not arrive; {qa}; compare the file with its source "
        "(`apr diff INIT SOURCE`), or pass --force to train anyway"
    )


# --- the run -----------------------------------------------------------------------------


def lr_at(step: int, settings: Settings) -> float:
    """Linear warmup, then cosine decay to a tenth (``step`` counts from 1)."""
    if settings.warmup and step <= settings.warmup:
        return settings.lr * step / settings.warmup
    span = max(1, settings.steps - settings.warmup)
    done = min(1.0, (step - settings.warmup) / span)
    return settings.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * done)))


Reporter = Callable[[dict[str, Any]], None]


def finetune(
    data: Path | str,
    settings: Settings,
    init: Path | str | None = None,
    val: Path | str | None = None,
    out: Path | str | None = None,
    requested: ModelConfig | None = None,
    from_scratch: bool = False,
    resume: bool = False,
    force: bool = False,
    log: Path | str | None = None,
    report: Reporter | None = None,
    expect_loss: float | None = None,
    expect_tolerance: float = 0.05,
    tokenizer_file: Path | str | None = None,
) -> Result:
    """Train; see the module docstring. ``report`` sees every log record as it is made."""
    torch.manual_seed(settings.seed)
    out = Path(out) if out is not None else None
    if resume and (out is None or not out.is_file()):
        raise FinetuneError(f"--resume needs an existing checkpoint at --out ({out})")
    if not resume and out is not None and out.exists():
        raise FinetuneError(f"{out} exists: pass --resume to continue it, or choose another --out")
    if init is None and requested is None and not resume:
        raise FinetuneError("give --init MODEL, or --config/--arch for a from-scratch run")
    tokenizer: dict[str, Any] | None = None
    source = out if resume else init
    if source is not None:
        model, config, tokenizer = load_init(
            source, requested if not resume else None, settings.device
        )
        if resume and requested is not None and config_differences(config, requested):
            raise ArchitectureMismatchError(source, config_differences(config, requested))
    else:
        assert requested is not None
        config = requested
        model = fresh_model(config, settings.seed, settings.device)
    if from_scratch and not resume:
        model = fresh_model(config, settings.seed, settings.device)

    if tokenizer_file is not None:  # the tokenizer that made --data
        size = tokenizer_json_size(Path(tokenizer_file))
        check_tokenizer(size, config.vocab_size, str(tokenizer_file))
    train_ids = load_tokens(data, settings.data_dtype)
    check_ids(train_ids, config.vocab_size, data)
    if val is not None:
        val_ids = load_tokens(val, settings.data_dtype)
        check_ids(val_ids, config.vocab_size, val)
    else:  # hold out the tail
        cut = len(train_ids) - max(settings.seq + 1, len(train_ids) // 10)
        if cut < settings.seq + 2:
            raise FinetuneError(f"{data}: too short to hold out validation data; pass --val")
        train_ids, val_ids = train_ids[:cut], train_ids[cut:]
    windows = val_windows(val_ids, settings.seq, settings.eval_windows)
    batches = Batches(train_ids, settings.batch, settings.seq, settings.seed)
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=settings.lr, weight_decay=settings.weight_decay
    )
    result = Result(None, checkpoint=out)
    log_path = Path(log) if log is not None else (out.with_suffix(".jsonl") if out else None)
    start = 0
    if resume:
        assert out is not None
        state = load_state(out, model)
        optimizer.load_state_dict(state["optimizer"])
        batches.generator.set_state(state["generator"])
        torch.set_rng_state(state["torch_rng"])
        start = int(state["step"])
        result.records = [r for r in state["records"] if r["step"] <= start]
        if start >= settings.steps:
            raise FinetuneError(
                f"{out}: checkpoint is at step {start}, nothing to do for --steps {settings.steps}"
            )
    else:
        zero = step_zero(model, config, windows, settings, expect_loss, expect_tolerance)
        result.step_zero = zero
        record = {
            "step": 0,
            "val_loss": zero.init_loss,
            "scratch_val_loss": zero.scratch_loss,
            "ln_vocab": zero.ln_vocab,
            "expected_val_loss": zero.expected,
            "arrived": zero.arrived,
            "init": str(init) if init is not None and not from_scratch else None,
        }
        result.records.append(record)
        if report:
            report(record)
        if init is not None and not from_scratch and not zero.arrived and not force:
            raise InitLossError(diagnose(init, zero))
    if log_path is not None:
        _write_log(log_path, result.records)

    model.train()
    device = next(model.parameters()).device
    for step in range(start + 1, settings.steps + 1):
        began = time.perf_counter()
        lr = lr_at(step, settings)
        for group in optimizer.param_groups:
            group["lr"] = lr
        tokens = batches.next().to(device)
        loss = model.loss(tokens)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        norm = torch.nn.utils.clip_grad_norm_(
            model.parameters(), settings.grad_clip if settings.grad_clip > 0 else math.inf
        )
        optimizer.step()
        train_loss = float(loss.detach())
        if not math.isfinite(train_loss):
            raise FinetuneError(f"step {step}: training loss is {train_loss}; stopping")
        elapsed = time.perf_counter() - began
        record = {
            "step": step,
            "train_loss": train_loss,
            "val_loss": None,
            "lr": lr,
            "grad_norm": float(norm),
            "tokens_per_s": settings.batch * settings.seq / max(elapsed, 1e-9),
        }
        if step % settings.eval_every == 0 or step == settings.steps:
            record["val_loss"] = evaluate(model, windows, settings.batch)
            model.train()
        result.records.append(record)
        if report:
            report(record)
        if log_path is not None:
            _append_log(log_path, record)
        due = settings.save_every and step % settings.save_every == 0
        if out is not None and (due or step == settings.steps):
            save_checkpoint(
                model,
                config,
                out,
                tokenizer,
                {
                    "step": step,
                    "optimizer": optimizer.state_dict(),
                    "generator": batches.generator.get_state(),
                    "torch_rng": torch.get_rng_state(),
                    "settings": asdict(settings),
                    "records": result.records,
                },
            )
    return result


def _write_log(path: Path, records: list[dict[str, Any]]) -> None:
    """The whole log, atomically (a resumed run drops lines past its checkpoint)."""
    with atomic_output(path) as tmp, open(tmp, "w", encoding="utf-8") as fh:
        fh.writelines(json.dumps(r, sort_keys=True) + "\n" for r in records)


def _append_log(path: Path, record: dict[str, Any]) -> None:
    with open(path, "a", encoding="utf-8") as fh:
        fh.write(json.dumps(record, sort_keys=True) + "\n")
