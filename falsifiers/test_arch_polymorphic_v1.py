"""Falsifiers of arch-polymorphic-v1: one loader for every family; a mismatch fails fast."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from aprlib import ShapeMismatchError, Transformer
from aprlib.formats.conversion import convert

#: config.json edits and the field each must be named under, with both values
EDITS = {
    "hidden": ({"hidden_size": 80, "head_dim": 16}, ["hidden_size: config 80, weights 64"]),
    "layers+ffn": (
        {"num_hidden_layers": 3, "intermediate_size": 128},
        ["num_hidden_layers: config 3, weights 2", "intermediate_size: config 128, weights 160"],
    ),
    "kv-heads+vocab": (
        {"num_key_value_heads": 4, "vocab_size": 100},
        ["num_key_value_heads: config 4, weights 2", "vocab_size: config 100, weights 96"],
    ),
    "tie": ({"tie_word_embeddings": True}, ["tie_word_embeddings: config True, weights False"]),
}


def edited(tiny, work: Path, changes: dict) -> Path:
    folder = work / "edited"
    shutil.copytree(tiny.folder, folder)
    config = json.loads((folder / "config.json").read_text())
    config.update(changes)
    if "num_hidden_layers" in changes:  # a type per layer: the family's pattern gives them
        config.pop("layer_types", None)
    (folder / "config.json").write_text(json.dumps(config))
    return folder / "model.safetensors"


def check_mismatch_named(tiny, work: Path, changes: dict, expected: list[str]) -> None:
    with pytest.raises(ShapeMismatchError) as err:
        Transformer.from_file(edited(tiny, work, changes))
    text = str(err.value)
    for needle in expected:
        assert needle in text, f"{needle!r} not named in: {text}"


@pytest.mark.falsifies("FALSIFY-ARCH-001")
@pytest.mark.parametrize(
    "arch",
    ["qwen2", "llama", "mistral", "qwen3", "olmo2", "gemma2", "gemma3_text", "phi3", "qwen3_moe"],
)
@pytest.mark.parametrize("edit", sorted(EDITS))
def test_mismatched_config_names_every_field(tiny_factory, tmp_path, arch, edit):
    changes, expected = EDITS[edit]
    if arch == "qwen3_moe" and "intermediate_size" in changes:  # no dense MLP: the experts'
        changes = {**changes, "moe_intermediate_size": changes["intermediate_size"]}
        expected = [
            e.replace(
                "intermediate_size: config 128, weights 160",
                "moe_intermediate_size: config 128, weights 48",
            )
            for e in expected
        ]
    check_mismatch_named(tiny_factory(arch, tied=False), tmp_path, changes, expected)


def files_of(tiny, work: Path) -> list[Path]:
    """The tiny model as safetensors (its own folder), APR and GGUF."""
    src = tiny.safetensors
    out = [src, work / "m.apr", work / "m.gguf"]
    convert(src, out[1])
    convert(src, out[2])
    return out


def check_every_format(tiny, work: Path) -> None:
    tokens = torch.randint(0, 96, (1, 11), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        theirs = tiny.model(tokens).logits
        for path in files_of(tiny, work):
            net = Transformer.from_file(path)
            diff = float((net(tokens) - theirs).abs().max())
            assert diff < 1e-4, f"{path.name}: max |ours - transformers| = {diff:.3g}"


#: windows that bite on the 11 tokens: Mistral's on every layer, Qwen's on some layers
QWEN_WINDOW = {"use_sliding_window": True, "sliding_window": 4, "max_window_layers": 1}
QWEN_LAYER_TYPES = {
    "use_sliding_window": True,
    "sliding_window": 3,
    "layer_types": ["sliding_attention", "full_attention"],
}


@pytest.mark.falsifies("FALSIFY-ARCH-002")
@pytest.mark.parametrize(
    ("arch", "tied", "overrides"),
    [
        ("qwen2", False, {}),
        ("qwen2", True, QWEN_WINDOW),
        ("llama", False, {}),
        ("llama", True, {}),
        ("mistral", False, {"sliding_window": 4}),
        ("mistral", True, {"sliding_window": None}),
        ("qwen3", False, {}),
        ("qwen3", True, QWEN_LAYER_TYPES),
        ("olmo2", False, {}),
        ("olmo2", True, {}),
        ("gemma2", True, {"sliding_window": 4, "final_logit_softcapping": 5.0}),
        ("gemma3_text", False, {"sliding_window": 3, "sliding_window_pattern": 2}),
        ("phi3", False, {"sliding_window": 4}),
        ("phi3", True, {}),
        ("qwen3_moe", False, {}),
        ("qwen3_moe", True, {"mlp_only_layers": [1], "norm_topk_prob": False}),
    ],
    ids=lambda v: "window" if v in (QWEN_WINDOW, QWEN_LAYER_TYPES) else None,
)
def test_one_loader_serves_every_family_and_format(tiny_factory, tmp_path, arch, tied, overrides):
    check_every_format(tiny_factory(arch, tied=tied, **overrides), tmp_path)
