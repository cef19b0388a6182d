"""``--dtype q4_k`` on matrices whose rows are not whole 256-element blocks (issue 10,
case 5): llama.cpp's fallback, said in the output and in --json, never a silent F32."""

from __future__ import annotations

import json

from aprlib import DType, convert, open_model
from aprlib.cli.main import main as apr


def test_q4_k_falls_back_per_tensor_and_says_which(tiny_factory, tmp_path):
    tiny = tiny_factory("qwen2", hidden_size=256, intermediate_size=160, num_attention_heads=4)
    report = convert(tiny.safetensors, tmp_path / "m.gguf", dtype=DType.Q4_K)
    fell = {f["tensor"]: f for f in report.fallbacks}
    # rows of 256 (hidden) quantise; down_proj's rows of 160 cannot: Q8_0 (32-blocks)
    assert set(fell) == {f"model.layers.{i}.mlp.down_proj.weight" for i in range(2)}
    assert {f["written"] for f in fell.values()} == {"Q8_0"}
    assert "not whole 256-element blocks" in next(iter(fell.values()))["why"]
    assert any("as llama.cpp falls back" in n for n in report.notes), report.notes
    with open_model(tmp_path / "m.gguf") as m:
        assert m.tensors["model.layers.0.mlp.down_proj.weight"].dtype is DType.Q8_0
        assert m.tensors["model.layers.0.mlp.up_proj.weight"].dtype is DType.Q4_K
        assert m.tensors["model.norm.weight"].dtype is DType.F32  # vectors stay


def test_cli_reports_the_fallback_in_text_and_json(tiny_qwen2, tmp_path, capsys):
    assert (
        apr(["convert", str(tiny_qwen2.safetensors), str(tmp_path / "a.gguf"), "--dtype", "q4_k"])
        == 0
    )
    assert "written as Q8_0 instead, as llama.cpp falls back" in capsys.readouterr().out
    assert (
        apr(
            [
                "convert",
                str(tiny_qwen2.safetensors),
                str(tmp_path / "b.gguf"),
                "--dtype",
                "q4_k",
                "--json",
            ]
        )
        == 0
    )
    doc = json.loads(capsys.readouterr().out)
    assert len(doc["fallbacks"]) == 16  # every matrix of the tiny model (rows of 64 or 160)
    assert {f["written"] for f in doc["fallbacks"]} == {"Q8_0"}


def test_quantising_in_bands_of_rows_gives_the_same_bytes(monkeypatch):
    """encode() quantises a matrix a band of rows at a time (peak memory); blocks never
    cross rows, so the bytes equal a whole-matrix quantisation."""
    import numpy as np

    from aprlib import model_from_arrays
    from aprlib.formats import output
    from aprlib.formats.dtypes import from_float32

    values = np.random.default_rng(3).standard_normal((37, 512)).astype(np.float32)
    model = model_from_arrays({"w": (DType.F32, values.shape, values)}, None)
    monkeypatch.setattr(output, "ENCODE_CHUNK", 512 * 5)  # 5 rows per band, a ragged last one
    for dtype in (DType.Q8_0, DType.Q4_K):
        got = output.encode(model.tensors["w"], dtype)
        assert np.array_equal(got, from_float32(values, dtype).reshape(-1)), dtype
