"""The layout of aprlib: one module per format, one ne[] reversal, public names only."""

from __future__ import annotations

import ast
from pathlib import Path

import gguf
import numpy as np
import pytest

import aprlib
from aprlib.formats import layout
from aprlib.formats.dtypes import DType, from_float32

ROOT = Path(__file__).resolve().parents[1]


def test_the_documented_api_is_importable_from_the_root():
    from aprlib import (  # noqa: F401
        AprFormatError,
        ConversionError,
        GgufFormatError,
        Model,
        ModelFileError,
        SafetensorsFormatError,
        Tensor,
        convert,
        diff_models,
        model_from_arrays,
        open_model,
        write_model,
    )
    from aprlib.formats.io import Model as IoModel
    from aprlib.formats.io import Tensor as IoTensor
    from aprlib.formats.io import open_model as io_open_model

    assert callable(convert) and IoModel is Model and IoTensor is Tensor
    assert io_open_model is open_model
    from aprlib.formats.conversion import write_model as old_path  # older code keeps working

    assert old_path is aprlib.write_model


@pytest.mark.parametrize("folder", ["falsifiers", "tests", "bench"])
def test_no_falsifier_or_test_imports_a_private_aprlib_name(folder):
    offenders = []
    for path in sorted((ROOT / folder).glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("aprlib"):
                offenders += [
                    f"{path.name}: {node.module}.{a.name}"
                    for a in node.names
                    if a.name.startswith("_")
                ]
    assert not offenders


@pytest.mark.parametrize("dtype", [DType.F32, DType.F16, DType.Q8_0])
def test_the_written_gguf_ne_is_the_layout_reversal(tmp_path, dtype):
    """GGUFWriter reverses the shape itself: check what lands on disk against layout."""
    from aprlib import model_from_arrays, write_model
    from aprlib.config.modelconfig import ModelConfig

    rng = np.random.default_rng(0)
    shape = (3, 64)  # non-square, rows a whole Q8_0 block count
    cfg = ModelConfig("qwen2", 3, 64, 96, 1, 4, 2, 1e-6, 1e4, 32, True)
    raw = from_float32(rng.standard_normal(shape).astype(np.float32), dtype)
    model = model_from_arrays({"model.embed_tokens.weight": (dtype, shape, raw)}, cfg)
    write_model(model, tmp_path / "m.gguf")
    (t,) = gguf.GGUFReader(tmp_path / "m.gguf").tensors
    assert tuple(int(d) for d in t.shape) == layout.logical_shape_to_gguf(shape)
    assert layout.gguf_shape_to_logical(tuple(t.shape)) == shape


def test_one_module_per_format_each_with_reader_and_writer():
    from aprlib.formats import apr, gguf, safetensors

    assert apr.open_apr and apr.write_apr
    assert gguf.open_gguf and gguf.write_gguf
    assert safetensors.open_safetensors and safetensors.write_safetensors


@pytest.mark.parametrize("suffix", [".apr", ".gguf", ".safetensors"])
def test_mapped_opens_give_zero_copy_views_of_the_same_bytes(tmp_path, suffix):
    from aprlib import model_from_arrays, open_model, write_model
    from aprlib.config.modelconfig import ModelConfig

    rng = np.random.default_rng(4)
    cfg = ModelConfig("qwen2", 6, 64, 96, 1, 4, 2, 1e-6, 1e4, 32, True)
    raw = rng.standard_normal((6, 64)).astype(np.float32)
    model = model_from_arrays({"model.embed_tokens.weight": (DType.F32, (6, 64), raw)}, cfg)
    write_model(model, tmp_path / f"m{suffix}")
    with (
        open_model(tmp_path / f"m{suffix}") as owned,
        open_model(tmp_path / f"m{suffix}", mapped=True) as mapped,
    ):
        a = owned.tensors["model.embed_tokens.weight"].raw()
        b = mapped.tensors["model.embed_tokens.weight"].raw()
        assert a.tobytes() == b.tobytes() == raw.tobytes()
        assert a.flags.owndata and not b.flags.owndata  # b is a view of the map
        assert not owned._maps and len(mapped._maps) == 1
        mapped.drop_pages()
        assert mapped.tensors["model.embed_tokens.weight"].raw().tobytes() == raw.tobytes()
