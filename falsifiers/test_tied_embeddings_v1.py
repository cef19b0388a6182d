"""Falsifiers of tied-embeddings-v1: the output head is the embedding exactly when tied."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from aprlib.errors import ConversionError
from aprlib.formats.conversion import convert
from aprlib.formats.io import EMBED, LM_HEAD, open_model


def outputs(src: Path, work: Path) -> list[Path]:
    (work / "st").mkdir()
    paths = [work / "m.apr", work / "m.gguf", work / "st" / "model.safetensors"]
    for path in paths:
        convert(src, path)
    return paths


def check_tied(tiny, work: Path) -> None:
    embed = tiny.state()[EMBED]
    for path in outputs(tiny.safetensors, work):
        with open_model(path) as model:
            assert LM_HEAD not in model.tensors, f"{path.name} carries a duplicate lm_head"
            assert model.tied, f"{path.name} lost tie_word_embeddings"
            head = model.get(LM_HEAD)
            assert head.tied_to == EMBED
            assert np.array_equal(head.to_float32(), embed)


def check_untied(tiny, work: Path) -> None:
    state = tiny.state()
    assert not np.array_equal(state[LM_HEAD], state[EMBED])
    for path in outputs(tiny.safetensors, work):
        with open_model(path) as model:
            assert not model.tied and LM_HEAD in model.tensors, path.name
            head = model.get(LM_HEAD)
            assert head.tied_to is None
            assert np.array_equal(head.to_float32(), state[LM_HEAD]), path.name


@pytest.mark.falsifies("FALSIFY-TIED-001")
@pytest.mark.parametrize("arch", ["qwen2", "llama"])
def test_tied_model_has_no_head_and_loads_the_embedding(tiny_factory, tmp_path, arch):
    check_tied(tiny_factory(arch, tied=True), tmp_path)


@pytest.mark.falsifies("FALSIFY-TIED-002")
@pytest.mark.parametrize("arch", ["qwen2", "llama"])
def test_untied_model_keeps_its_own_head(tiny_factory, tmp_path, arch):
    check_untied(tiny_factory(arch, tied=False), tmp_path)


def with_config(tiny, work: Path, **changes) -> Path:
    folder = work / "edited"
    shutil.copytree(tiny.folder, folder)
    config = json.loads((folder / "config.json").read_text())
    config.update(changes)
    (folder / "config.json").write_text(json.dumps(config))
    return folder / "model.safetensors"


def check_disagreement_refused(untied, tied, work: Path) -> None:
    # says tied, but the head is a different matrix
    bad = with_config(untied, work / "a", tie_word_embeddings=True)
    # says untied, but there is no head at all
    missing = with_config(tied, work / "b", tie_word_embeddings=False)
    for src in (bad, missing):
        for suffix in (".apr", ".gguf"):
            dst = work / f"out{suffix}"
            with pytest.raises(ConversionError):
                convert(src, dst)
            assert not dst.exists()
            assert not list(work.glob(".out*")), "a temporary file was left behind"


@pytest.mark.falsifies("FALSIFY-TIED-003")
def test_config_disagreeing_with_weights_is_refused(tiny_factory, tmp_path):
    check_disagreement_refused(
        tiny_factory("qwen2", tied=False), tiny_factory("qwen2", tied=True), tmp_path
    )
