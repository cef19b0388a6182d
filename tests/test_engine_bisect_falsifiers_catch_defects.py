"""Each falsifier of engine-bisect-v1 goes red on the defect it exists to catch: the old
one-sided floor (a side's own error as its floor), ``--expect`` ignored, the config
comparison dropped, a map that drops a point, a capture that copies the wrong tensor."""

from __future__ import annotations

import dataclasses

import pytest

import aprlib.forward.bisect as bisect_module
from falsifiers import test_engine_bisect_v1 as ebis


def one_sided_plan(side_a, side_b):
    """The rule before this contract: B judged against A's weights in float64, with A's own
    error as the floor; A never judged."""
    Run, Planned = bisect_module.Run, bisect_module.PlannedCheck
    wa = side_a.weights_key()
    return [Planned("engine", "B", Run("side", "B"), Run("ref64", wa), Run("side", "A"))]


REAL_PLAN = bisect_module.plan


def expect_ignored_plan(side_a, side_b):
    return REAL_PLAN(side_a, dataclasses.replace(side_b, expect=None))


@pytest.mark.parametrize("bug", ["gqa head mapping", "gate/up swapped"])
def test_001_catches_the_one_sided_floor(bug, tiny_factory, monkeypatch):
    path = tiny_factory("qwen2", tied=False).safetensors
    ebis.check_either_side_is_named(path, bug)
    monkeypatch.setattr(bisect_module, "plan", one_sided_plan)
    with pytest.raises(AssertionError, match=r"planted .* on A: bisect said CLEAN"):
        ebis.check_either_side_is_named(path, bug)


def test_002_catches_expect_ignored(tiny_factory, tmp_path, monkeypatch):
    path = tiny_factory("qwen2", tied=False).safetensors
    monkeypatch.setattr(bisect_module, "plan", expect_ignored_plan)
    with pytest.raises(AssertionError, match=r"faithful bf16 conversion bisected .* at embed"):
        ebis.check_expected_rounding(path, tmp_path, "bf16")


def test_003_catches_the_config_comparison_dropped(tiny_factory, tmp_path, monkeypatch):
    path = tiny_factory("qwen2", tied=False).safetensors
    monkeypatch.setattr(bisect_module, "config_differences", lambda a, b: [])
    with pytest.raises(AssertionError, match="no config named"):
        ebis.check_config_named_first(path, tmp_path, "rope_theta", 1e6)


def test_006_catches_a_capture_that_drops_the_point(tiny_factory, monkeypatch):
    import aprlib.forward.hf_capture as hf_capture

    model = tiny_factory("qwen2", tied=False).model
    patch = "k_proj adds its bias twice (layer 1)"
    ebis.check_patched_module_is_named(model, patch)
    real = hf_capture.capture_hf

    def blinded(model, tokens, *args, **kwargs):
        captured = real(model, tokens, *args, **kwargs)
        captured.points.pop("layers.1.attn.k.post_bias")
        return captured

    monkeypatch.setattr(hf_capture, "capture_hf", blinded)
    with pytest.raises(AssertionError, match=r"bisect said introduced in B's engine at layers\.1"):
        ebis.check_patched_module_is_named(model, patch)


def test_004_catches_a_map_that_drops_a_point(tmp_path):
    from falsifiers import numpy_engine as ne

    model = ne.write_tiny(tmp_path / "model", "qwen2")
    ebis.check_dump_names_the_planted_bug(model, tmp_path, "norm_eps")
    full = ne.engine_map_yaml()
    entries = full.split("  - name: ")
    blinded = "  - name: ".join(e for e in entries if "attn_norm-" not in e)
    with pytest.raises(AssertionError, match=r"planted norm_eps in B: bisect said introduced"):
        ebis.check_dump_names_the_planted_bug(model, tmp_path, "norm_eps", lambda: blinded)


def test_005_catches_a_callback_that_copies_the_wrong_tensor(tiny_factory, tmp_path, monkeypatch):
    import aprlib.forward.llamacpp as llamacpp
    from falsifiers.llamacpp_oracle import require_llama_cpp

    require_llama_cpp()
    path = tiny_factory("qwen2", tied=False).safetensors
    real = llamacpp.llamacpp_activations

    def wrong_tensor(*args, **kwargs):
        raw = real(*args, **kwargs)
        raw["Kcur-1"] = raw["Vcur-1"]  # the callback copies V where K was asked for
        return raw

    monkeypatch.setattr(llamacpp, "llamacpp_activations", wrong_tensor)
    with pytest.raises(AssertionError, match=r"llama\.cpp on the clean GGUF bisected"):
        ebis.check_llamacpp_names_a_planted_bias(path, tmp_path)
