"""The defect-injection benchmark's own machinery: registry, seam, verdicts, summary."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest

import bench.defects.catalogue  # noqa: F401 - registers the entries
from aprlib.compare.diff import diff_models
from aprlib.formats.conversion import convert
from aprlib.formats.io import open_model
from bench.defects import CATALOGUE, DESIGN_ROWS, Defect, register
from bench.defects import injections as inj
from bench.defects.runner import Result, _known_falsifiers, run_one, summarise


def test_catalogue_covers_every_design_row_with_at_least_20_defects():
    assert len(CATALOGUE) >= 20
    rows = {d.design_row for d in CATALOGUE.values()}
    assert rows == set(DESIGN_ROWS)
    known = _known_falsifiers()
    for d in CATALOGUE.values():
        runnable = not d.missing() and not d.pending
        if runnable:
            assert d.fmt is not None or d.falsifiers or d.falsifier_files_with, d.id
            assert all(f in known for f in d.falsifiers if f.startswith("FALSIFY-LAYOUT")), d.id
        if d.fmt is not None:
            assert d.expect, f"{d.id}: a diff stage needs its right diagnosis fixed up front"
    with pytest.raises(ValueError, match="twice"):
        register(next(iter(CATALOGUE.values())))


def test_the_seam_edits_what_the_converter_writes_and_nothing_else(tiny_qwen2, tmp_path):
    with pytest.MonkeyPatch.context() as mp:
        inj.install_seam(mp, inj.transpose("mlp.up_proj"), None)
        convert(tiny_qwen2.safetensors, tmp_path / "bad.apr")
    convert(tiny_qwen2.safetensors, tmp_path / "good.apr")
    with open_model(tmp_path / "bad.apr") as bad, open_model(tmp_path / "good.apr") as good:
        name = "model.layers.0.mlp.up_proj.weight"
        assert bad.get(name).shape == (64, 160) and good.get(name).shape == (160, 64)
        assert np.array_equal(bad.get(name).to_float32().T, good.get(name).to_float32())
        assert diff_models(good, bad).diagnosis["class"] == "TRANSPOSED"


@pytest.mark.parametrize("fmt", ["apr", "gguf", "safetensors"])
def test_the_identity_seam_is_lossless(tiny_qwen2, tmp_path, fmt):
    dst = tmp_path / {"apr": "m.apr", "gguf": "m.gguf", "safetensors": "m.safetensors"}[fmt]
    with pytest.MonkeyPatch.context() as mp:
        inj.install_seam(mp, lambda arrays, config, f: (arrays, config), None)
        convert(tiny_qwen2.safetensors, dst)
    with open_model(tiny_qwen2.safetensors) as a, open_model(dst) as b:
        assert diff_models(a, b).clean


def test_gguf_permutation_defects_are_their_inverse_of_llama_cpp_order():
    rng = np.random.default_rng(0)
    w = rng.standard_normal((32, 8)).astype(np.float32)
    assert np.array_equal(inj._unpermute(inj._permute(w, 4), 4), w)
    assert not np.array_equal(inj._permute(w, 4), w)


def _sources(tiny_qwen2) -> dict[str, Path]:
    return {"qwen2": tiny_qwen2.safetensors}


def test_run_one_kills_an_injected_defect_and_judges_the_diagnosis(tiny_qwen2, tmp_path):
    known = _known_falsifiers()
    defect = dataclasses.replace(CATALOGUE["qkv-bias-x10"], falsifiers=("FALSIFY-LAYOUT-003",))
    (tmp_path / "a").mkdir()
    result = run_one(defect, _sources(tiny_qwen2), known, tmp_path / "a")
    assert result.status == "killed" and result.diff_class == "SCALED"
    assert result.diagnosis_right and result.first_red_s is not None
    assert result.red == []  # LAYOUT-003 checks names only: it rightly stays green
    # the same entry expecting another class is judged wrong, not fitted to the tool
    wrong = dataclasses.replace(defect, expect=("TRANSPOSED",), falsifiers=())
    (tmp_path / "b").mkdir()
    assert run_one(wrong, _sources(tiny_qwen2), known, tmp_path / "b").diagnosis_right is False


def test_a_defect_nothing_catches_survives(tiny_qwen2, tmp_path):
    harmless = Defect(
        "no-op",
        "a defect that changes nothing",
        "dtype mislabel",
        transform=lambda arrays, config, fmt: (arrays, config),
        expect=("DTYPE_MISLABEL",),
    )
    result = run_one(harmless, _sources(tiny_qwen2), _known_falsifiers(), tmp_path)
    assert result.status == "survived" and result.diagnosis_right is False
    assert result.diff_class == "IDENTICAL"


def test_entries_for_absent_modules_are_not_yet_runnable(tmp_path):
    later = Defect("later", "later", "architecture hard-coded", requires=("aprlib.nowhere",))
    result = run_one(later, {}, {}, tmp_path)
    assert result.status == "not yet runnable" and "aprlib.nowhere" in (result.reason or "")


def test_summary_line_counts_runnable_entries_only():
    results = [
        Result("a", "a", "r", "killed", diagnosis_right=True),
        Result("b", "b", "r", "survived", diagnosis_right=False),
        Result("c", "c", "r", "not yet runnable"),
    ]
    clean = Result("clean", "clean", "-", "false alarm", red=["FALSIFY-X-001"])
    doc = summarise(results, clean, 12.3)
    assert doc["summary"] == "killed 1/2 · diagnosis right 1/2 · false alarms 1 · 12 s"
    assert doc["not_yet_runnable"] == 1


def _tokenizer_source(tiny_factory, work: Path) -> dict[str, Path]:
    from falsifiers import test_tokenizer_fidelity_v1 as tok

    tiny = tiny_factory("qwen2", vocab_size=tok.VOCAB)
    folder, _ = tok.hf_folder_with_tokenizer(tiny, "qwen2", work)
    return {"qwen2-tokenizer": folder / "model.safetensors"}


def test_merge_dropped_runs_and_apr_diff_names_the_merge(tiny_factory, tmp_path):
    entry = CATALOGUE["tokenizer-merge-dropped"]
    assert entry.pending is None and not entry.missing()
    sources = _tokenizer_source(tiny_factory, tmp_path / "src")
    with open_model(sources["qwen2-tokenizer"]) as source:
        first = source.tokenizer["tokenizer.ggml.merges"][0]
    (tmp_path / "a").mkdir()
    quick = dataclasses.replace(entry, falsifiers=())  # the diff stage alone
    result = run_one(quick, sources, _known_falsifiers(), tmp_path / "a")
    assert result.status == "killed" and result.diff_class == "TOKENIZER_MISMATCH"
    assert result.diagnosis_right and f"merge 0: {first!r}" in (result.diff_line or "")
    # nothing lost, nothing seen: the edit seam itself raises no alarm
    (tmp_path / "b").mkdir()
    identity = dataclasses.replace(quick, patch=inj.tokenizer_edit(lambda t: t))
    assert run_one(identity, sources, {}, tmp_path / "b").diff_class == "IDENTICAL"
    # another merge dropped is caught, but the entry's right diagnosis names merge 0
    (tmp_path / "c").mkdir()

    def drop_fifth(tokenizer):
        merges = tokenizer["tokenizer.ggml.merges"]
        return {**tokenizer, "tokenizer.ggml.merges": merges[:5] + merges[6:]}

    other = dataclasses.replace(quick, patch=inj.tokenizer_edit(drop_fifth))
    result = run_one(other, sources, {}, tmp_path / "c")
    assert result.status == "killed" and result.diagnosis_right is False


def test_merge_dropped_turns_the_round_trip_falsifier_red(tiny_factory, tmp_path):
    from falsifiers import test_tokenizer_fidelity_v1 as tok

    tiny = tiny_factory("qwen2", vocab_size=tok.VOCAB)
    tok.check_round_trip(tiny, tmp_path / "clean")
    with pytest.MonkeyPatch.context() as mp:
        CATALOGUE["tokenizer-merge-dropped"].patch(mp)
        with pytest.raises(AssertionError):
            tok.check_round_trip(tiny, tmp_path / "defective")
