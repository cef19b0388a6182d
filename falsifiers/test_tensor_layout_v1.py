"""Falsifiers of tensor-layout-v1: orientation and names survive every format."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

from aprlib.formats import layout
from aprlib.formats.conversion import convert
from aprlib.formats.io import open_model


def convert_both(src: Path, work: Path) -> tuple[Path, Path]:
    convert(src, work / "m.apr")
    convert(src, work / "m.gguf")
    return work / "m.apr", work / "m.gguf"


def check_orientation(tiny, work: Path) -> int:
    """Every tensor in APR and GGUF equals transformers' own parameter, shape and values."""
    state = tiny.state()
    checked = 0
    for path in convert_both(tiny.safetensors, work):
        with open_model(path) as model:
            for name, expected in state.items():
                t = model.get(name)
                assert t.shape == expected.shape, f"{path.suffix} {name}: {t.shape}"
                assert np.array_equal(t.to_float32(), expected), f"{path.suffix} {name}"
                checked += 1
    return checked


@pytest.mark.falsifies("FALSIFY-LAYOUT-001")
@pytest.mark.parametrize("arch", ["qwen2", "llama"])
def test_weights_keep_hf_orientation(tiny_factory, tmp_path, arch, evidence):
    tiny = tiny_factory(arch)
    assert tiny.state()["model.layers.0.mlp.up_proj.weight"].shape == (160, 64)  # non-square
    evidence.record(tensors_checked=check_orientation(tiny, tmp_path))


def reference_permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp's convert_hf_to_gguf.py LlamaModel.permute, written out independently."""
    return (
        w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:])
        .swapaxes(1, 2)
        .reshape(w.shape)
    )


def check_gguf_package_reads_our_file(tiny, work: Path) -> int:
    from gguf import GGUFReader

    convert(tiny.safetensors, work / "m.gguf")
    state = tiny.state()
    cfg = tiny.model.config
    reader = GGUFReader(work / "m.gguf")
    seen = 0
    for t in reader.tensors:
        name = layout.gguf_to_hf(t.name)
        expected = state[name]
        assert list(t.shape) == list(reversed(expected.shape)), f"{t.name}: ne={list(t.shape)}"
        values = np.asarray(t.data, dtype=np.float32).reshape(expected.shape)
        if tiny.architecture == "llama" and "q_proj" in name:
            expected = reference_permute(expected, cfg.num_attention_heads)
        if tiny.architecture == "llama" and "k_proj" in name:
            expected = reference_permute(expected, cfg.num_key_value_heads)
        assert np.array_equal(values, expected), t.name
        seen += 1
    assert seen == len(state)
    return seen


@pytest.mark.falsifies("FALSIFY-LAYOUT-002")
@pytest.mark.parametrize("arch", ["qwen2", "llama"])
def test_gguf_package_reads_our_gguf(tiny_factory, tmp_path, arch, evidence):
    evidence.record(tensors=check_gguf_package_reads_our_file(tiny_factory(arch), tmp_path))


def check_name_map(tiny) -> int:
    """Every HF tensor name of the family's tiny model maps to the GGUF name gguf-py's own
    map gives for the family's llama.cpp architecture, and back."""
    import gguf

    from aprlib.config.families import FAMILIES

    name = FAMILIES[tiny.architecture].gguf_architecture
    arch = next(a for a, n in gguf.MODEL_ARCH_NAMES.items() if n == name)
    names = gguf.get_tensor_name_map(arch, tiny.model.config.num_hidden_layers)
    for hf in tiny.state():
        if tiny.tied and hf == "lm_head.weight":  # the embedding itself: not in a file
            continue
        expert = layout.expert_of(hf)
        if expert is not None:  # one slice of the stack llama.cpp's converter merges
            stack, e = expert
            merged = re.sub(r"\.experts\.\d+\.", ".experts.", hf)  # its merged name
            assert stack == names.get_name(merged, try_suffixes=(".weight",)), hf
            experts = tiny.model.config.num_experts
            assert (layout.experts_of(stack, experts) or [])[e] == hf
            continue
        expected = names.get_name(hf, try_suffixes=(".weight", ".bias"))
        ours = layout.hf_to_gguf(hf, name)
        assert ours == expected, f"{hf}: ours {ours}, gguf-py {expected}"
        assert layout.gguf_to_hf(expected, name) == hf
    return len(tiny.state())


@pytest.mark.falsifies("FALSIFY-LAYOUT-003")
@pytest.mark.parametrize(
    "arch",
    ["qwen2", "llama", "mistral", "qwen3", "olmo2", "gemma2", "gemma3_text", "phi3", "qwen3_moe"],
)
def test_name_map_agrees_with_gguf_package(tiny_factory, arch):
    # llama.cpp's gemma2 has no output tensor: Gemma 2's head is always the embedding;
    # two layers of at least six tensors each (Phi-3's fused projections: exactly six)
    assert check_name_map(tiny_factory(arch, tied=arch == "gemma2")) >= 15
