"""The chat template rides with the tokenizer (issue 25, item 3): ``tokenizer_config.json``'s
``chat_template`` (a string, or a list of ``{name, template}``), else ``chat_template.jinja``
(with ``additional_chat_templates/``), else ``chat_template.json``, read as gguf-py's
SpecialVocab reads them into ``tokenizer.chat_template`` keys, and written back by ``to_hf``."""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path

import pytest

from aprlib.formats.tokenizer import (
    CHAT,
    CHAT_NAMES,
    TokenizerError,
    compare_tokenizers,
    read_hf_folder,
    to_hf,
)
from falsifiers.test_tokenizer_fidelity_v1 import FLAVOURS, spm_tokenizer, train_spm

TEMPLATE = "{% for m in messages %}<start_of_turn>{{ m['content'] }}<end_of_turn>{% endfor %}"
TOOLS = "{{ tools | tojson }}" + TEMPLATE


@cache
def _tokenizer_json() -> str:
    flavour = FLAVOURS["gemma"]
    return str(spm_tokenizer(train_spm(flavour), flavour).to_str())


def _folder(tmp_path: Path, config: dict, files: dict[str, str] | None = None) -> Path:
    folder = tmp_path / "hf"
    folder.mkdir()
    (folder / "tokenizer.json").write_text(_tokenizer_json())
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    for name, text in (files or {}).items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_text(text)
    return folder


def _templates(tok: dict) -> dict:
    return {k: v for k, v in tok.items() if k.startswith("tokenizer.chat_template")}


def test_a_string_template_is_tokenizer_chat_template(tmp_path):
    tok = read_hf_folder(_folder(tmp_path, {"chat_template": TEMPLATE}), None)
    assert tok is not None and _templates(tok) == {CHAT: TEMPLATE}


def test_named_templates_are_keys_of_their_own(tmp_path):
    listed = [
        {"name": "default", "template": TEMPLATE},
        {"name": "tool use", "template": TOOLS},  # llama.cpp keeps [A-Za-z0-9_] of a name
    ]
    tok = read_hf_folder(_folder(tmp_path, {"chat_template": listed}), None)
    assert tok is not None
    assert _templates(tok) == {
        CHAT: TEMPLATE,
        CHAT + ".tool_use": TOOLS,
        CHAT_NAMES: ["tool_use"],
    }
    _, config = to_hf(tok)
    assert config["chat_template"] == [
        {"name": "default", "template": TEMPLATE},
        {"name": "tool_use", "template": TOOLS},
    ]


def test_the_jinja_file_is_read_where_the_config_has_none(tmp_path):
    files = {"chat_template.jinja": TEMPLATE, "additional_chat_templates/tools.jinja": TOOLS}
    tok = read_hf_folder(_folder(tmp_path, {}, files), None)
    assert tok is not None
    assert _templates(tok) == {CHAT: TEMPLATE, CHAT + ".tools": TOOLS, CHAT_NAMES: ["tools"]}


def test_the_config_template_wins_over_the_jinja_file(tmp_path):
    """As gguf-py's SpecialVocab: ``tokenizer_config.get('chat_template', from_files)``."""
    files = {"chat_template.jinja": TOOLS}
    tok = read_hf_folder(_folder(tmp_path, {"chat_template": TEMPLATE}, files), None)
    assert tok is not None and tok[CHAT] == TEMPLATE


def test_chat_template_json_is_read_last(tmp_path):
    files = {"chat_template.json": json.dumps({"chat_template": TOOLS})}
    tok = read_hf_folder(_folder(tmp_path, {}, files), None)
    assert tok is not None and tok[CHAT] == TOOLS


@pytest.mark.parametrize("value", [42, {"default": TEMPLATE}, [{"name": "default"}], ["x"]])
def test_a_template_of_another_shape_is_an_error_naming_it(tmp_path, value):
    with pytest.raises(TokenizerError) as caught:
        read_hf_folder(_folder(tmp_path, {"chat_template": value}), None)
    assert "tokenizer_config.json" in str(caught.value), str(caught.value)
    assert "chat_template" in str(caught.value), str(caught.value)


def test_to_hf_writes_the_template_back_and_it_reads_the_same(tmp_path):
    tok = read_hf_folder(_folder(tmp_path, {"chat_template": TEMPLATE}), None)
    assert tok is not None
    body, config = to_hf(tok)
    assert config["chat_template"] == TEMPLATE
    back = tmp_path / "back"
    back.mkdir()
    (back / "tokenizer.json").write_text(body)
    (back / "tokenizer_config.json").write_text(json.dumps(config))
    again = read_hf_folder(back, len(tok["tokenizer.ggml.tokens"]))
    assert again == tok, compare_tokenizers(tok, again)


def test_compare_names_a_dropped_or_changed_template(tmp_path):
    tok = read_hf_folder(_folder(tmp_path, {"chat_template": TEMPLATE}), None)
    assert tok is not None
    dropped = {k: v for k, v in tok.items() if k != CHAT}
    assert compare_tokenizers(tok, dropped)[0] == f"{CHAT}: present vs missing"
    changed = {**tok, CHAT: TEMPLATE.replace("content", "text")}
    line = compare_tokenizers(tok, changed)[0]
    assert line.startswith(f"{CHAT}: differs at character {TEMPLATE.index('content')}:"), line


def test_hf_gguf_hf_keeps_a_template_transformers_applies(tiny_factory, tmp_path):
    """End to end: an HF folder → GGUF → HF folder, and transformers renders the same chat
    with the folder written back as with the source (the ids match too)."""
    from transformers import AutoTokenizer

    from aprlib import convert
    from falsifiers.test_tokenizer_fidelity_v1 import SPM_VOCAB, hf_folder_with_spm

    flavour = FLAVOURS["gemma"]
    tiny = tiny_factory(flavour.arch, vocab_size=SPM_VOCAB)
    folder, _ = hf_folder_with_spm(tiny, flavour, tmp_path)
    convert(folder, tmp_path / "m.gguf")
    convert(tmp_path / "m.gguf", str(tmp_path / "back") + "/")
    chat = [{"role": "user", "content": "What's 2+2?"}, {"role": "model", "content": "4"}]
    source = AutoTokenizer.from_pretrained(folder)
    back = AutoTokenizer.from_pretrained(tmp_path / "back")
    text = source.apply_chat_template(chat, tokenize=False)
    assert back.apply_chat_template(chat, tokenize=False) == text
    assert text.startswith("<bos><start_of_turn>user\n")
    assert (
        back(text, add_special_tokens=False)["input_ids"]
        == source(text, add_special_tokens=False)["input_ids"]
    )
