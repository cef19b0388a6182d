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
    (folder / "config.json").write_text(json.dumps(config))
    return folder / "model.safetensors"


def check_mismatch_named(tiny, work: Path, changes: dict, expected: list[str]) -> None:
    with pytest.raises(ShapeMismatchError) as err:
        Transformer.from_file(edited(tiny, work, changes))
    text = str(err.value)
    for needle in expected:
        assert needle in text, f"{needle!r} not named in: {text}"


@pytest.mark.falsifies("FALSIFY-ARCH-001")
@pytest.mark.parametrize("arch", ["qwen2", "llama"])
@pytest.mark.parametrize("edit", sorted(EDITS))
def test_mismatched_config_names_every_field(tiny_factory, tmp_path, arch, edit):
    changes, expected = EDITS[edit]
    check_mismatch_named(tiny_factory(arch, tied=False), tmp_path, changes, expected)


def files_of(tiny, work: Path, mistral: bool = False) -> list[Path]:
    """The tiny model as safetensors (its own folder), APR and GGUF."""
    src = tiny.safetensors
    if mistral:  # the same weights under a Mistral config.json (Llama-shaped)
        config = json.loads((tiny.folder / "config.json").read_text())
        config.update(model_type="mistral", architectures=["MistralForCausalLM"])
        config.update(sliding_window=None)
        src = edited(tiny, work, config)
    out = [src, work / "m.apr", work / "m.gguf"]
    convert(src, out[1])
    convert(src, out[2])
    return out


def check_every_format(tiny, work: Path, mistral: bool = False) -> None:
    tokens = torch.randint(0, 96, (1, 11), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        theirs = tiny.model(tokens).logits
        for path in files_of(tiny, work, mistral):
            net = Transformer.from_file(path)
            diff = float((net(tokens) - theirs).abs().max())
            assert diff < 1e-4, f"{path.name}: max |ours - transformers| = {diff:.3g}"


@pytest.mark.falsifies("FALSIFY-ARCH-002")
@pytest.mark.parametrize(
    ("arch", "tied", "mistral"),
    [
        ("qwen2", False, False),
        ("qwen2", True, False),
        ("llama", False, False),
        ("llama", True, True),
    ],
)
def test_one_loader_serves_every_family_and_format(tiny_factory, tmp_path, arch, tied, mistral):
    check_every_format(tiny_factory(arch, tied=tied), tmp_path, mistral)
