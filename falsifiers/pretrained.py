"""A tiny pretrained model the fine-tune falsifiers start from, made with transformers.

Training it with ``transformers`` (not with aprlib) keeps the oracle independent: "the
saved model's own loss" is what transformers computes for the weights it saved. The stream
is a random sparse Markov chain (each id has two likely successors), so a few hundred steps
take the loss far below ln(vocab) and a defect that scrambles weights shows at once. Biases
start large, as Qwen2's are, so a dropped bias is a real defect rather than a rounding.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from conftest import TINY

TINY_PRETRAIN = TINY  # the shape every other tiny fixture has (root conftest.py)
SEQ = 32
P_FIRST, P_SECOND = 0.97, 0.0  # successor probabilities; the rest is uniform noise


def markov_stream(length: int, vocab: int, seed: int) -> np.ndarray:
    """Ids where each id is followed by its fixed successor (P_FIRST), a second fixed one
    (P_SECOND), else noise."""
    rng = np.random.default_rng(seed)
    table = np.random.default_rng(1234).integers(0, vocab, size=(vocab, 2))
    out = np.empty(length, dtype=np.uint16)
    token = int(rng.integers(vocab))
    draws, noise = rng.random(length), rng.integers(0, vocab, size=length)
    for i in range(length):
        out[i] = token
        if draws[i] < P_FIRST:
            token = int(table[token, 0])
        elif draws[i] < P_FIRST + P_SECOND:
            token = int(table[token, 1])
        else:
            token = int(noise[i])
    return out


@contextlib.contextmanager
def one_thread() -> Iterator[None]:
    """Tiny models on one intra-op thread: on a shared 2-core runner two OpenMP threads spin
    against each other and cost ten times the CPU for the same result."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@dataclass
class Pretrained:
    """``folder`` holds config.json + model.safetensors; ``model`` is the transformers one."""

    folder: Path
    model: Any
    train: Path  # uint16 flat binary
    val: Path  # .npy

    @property
    def vocab(self) -> int:
        return int(self.model.config.vocab_size)

    def hf_loss(self, windows: Any) -> float:
        """transformers' mean next-token loss over windows [n, seq+1] (the oracle)."""
        import torch

        with torch.no_grad():
            total = 0.0
            for w in windows:
                total += float(self.model(w[None], labels=w[None]).loss)
            return total / len(windows)


def pretrain(folder: Path, steps: int = 250, tied: bool = True, seed: int = 0) -> Pretrained:
    with one_thread():
        return _pretrain(folder, steps, tied, seed)


def _pretrain(folder: Path, steps: int, tied: bool, seed: int) -> Pretrained:
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    folder.mkdir(parents=True, exist_ok=True)
    vocab = TINY_PRETRAIN["vocab_size"]
    train_ids = markov_stream(40_000, vocab, seed=seed)
    val_ids = markov_stream(4_000, vocab, seed=seed + 1)
    train_ids.tofile(folder / "train.bin")
    np.save(folder / "val.npy", val_ids.astype(np.uint32))
    torch.manual_seed(seed)
    config = Qwen2Config(**TINY_PRETRAIN, tie_word_embeddings=tied)
    model = Qwen2ForCausalLM(config)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.copy_(1.0 + 0.3 * torch.randn_like(p))
            elif name.endswith("bias"):
                p.copy_(1.0 * torch.randn_like(p))  # Qwen2-like: biases that matter
            else:
                p.copy_(0.08 * torch.randn_like(p))
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    gen = torch.Generator().manual_seed(seed)
    data = torch.from_numpy(train_ids.astype(np.int64))
    model.train()
    for _ in range(steps):
        starts = torch.randint(0, len(data) - SEQ - 1, (16,), generator=gen)
        batch = torch.stack([data[s : s + SEQ + 1] for s in starts.tolist()])
        loss = model(batch, labels=batch).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    model.save_pretrained(folder)
    assert float(loss.detach()) < 0.6 * math.log(vocab), f"pretraining did not learn: loss {loss}"
    return Pretrained(folder, model, folder / "train.bin", folder / "val.npy")
