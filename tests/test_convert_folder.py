"""Folder destinations of ``apr convert`` (issue 10, case 5): an HF folder inside the
destination, nothing outside it, a clear error for a missing parent."""

from __future__ import annotations

import json
import os

from tokenizers import Tokenizer

from aprlib import convert, diff_models, open_model
from aprlib.cli.main import main as apr
from falsifiers.test_tokenizer_fidelity_v1 import CORPUS, VOCAB, hf_folder_with_tokenizer


def test_an_existing_folder_gets_an_hf_folder_and_nothing_lands_outside(
    tiny_qwen2, tmp_path, monkeypatch, capsys
):
    convert(tiny_qwen2.safetensors, tmp_path / "m.apr")
    (tmp_path / "out").mkdir()
    (tmp_path / "cwd").mkdir()
    monkeypatch.chdir(tmp_path / "cwd")
    assert apr(["convert", str(tmp_path / "m.apr"), str(tmp_path / "out")]) == 0
    assert sorted(os.listdir(tmp_path / "out")) == ["config.json", "model.safetensors"]
    assert os.listdir(tmp_path / "cwd") == []
    with open_model(tmp_path / "out") as a, open_model(tmp_path / "m.apr") as b:
        assert diff_models(a, b).clean


def test_a_new_folder_named_with_a_slash_is_created(tiny_qwen2, tmp_path):
    assert apr(["convert", str(tiny_qwen2.safetensors), f"{tmp_path / 'new'}/"]) == 0
    assert (tmp_path / "new" / "model.safetensors").is_file()


def test_a_missing_parent_is_one_line_and_no_file(tiny_qwen2, tmp_path, capsys):
    for dst in (tmp_path / "missing" / "model.safetensors", f"{tmp_path / 'missing' / 'sub'}/"):
        assert apr(["convert", str(tiny_qwen2.safetensors), str(dst)]) == 1
        err = capsys.readouterr().err.strip()
        assert err.count("\n") == 0 and "does not exist" in err, err
    assert not (tmp_path / "missing").exists()


def test_the_folder_carries_the_tokenizer_back_to_hf(tiny_factory, tmp_path):
    tiny = tiny_factory("qwen2", vocab_size=VOCAB)
    folder, tok = hf_folder_with_tokenizer(tiny, "qwen2", tmp_path)
    convert(folder, tmp_path / "m.gguf")
    convert(tmp_path / "m.gguf", f"{tmp_path / 'back'}/")
    assert sorted(os.listdir(tmp_path / "back")) == [
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
    ]
    back = Tokenizer.from_file(str(tmp_path / "back" / "tokenizer.json"))
    for text in CORPUS:
        assert (
            back.encode(text, add_special_tokens=False).ids
            == tok.encode(text, add_special_tokens=False).ids
        ), text
    config = json.loads((tmp_path / "back" / "tokenizer_config.json").read_text())
    assert config["eos_token"] == "<|endoftext|>"
    with open_model(folder) as a, open_model(tmp_path / "back") as b:
        report = diff_models(a, b)
        assert report.clean and not report.tokenizer, report.diagnosis["line"]
