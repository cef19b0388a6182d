"""Falsifiers of loss-sanity-v1: train a tiny model, hold its loss, and see defects raise it."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch

from aprlib import DType, ModelConfig, Transformer, model_from_arrays, write_model
from aprlib.formats.dtypes import from_float32
from falsifiers.llamacpp_oracle import require_llama_cpp
from falsifiers.loss_stream import VOCAB, eval_tokens, save, train

CLEAN_LIMIT = math.log(VOCAB) / 4
DEFECT_MARGIN = 0.5  # nats above the trained loss


def loss_of(net: Transformer) -> float:
    with torch.no_grad():
        return float(net.loss(eval_tokens()))


def llamacpp_loss(gguf: Path, tokens: torch.Tensor) -> float:
    from aprlib.forward.logits import llamacpp_logits

    total = 0.0
    for row in tokens.tolist():
        logits = torch.from_numpy(llamacpp_logits(gguf, row[:-1]))
        total += float(torch.nn.functional.cross_entropy(logits, torch.tensor(row[1:])))
    return total / len(tokens)


def check_loss_holds(net: Transformer, work: Path) -> dict[str, float]:
    base = loss_of(net)
    assert base < CLEAN_LIMIT, f"trained loss {base:.3f} not below ln(vocab)/4 = {CLEAN_LIMIT:.3f}"
    (work / "st").mkdir(parents=True, exist_ok=True)
    losses = {"memory": base}
    for fmt, path in (
        ("safetensors", work / "st" / "model.safetensors"),
        ("apr", work / "m.apr"),
        ("gguf", work / "m.gguf"),
    ):
        save(net, path)
        losses[fmt] = loss_of(Transformer.from_file(path))
        assert abs(losses[fmt] - base) < 1e-4, f"{fmt}: loss {losses[fmt]:.6f} vs {base:.6f}"
    require_llama_cpp()  # found, not imported: llama.cpp runs in a child
    losses["llama.cpp"] = llamacpp_loss(work / "m.gguf", eval_tokens())
    assert abs(losses["llama.cpp"] - base) < 1e-3, f"llama.cpp loss {losses['llama.cpp']:.5f}"
    return losses


@pytest.mark.falsifies("FALSIFY-LOSS-001")
def test_trained_loss_holds_through_every_format(tmp_path, evidence):
    evidence.record(**check_loss_holds(train(), tmp_path))


Arrays = dict[str, tuple[DType, tuple[int, ...], np.ndarray]]
Defect = Callable[[Arrays, ModelConfig], tuple[Arrays, ModelConfig]]


def _scale_biases(factor: float) -> Defect:
    def defect(arrays: Arrays, cfg: ModelConfig) -> tuple[Arrays, ModelConfig]:
        return {
            n: (d, s, v * factor if n.endswith(".bias") else v) for n, (d, s, v) in arrays.items()
        }, cfg

    return defect


def _transpose_o_proj(arrays: Arrays, cfg: ModelConfig) -> tuple[Arrays, ModelConfig]:
    name = "model.layers.0.self_attn.o_proj.weight"
    d, s, v = arrays[name]
    return {**arrays, name: (d, s, np.ascontiguousarray(v.T))}, cfg


def _bf16_tagged_f16(arrays: Arrays, cfg: ModelConfig) -> tuple[Arrays, ModelConfig]:
    return {n: (DType.F16, s, from_float32(v, DType.BF16)) for n, (_, s, v) in arrays.items()}, cfg


def _wrong_rope_theta(arrays: Arrays, cfg: ModelConfig) -> tuple[Arrays, ModelConfig]:
    return arrays, dataclasses.replace(cfg, rope_theta=10000.0)


def _untied_random_head(arrays: Arrays, cfg: ModelConfig) -> tuple[Arrays, ModelConfig]:
    shape = (cfg.vocab_size, cfg.hidden_size)
    head = np.random.default_rng(0).standard_normal(shape).astype(np.float32) * 0.02
    untied = dataclasses.replace(cfg, tie_word_embeddings=False)
    return {**arrays, "lm_head.weight": (DType.F32, shape, head)}, untied


DEFECTS: dict[str, Defect] = {
    "transpose": _transpose_o_proj,
    "dtype-mislabel": _bf16_tagged_f16,
    "dropped-bias": _scale_biases(0.0),
    "doubled-bias": _scale_biases(2.0),
    "rope-theta": _wrong_rope_theta,
    "untied-head": _untied_random_head,
}


def check_defect_caught(net: Transformer, work: Path, defect: Defect) -> dict[str, float]:
    base = loss_of(net)
    arrays = {
        n: (DType.F32, tuple(v.shape), v.detach().float().contiguous().numpy())
        for n, v in net.state_dict().items()
    }
    bad_arrays, bad_cfg = defect(arrays, net.config)
    path = work / "defective.apr"
    write_model(model_from_arrays(bad_arrays, bad_cfg), path)
    bad = loss_of(Transformer.from_file(path))
    assert not bad <= base + DEFECT_MARGIN, (
        f"defect not caught: loss {bad:.3f} vs trained {base:.3f} (+{DEFECT_MARGIN} needed)"
    )
    return {"trained": base, "defective": bad}


@pytest.mark.falsifies("FALSIFY-LOSS-002")
@pytest.mark.parametrize("name", sorted(DEFECTS))
def test_each_defect_drives_the_loss_up(tmp_path, name, evidence):
    evidence.record(**check_defect_caught(train(), tmp_path, DEFECTS[name]))
