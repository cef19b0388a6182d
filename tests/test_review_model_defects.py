"""Defects found reviewing the model-side work (rope scaling, shape checks, bisect).

Each test states what should hold; each failed before its fix (a reviewer's findings).
Oracles: transformers' own configs and models (parity), transformers' own
``_compute_yarn_parameters`` (the llama.cpp gap), a NaN/Inf placed by hand (bisect).
"""

from __future__ import annotations

import copy
import json
import math
import shutil
from typing import Any

import pytest
import torch

from aprlib import Transformer
from aprlib.cli.main import main as apr
from aprlib.compare.shapes import expected_shapes
from aprlib.config.modelconfig import from_hf, llama_cpp_rope_gaps
from aprlib.forward.bisect import bisect
from falsifiers.test_forward_parity_hf_v1 import TOLERANCE, Spec, hf_model

TOKENS = [3, 1, 4, 1, 5, 9, 2, 6]


def _hf_dict(arch: str, rope: dict[str, Any], **extra: Any) -> dict[str, Any]:
    hf: dict[str, Any] = dict(
        vocab_size=50,
        hidden_size=48,
        intermediate_size=40,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        max_position_embeddings=64,
        rope_parameters=rope,
        tie_word_embeddings=False,
    )
    if arch == "qwen2":
        hf.pop("head_dim")
        hf["hidden_size"] = 64
    hf.update(extra)
    return {k: v for k, v in hf.items() if v is not None}


def _raw_config_parity(arch: str, hf: dict[str, Any], length: int = 24) -> float:
    """Our forward built from the config.json as written (not transformers' normalised
    copy) against transformers built from the same dict, on the same random weights."""
    raw = {**copy.deepcopy(hf), "model_type": arch}  # transformers edits the dict in place
    model = hf_model(Spec(arch, hf, 1, length, 3))
    net = Transformer(from_hf(raw))
    net.load_state_dict(
        {k: v.detach().clone() for k, v in model.state_dict().items()}, strict=True, assign=True
    )
    tokens = torch.randint(
        0, hf["vocab_size"], (1, length), generator=torch.Generator().manual_seed(1)
    )
    with torch.no_grad():
        return float((net.eval()(tokens) - model(tokens).logits).abs().max())


# --- forward parity with transformers on configs it accepts ------------------------------


def test_top_level_original_context_is_the_one_transformers_rotates_by():
    rope = {
        "rope_type": "llama3",
        "rope_theta": 5e5,
        "factor": 8.0,
        "low_freq_factor": 1.0,
        "high_freq_factor": 4.0,
        "original_max_position_embeddings": 8,
    }
    hf = _hf_dict("llama", rope, original_max_position_embeddings=32)
    assert _raw_config_parity("llama", hf) < TOLERANCE  # seen: 0.6


def test_qwen2_without_max_position_embeddings_takes_qwen2s_default():
    rope = {"rope_type": "yarn", "rope_theta": 1e4, "factor": 4.0}
    hf = _hf_dict("qwen2", rope, max_position_embeddings=None)
    assert _raw_config_parity("qwen2", hf) < TOLERANCE  # seen: 0.1


# --- shape contradictions: a config transformers loads is not refused ---------------------


@pytest.mark.parametrize("key,value", [("attention_bias", False), ("mlp_bias", True)])
def test_qwen2_bias_keys_transformers_ignores_are_not_a_contradiction(tmp_path, key, value):
    from transformers import Qwen2Config, Qwen2ForCausalLM

    hf = _hf_dict("qwen2", {"rope_type": "default", "rope_theta": 1e6})
    Qwen2ForCausalLM(Qwen2Config(**hf)).save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    config[key] = value
    (tmp_path / "config.json").write_text(json.dumps(config))
    theirs = Qwen2ForCausalLM.from_pretrained(tmp_path)  # transformers loads it as it is
    assert theirs.model.layers[0].self_attn.q_proj.bias is not None
    assert theirs.model.layers[0].mlp.gate_proj.bias is None
    Transformer.from_file(tmp_path)


# --- llama.cpp rope gaps --------------------------------------------------------------------


def test_yarn_without_truncation_is_a_llama_cpp_gap():
    from transformers import LlamaConfig
    from transformers.modeling_rope_utils import _compute_yarn_parameters

    rope = {
        "rope_type": "yarn",
        "rope_theta": 1e4,
        "factor": 8.0,
        "original_max_position_embeddings": 4096,
    }
    hf = _hf_dict("llama", rope, head_dim=128, hidden_size=512)
    truncated = _compute_yarn_parameters(LlamaConfig(**copy.deepcopy(hf)))[0]
    hf["rope_parameters"] = {**rope, "truncate": False}
    exact = _compute_yarn_parameters(LlamaConfig(**copy.deepcopy(hf)))[0]
    assert not torch.allclose(truncated, exact)  # the two rotate differently
    cfg = from_hf({**hf, "model_type": "llama"})
    assert llama_cpp_rope_gaps(cfg), "no convert note although llama.cpp cannot rotate so"


# --- bisect: a NaN/Inf on A's side ---------------------------------------------------------


def _net(seed: int = 0) -> Transformer:
    cfg = from_hf(
        dict(
            model_type="llama",
            vocab_size=40,
            hidden_size=32,
            intermediate_size=24,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            rope_theta=1e4,
            max_position_embeddings=64,
            attention_bias=True,
        )
    )
    gen = torch.Generator().manual_seed(seed)
    state = {
        k: (1.0 if "norm" in k else 0.0) + 0.2 * torch.randn(s, generator=gen)
        for k, s in expected_shapes(cfg).items()
    }
    net = Transformer(cfg)
    net.load_state_dict(state, strict=True, assign=True)
    return net.eval()


def test_a_nan_on_side_a_is_not_a_clean_verdict():
    a = _net()
    with torch.no_grad():
        a.model.embed_tokens.weight[4, 0] = float("nan")
    report = bisect(a, _net(), TOKENS)
    assert not report.clean  # seen: CLEAN (exit 0) while A's logits are NaN from token 2 on


def test_an_inf_on_side_a_is_named_where_it_appears():
    a = _net()
    with torch.no_grad():
        a.model.layers[0].mlp.down_proj.weight[0, 0] = float("inf")
    report = bisect(a, _net(), TOKENS)
    found = report.first_nonfinite or (report.introduced[0] if report.introduced else None)
    assert found is not None and found.name == "layers.0.mlp.down"


# --- apr bisect CLI --------------------------------------------------------------------------


@pytest.mark.parametrize("command", ["bisect", "trace"])
def test_token_outside_the_vocabulary_is_one_line(tiny_factory, capsys, command):
    path = str(tiny_factory("llama").folder)
    models = [path, path] if command == "bisect" else [path]
    assert apr([command, *models, "--tokens", "99999"]) == 1
    assert "99999" in capsys.readouterr().err


def test_helpers_build_what_the_tests_mean():
    """The fixtures above are sound: a clean pair bisects CLEAN, a raw config that carries
    everything transformers needs is at parity."""
    assert bisect(_net(), _net(), TOKENS).clean
    rope = {"rope_type": "yarn", "rope_theta": 1e4, "factor": 4.0}
    assert _raw_config_parity("qwen2", _hf_dict("qwen2", rope)) < TOLERANCE


# --- apr diff: rope scaling compared by meaning -------------------------------------------

YARN = {
    "rope_type": "yarn",
    "rope_theta": 1e4,
    "factor": 4.0,
    "original_max_position_embeddings": 16,
}


@pytest.mark.parametrize(
    "spelled",
    [
        {"truncate": True},
        {"beta_fast": 32.0, "beta_slow": 1.0},
        {"attention_factor": 0.1 * math.log(4.0) + 1.0},
    ],
    ids=["truncate", "betas", "attention_factor"],
)
def test_yarn_defaults_spelled_out_diff_as_the_same_config(tmp_path, capsys, spelled):
    from transformers import LlamaConfig
    from transformers.modeling_rope_utils import _compute_yarn_parameters

    from conftest import build_tiny

    def yarn_of(rope: dict[str, Any]) -> tuple[torch.Tensor, float]:
        hf = _hf_dict("llama", copy.deepcopy(rope))
        return _compute_yarn_parameters(LlamaConfig(**hf))

    (freq_a, scale_a), (freq_b, scale_b) = yarn_of(YARN), yarn_of({**YARN, **spelled})
    assert torch.equal(freq_a, freq_b) and scale_a == scale_b  # transformers: the same rope
    a = build_tiny(tmp_path / "a", "llama", rope_parameters=copy.deepcopy(YARN)).folder
    b = tmp_path / "b"
    shutil.copytree(a, b)
    config = json.loads((b / "config.json").read_text())
    key = "rope_parameters" if "rope_parameters" in config else "rope_scaling"
    config[key] = {**config[key], **spelled}
    (b / "config.json").write_text(json.dumps(config))
    code = apr(["diff", str(a), str(b), "--json"])
    findings = json.loads(capsys.readouterr().out)["config"]
    assert [f["field"] for f in findings] == [] and code == 0


def _refuse_constant(name: str) -> float:
    raise ValueError(f"{name} is not JSON (RFC 8259)")


def test_bisect_json_is_strict_json(tiny_factory, capsys):
    path = str(tiny_factory("llama").folder)
    assert apr(["bisect", path, path, "--tokens", "1,2,3", "--json"]) == 0
    json.loads(capsys.readouterr().out, parse_constant=_refuse_constant)
