"""A learnable synthetic token stream and a tiny model trained on it (for loss-sanity-v1).

The stream interleaves two chains: s[t+1] = perm(s[t-1]). The current token says nothing
about the next one (it belongs to the other chain), so a model must attend to the previous
position: RoPE, q/k/v and their biases all matter, and a bigram model is stuck near
ln(vocab/2). A small model learns it in a few seconds to a loss far below ln(vocab).
"""

from __future__ import annotations

import math
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch

from aprlib import DType, ModelConfig, Transformer, expected_shapes, model_from_arrays, write_model

VOCAB = 64
CONFIG = ModelConfig(
    "qwen2",
    vocab_size=VOCAB,
    hidden_size=64,
    intermediate_size=96,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    head_dim=16,
    rms_norm_eps=1e-6,
    rope_theta=1e6,
    max_position_embeddings=128,
    tie_word_embeddings=True,
)
PERM = np.random.default_rng(7).permutation(VOCAB)


def stream(batch: int, length: int, seed: int) -> torch.Tensor:
    rng = np.random.default_rng(seed)
    out = np.zeros((batch, length), dtype=np.int64)
    out[:, :2] = rng.integers(0, VOCAB, (batch, 2))
    for t in range(2, length):
        out[:, t] = PERM[out[:, t - 2]]
    return torch.from_numpy(out)


def random_net(cfg: ModelConfig, seed: int = 0) -> Transformer:
    """Every tensor random: norms around 1 with spread, biases of weight."""
    gen = torch.Generator().manual_seed(seed)
    state = {}
    for name, shape in expected_shapes(cfg).items():
        x = torch.randn(shape, generator=gen)
        if "norm" in name:
            state[name] = 1.0 + 0.2 * x
        elif name.endswith(".bias"):
            state[name] = 3.0 * x
        else:
            state[name] = x / math.sqrt(shape[-1])
    net = Transformer(cfg)
    net.load_state_dict(state, strict=True, assign=True)
    return net


@lru_cache(maxsize=2)
def train(steps: int = 150, seed: int = 0) -> Transformer:
    """Cached per process: callers must not modify the returned model.

    Biases stay at their random values (std 1): the model must learn around them, so a
    dropped or doubled bias costs loss, as it does in a real checkpoint."""
    torch.manual_seed(seed)
    net = random_net(CONFIG, seed).train()
    trained = [p for n, p in net.named_parameters() if not n.endswith(".bias")]
    for p in trained:
        p.requires_grad_(True)
    opt = torch.optim.AdamW(trained, lr=2e-2, weight_decay=0.0)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny matrices: threads only contend
    try:
        for step in range(steps):
            loss = net.loss(stream(32, 24, seed * 100_000 + step))
            opt.zero_grad()
            loss.backward()
            opt.step()
    finally:
        torch.set_num_threads(threads)
    return net.eval()


def eval_tokens() -> torch.Tensor:
    return stream(8, 24, 999_999)


def save(net: Transformer, path: Path, cfg: ModelConfig | None = None) -> Path:
    arrays = {
        name: (DType.F32, tuple(v.shape), v.detach().float().contiguous().numpy())
        for name, v in net.state_dict().items()
    }
    write_model(model_from_arrays(arrays, cfg or net.config), path)
    return path
