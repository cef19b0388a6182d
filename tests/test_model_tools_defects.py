"""The trace, llama.cpp-parity and loss-sanity falsifiers turn red on injected defects."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from aprlib import DType
from aprlib.formats import layout
from aprlib.formats.dtypes import from_float32
from aprlib.forward import model as model_mod
from aprlib.forward.trace import PointComparison
from falsifiers import test_gguf_llamacpp_parity_v1 as llamacpp
from falsifiers import test_loss_sanity_v1 as loss
from falsifiers import test_trace_capture_points_v1 as trace
from falsifiers.loss_stream import train

QWEN = trace.SPECS["qwen2-bias-untied"]


def test_trace_001_catches_a_skipped_point(monkeypatch):
    real = model_mod.Transformer._emit

    def skipping(self, name, x):
        if name != "layers.0.attn.scores":
            real(self, name, x)

    monkeypatch.setattr(model_mod.Transformer, "_emit", skipping)
    with pytest.raises(model_mod.CaptureError):
        trace.check_all_points_fire(QWEN)


def test_trace_002_catches_pre_bias_captured_as_post_bias(monkeypatch):
    real = model_mod.Transformer._emit
    kept = {}

    def mislabelled(self, name, x):
        if name.endswith("pre_bias"):
            kept[name[: -len("pre_bias")]] = x
        elif name.endswith("post_bias"):
            x = kept[name[: -len("post_bias")]]
        real(self, name, x)

    monkeypatch.setattr(model_mod.Transformer, "_emit", mislabelled)
    with pytest.raises(AssertionError, match="post_bias"):
        trace.check_points_hold_their_values(QWEN)


def test_trace_003_catches_pairing_by_position(monkeypatch):
    def by_position(a, b):
        return [
            PointComparison(x.name, x.scope, "compared", x, y)
            for x, y in zip(a.points, b.points, strict=False)
        ]

    monkeypatch.setattr(trace, "compare_traces", by_position)
    t = trace.trace_forward(trace.ours_from(trace.hf_model(QWEN)), [3, 1, 4, 1, 5])
    with pytest.raises(AssertionError):
        trace.check_like_points_only(t)


def test_llamacpp_001_catches_an_unpermuted_llama_gguf(monkeypatch, tiny_factory, tmp_path):
    monkeypatch.setattr(layout, "permute_qk", lambda rows, heads: rows)
    with pytest.raises(AssertionError, match="failed"):
        llamacpp.check_parity(tiny_factory("llama", **llamacpp.WIDE), tmp_path, DType.F32)


def test_llamacpp_002_catches_a_quantiser_with_wrong_scales(monkeypatch, tiny_factory, tmp_path):
    def off_scale(values, dtype):
        return from_float32(values * (1.3 if dtype is DType.Q8_0 else 1.0), dtype)

    monkeypatch.setattr(llamacpp, "from_float32", off_scale)
    with pytest.raises(AssertionError, match="Q8_0"):
        llamacpp.check_parity(tiny_factory("qwen2", **llamacpp.WIDE), tmp_path, DType.Q8_0)


def test_loss_001_catches_a_writer_that_drops_biases(monkeypatch, tmp_path):
    real = loss.save

    def dropping(net, path, cfg=None):
        bad = model_mod.Transformer(net.config)
        state = {k: (v * 0 if k.endswith(".bias") else v) for k, v in net.state_dict().items()}
        bad.load_state_dict(state, assign=True)
        return real(bad, path, cfg)

    monkeypatch.setattr(loss, "save", dropping)
    with pytest.raises(AssertionError, match="safetensors: loss"):
        loss.check_loss_holds(train(), tmp_path)


def test_loss_002_fails_when_a_defect_leaves_the_loss_alone(tmp_path):
    with pytest.raises(AssertionError, match="not caught"):
        loss.check_defect_caught(train(), tmp_path, lambda arrays, cfg: (arrays, cfg))


def test_loss_stream_needs_attention_to_the_previous_position():
    """The learnable stream cannot be predicted from the current token (bigram bound)."""
    from falsifiers.loss_stream import PERM, stream

    s = stream(4, 10, 0).numpy()
    assert np.array_equal(s[:, 2:], PERM[s[:, :-2]])
    assert torch.equal(torch.from_numpy(s), stream(4, 10, 0))
