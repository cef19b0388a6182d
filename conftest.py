"""Shared fixtures: tiny random models, built from a config, saved as HF safetensors.

Every tensor is random (HF initialises norms to 1 and biases to 0, which hides norm and
bias bugs), the FFN is non-square, attention is GQA (kv heads < heads), and there are tied
and untied variants, Qwen2 (q/k/v biases) and Llama (permuted q/k in GGUF).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

pytest_plugins = ["pytester"]

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

TINY = dict(
    vocab_size=96,
    hidden_size=64,
    intermediate_size=160,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=128,
    rope_theta=10000.0,
    rms_norm_eps=1e-6,
)


#: a tiny mixture of experts: every layer sparse, each token to 2 of 4 experts
MOE = dict(num_experts=4, num_experts_per_tok=2, moe_intermediate_size=48, norm_topk_prob=True)


def pytest_configure(config: pytest.Config) -> None:
    """Every verdict names the llama.cpp build that produced it: its version is in the
    evidence's host block already; this adds the CPU features it was built for and sees,
    asked of the oracle's child process (a build that crashes cannot take the run) when the
    first evidence is written."""
    if hasattr(config, "workerinput"):
        return  # only the controller writes evidence
    from importlib.util import find_spec

    if find_spec("llama_cpp") is None:
        return
    from provable.contracts.evidence import add_host_facts

    def llama_cpp_system_info() -> str:
        from aprlib.forward.llamacpp import system_info

        return system_info(timeout=60)

    add_host_facts(llama_cpp_system_info=llama_cpp_system_info)


@dataclass
class TinyModel:
    """A saved HF model: ``folder`` holds config.json and model.safetensors."""

    folder: Path
    model: Any  # the transformers module, in float32
    architecture: str
    tied: bool
    dtype: str

    @property
    def safetensors(self) -> Path:
        return self.folder / "model.safetensors"

    def state(self) -> dict[str, Any]:
        """Parameter values as float32 numpy arrays, by HF name (the independent oracle);
        a mixture's experts as transformers saves them (read back with ``safetensors``),
        one tensor per expert, where transformers 5 stacks them in memory."""
        state = self.model.state_dict()
        if any(".experts." in k for k in state):
            from safetensors.torch import load_file

            state = load_file(str(self.folder / "model.safetensors"))
            if self.tied:
                state["lm_head.weight"] = state["model.embed_tokens.weight"]
        return {k: v.detach().float().numpy() for k, v in state.items()}


def hf_classes() -> dict[str, tuple[Any, Any]]:
    """transformers' (config class, model class) of each family the tests build."""
    from transformers import (
        Gemma2Config,
        Gemma2ForCausalLM,
        Gemma3ForCausalLM,
        Gemma3TextConfig,
        LlamaConfig,
        LlamaForCausalLM,
        MistralConfig,
        MistralForCausalLM,
        Olmo2Config,
        Olmo2ForCausalLM,
        Phi3Config,
        Phi3ForCausalLM,
        Qwen2Config,
        Qwen2ForCausalLM,
        Qwen3Config,
        Qwen3ForCausalLM,
        Qwen3MoeConfig,
        Qwen3MoeForCausalLM,
    )

    return {
        "qwen2": (Qwen2Config, Qwen2ForCausalLM),
        "llama": (LlamaConfig, LlamaForCausalLM),
        "mistral": (MistralConfig, MistralForCausalLM),  # a sliding window on every layer
        "qwen3": (Qwen3Config, Qwen3ForCausalLM),  # q/k RMSNorm per head
        "olmo2": (Olmo2Config, Olmo2ForCausalLM),  # norms after; q/k norm over the projection
        "phi3": (Phi3Config, Phi3ForCausalLM),  # fused qkv_proj and gate_up_proj
        "qwen3_moe": (Qwen3MoeConfig, Qwen3MoeForCausalLM),  # a router and experts
        "gemma2": (Gemma2Config, Gemma2ForCausalLM),  # (1 + w) norms, soft-caps, windows
        "gemma3_text": (Gemma3TextConfig, Gemma3ForCausalLM),  # (1 + w) norms, GELU, windows
    }


def build_tiny(
    folder: Path,
    architecture: str = "qwen2",
    tied: bool = False,
    dtype: str = "float32",
    seed: int = 0,
    **overrides: Any,
) -> TinyModel:
    import torch

    config_cls, model_cls = hf_classes()[architecture]
    values = {**TINY, **overrides}
    if architecture == "qwen3_moe":  # its class's 128 experts of 768: a few small ones
        values = {**MOE, **values}
    if architecture in ("qwen3", "qwen3_moe", "mistral", "gemma2", "gemma3_text"):  # 128, 256
        values.setdefault("head_dim", values["hidden_size"] // values["num_attention_heads"])
    if architecture == "phi3":  # its class defaults to Phi-3's ids (32000) past a tiny vocab
        values = {"pad_token_id": 0, "bos_token_id": 1, "eos_token_id": 2, **values}
    config = config_cls(**values, tie_word_embeddings=tied)
    torch.manual_seed(seed)
    from aprlib.forward.hf_capture import eager_experts

    model = eager_experts(model_cls(config).eval())
    with torch.no_grad():
        for name, p in model.named_parameters():
            # random everywhere; norms around 1 with spread, so a dropped norm shows
            base = 1.0 if "norm" in name else 0.0
            p.copy_(base + torch.randn_like(p) * (0.5 if "norm" in name else 0.08))
    if dtype == "bfloat16":
        model = model.to(torch.bfloat16)
        with torch.no_grad():  # one weight the incident made famous: 7.5625 read as 7.0625
            model.model.norm.weight[0] = 7.5625
    elif dtype == "float16":
        model = model.to(torch.float16)
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    return TinyModel(folder, model.float(), architecture, tied, dtype)


@pytest.fixture(scope="session")
def tiny_factory(tmp_path_factory: pytest.TempPathFactory):
    """``tiny_factory(architecture, tied, dtype)`` → a cached TinyModel."""
    cache: dict[tuple, TinyModel] = {}

    def make(
        architecture: str = "qwen2", tied: bool = False, dtype: str = "float32", **overrides: Any
    ) -> TinyModel:
        key = (architecture, tied, dtype, repr(sorted(overrides.items())))  # lists too
        if key not in cache:
            folder = tmp_path_factory.mktemp(
                f"{architecture}-{'tied' if tied else 'untied'}-{dtype}"
            )
            cache[key] = build_tiny(folder, architecture, tied, dtype, **overrides)
        return cache[key]

    return make


@pytest.fixture(scope="module")
def one_torch_thread():
    """Tiny matrices: torch's threads only contend (a busy 2-core host ran 10x slower)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def tiny_qwen2(tiny_factory) -> TinyModel:
    return tiny_factory("qwen2", tied=False)


@pytest.fixture(scope="session")
def tiny_qwen2_tied(tiny_factory) -> TinyModel:
    return tiny_factory("qwen2", tied=True)


@pytest.fixture(scope="session")
def tiny_llama(tiny_factory) -> TinyModel:
    return tiny_factory("llama", tied=False)
