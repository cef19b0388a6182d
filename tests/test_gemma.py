"""Gemma 2 and Gemma 3 (issue 25): (1 + w) norms stored as w + 1 in a GGUF, embeddings x
sqrt(hidden), GELU-tanh, four norms a layer, windows by pattern, the query scale, soft-caps,
and Gemma 3's second RoPE base.

Parity with transformers is FALSIFY-FWD-001..004; llama.cpp on our GGUF FALSIFY-LLAMACPP-001
(with its F16 GELU table shown to be the whole gap) and -003; llama.cpp's converter output
FALSIFY-GGUFREAL-001; gguf-py's names FALSIFY-LAYOUT-003. Here: the file convention both ways
and what happens when a tool gets it wrong, the transformers capture, the config round trip,
and the convert notes.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from aprlib import GgufFormatError, convert, diff_models, open_model
from aprlib.cli.main import main as apr
from falsifiers.test_gguf_real_files_v1 import rewrite_gguf
from tests.family_checks import check_capture_matches_reference, check_every_format_and_back

TOKENS = [3, 17, 42, 5, 88, 1, 60, 29, 11, 70, 2]
GEMMA3 = {"sliding_window": 4, "query_pre_attn_scalar": 16, "sliding_window_pattern": 2}
GEMMA2 = {"sliding_window": 4, "query_pre_attn_scalar": 16, "final_logit_softcapping": 5.0}


def gemma3(tiny_factory, **more):
    return tiny_factory("gemma3_text", **{**GEMMA3, **more})


def stored(path: Path, name: str) -> np.ndarray:
    from gguf import GGUFReader

    tensor = next(t for t in GGUFReader(path).tensors if t.name == name)
    return np.asarray(tensor.data, dtype=np.float32).copy()


def test_a_gguf_stores_w_plus_1_and_reads_back_w_bit_for_bit(tiny_factory, tmp_path):
    """llama.cpp multiplies by the stored weight: the GGUF holds w + 1; every other format
    and tool sees transformers' w, exactly, through the residual the writer keeps."""
    tiny = gemma3(tiny_factory)
    convert(tiny.folder, tmp_path / "m.gguf")
    with open_model(tiny.folder) as src, open_model(tmp_path / "m.gguf") as ours:
        w = src.tensors["model.layers.0.input_layernorm.weight"].to_float32()
        back = ours.tensors["model.layers.0.input_layernorm.weight"].to_float32()
        assert np.array_equal(back, w)  # float32 w + 1 rounds: the residual restores it
        assert diff_models(src, ours).clean
    on_disk = stored(tmp_path / "m.gguf", "blk.0.attn_norm.weight")
    np.testing.assert_allclose(on_disk, w + 1, rtol=0, atol=2.5e-7)
    assert not np.array_equal(on_disk - 1, w)  # float32 weights: + 1 alone loses bits


def test_a_bf16_gemma_needs_no_residual(tiny_factory, tmp_path):
    from gguf import GGUFReader

    tiny = gemma3(tiny_factory, dtype="bfloat16")
    convert(tiny.folder, tmp_path / "m.gguf")
    keys = [k for k in GGUFReader(tmp_path / "m.gguf").fields if "norm_residual" in k]
    assert keys == []
    with open_model(tiny.folder) as src, open_model(tmp_path / "m.gguf") as ours:
        assert diff_models(src, ours).clean


def test_the_one_added_twice_is_named_shifted_with_the_convention(tiny_factory, tmp_path):
    """A GGUF whose converter added Gemma's 1 to norms that already held it: every norm is
    SHIFTED by +1 and the diagnosis names the (1 + w) convention; bisect names the first."""
    tiny = gemma3(tiny_factory, dtype="bfloat16")
    convert(tiny.folder, tmp_path / "m.gguf")
    twice = _norms_plus_one(tmp_path / "m.gguf", tmp_path / "twice.gguf")
    with open_model(tiny.folder) as src, open_model(twice) as bad:
        report = diff_models(src, bad)
    shifted = {p.name for p in report.pairs if p.tag == "SHIFTED"}
    assert shifted == {n for n in src_names(tiny) if n.endswith("norm.weight")}
    assert all(
        "B = A +1 (the 1 + w norm convention)" in p.detail
        for p in report.pairs
        if p.tag == "SHIFTED"
    )
    tokens = ",".join(map(str, TOKENS))
    assert apr(["bisect", str(tiny.folder), str(twice), "--tokens", tokens]) == 1


def src_names(tiny) -> list[str]:
    return [n for n in tiny.model.state_dict() if n != "lm_head.weight" or not tiny.tied]


def _norms_plus_one(src: Path, dst: Path) -> Path:
    """``src`` with 1 added to every norm weight (as a converter unaware that llama.cpp's
    convention already holds it would), everything else byte for byte."""

    def plus_one(name: str, data, kind):
        if name.endswith("norm.weight"):
            return (np.asarray(data) + 1).astype(np.float32), kind
        return data, kind

    return rewrite_gguf(src, dst, tensor=plus_one)


def test_a_residual_that_does_not_fit_its_tensor_is_refused(tiny_factory, tmp_path):
    tiny = gemma3(tiny_factory)
    convert(tiny.folder, tmp_path / "m.gguf")
    drop = {"aprlib.norm_residual.blk.0.attn_norm.weight"}
    lean = rewrite_gguf(tmp_path / "m.gguf", tmp_path / "lean.gguf", drop)
    with open_model(lean) as m:  # without it: w + 1 - 1, within float32 rounding of w
        got = m.tensors["model.layers.0.input_layernorm.weight"].to_float32()
    want = tiny.model.model.layers[0].input_layernorm.weight.detach().numpy()
    np.testing.assert_allclose(got, want, rtol=0, atol=2.5e-7)
    from gguf import GGUFReader

    key = "aprlib.norm_residual.blk.0.attn_norm.weight"
    field = GGUFReader(tmp_path / "m.gguf").fields[key]
    short = (field.contents()[:-1], field.types[0], field.types[-1])
    rewrite_gguf(tmp_path / "m.gguf", tmp_path / "bad.gguf", add={key: short})
    with (
        pytest.raises(GgufFormatError, match="float32 values expected") as info,
        open_model(tmp_path / "bad.gguf") as m,
    ):
        m.tensors["model.layers.0.input_layernorm.weight"].to_float32()
    assert info.value.field == "aprlib.norm_residual.blk.0.attn_norm.weight"


@pytest.mark.parametrize("arch", ["gemma3_text", "gemma2"])
def test_the_config_survives_every_format_and_transformers_loads_it_back(
    tiny_factory, tmp_path, arch
):
    tiny = tiny_factory(arch, tied=arch == "gemma2", **(GEMMA3 if arch != "gemma2" else GEMMA2))
    check_every_format_and_back(tiny, tmp_path, TOKENS)


@pytest.mark.parametrize("arch", ["gemma3_text", "gemma2"])
def test_transformers_modules_give_every_point_of_the_reference(tiny_factory, arch):
    tiny = tiny_factory(arch, tied=True, **(GEMMA3 if arch != "gemma2" else GEMMA2))
    check_capture_matches_reference(tiny.model, TOKENS)


def test_convert_says_what_llama_cpp_computes_otherwise(tiny_factory, tmp_path, capsys):
    capsys.readouterr()
    tiny = gemma3(tiny_factory, query_pre_attn_scalar=24)
    assert apr(["convert", str(tiny.folder), str(tmp_path / "a.gguf"), "--json"]) == 0
    notes = json.loads(capsys.readouterr().out)["notes"]
    assert any(n.startswith("query_pre_attn_scalar 24: llama.cpp's gemma3 graph") for n in notes)
    assert not any("sliding_window" in n or "hidden_act" in n for n in notes), notes
    untied = tiny_factory("gemma2", tied=False, **GEMMA2)
    assert apr(["convert", str(untied.folder), str(tmp_path / "b.gguf"), "--json"]) == 0
    notes = json.loads(capsys.readouterr().out)["notes"]
    assert any(n.startswith("tie_word_embeddings false: llama.cpp's gemma2") for n in notes)
