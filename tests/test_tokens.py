"""Token streams: flat uint16/uint32 binaries and .npy, refused by name when unusable."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from aprlib.train.tokens import (
    TokenDataError,
    check_ids,
    check_tokenizer,
    load_tokens,
    tokenizer_json_size,
    tokenizer_size,
)


@pytest.mark.parametrize("dtype", ["uint16", "uint32"])
def test_flat_binary_round_trips(tmp_path, dtype):
    ids = np.random.default_rng(0).integers(0, 60_000, size=1001).astype(dtype)
    path = tmp_path / "train.bin"
    ids.tofile(path)
    assert np.array_equal(load_tokens(path, dtype), ids)


@pytest.mark.parametrize("dtype", [np.uint16, np.uint32, np.int64])
def test_npy_is_told_by_its_magic_not_its_name(tmp_path, dtype):
    ids = np.arange(500, dtype=dtype)
    path = tmp_path / "val.bin"  # a .npy under another name
    with open(path, "wb") as fh:
        np.save(fh, ids)
    assert np.array_equal(load_tokens(path), ids)


@pytest.mark.parametrize(
    ("content", "words"),
    [
        (b"\x01\x00\x02", "not a whole number of uint16"),
        (b"\x01\x00", "too few"),
        (b"", "too few"),
    ],
)
def test_bad_flat_binaries(tmp_path, content, words):
    path = tmp_path / "t.bin"
    path.write_bytes(content)
    with pytest.raises(TokenDataError, match=words) as exc:
        load_tokens(path)
    assert str(path) in str(exc.value)


@pytest.mark.parametrize(
    ("array", "words"),
    [
        (np.zeros((4, 4), np.uint16), "1-D integer"),
        (np.zeros(10, np.float32), "1-D integer"),
        (np.array([3, -1, 2], np.int64), "negative token id -1"),
    ],
)
def test_bad_npy(tmp_path, array, words):
    path = tmp_path / "t.npy"
    np.save(path, array)
    with pytest.raises(TokenDataError, match=words):
        load_tokens(path)


def test_truncated_npy(tmp_path):
    path = tmp_path / "t.npy"
    np.save(path, np.arange(1000, dtype=np.uint32))
    path.write_bytes(path.read_bytes()[:1500])
    with pytest.raises(TokenDataError, match="truncated or corrupt"):
        load_tokens(path)


def test_missing_file_and_unknown_dtype(tmp_path):
    with pytest.raises(TokenDataError, match="no such token file"):
        load_tokens(tmp_path / "nope.bin")
    (tmp_path / "t.bin").write_bytes(b"\0" * 8)
    with pytest.raises(TokenDataError, match="unknown token dtype"):
        load_tokens(tmp_path / "t.bin", "int8")


def test_an_id_outside_the_vocab_is_named_with_its_position(monkeypatch):
    ids = np.array([1, 2, 3, 151_935, 151_936, 7, 200_000], dtype=np.uint32)
    check_ids(ids[:4], 151_936, "t.bin")
    for chunk in (1 << 24, 3):  # the first offender, also when it sits in a later chunk
        monkeypatch.setattr("aprlib.train.tokens.CHUNK", chunk)
        with pytest.raises(TokenDataError, match=r"token id 151936 at position 4 .* 151936"):
            check_ids(ids, 151_936, "t.bin")


def test_tokenizer_sizes(tmp_path):
    assert tokenizer_size({"tokenizer.ggml.tokens": ["a"] * 7}) == 7
    assert tokenizer_size(None) is None
    vocab = {f"w{i}": i for i in range(10)}
    doc = {"version": "1.0", "model": {"type": "WordLevel", "vocab": vocab, "unk_token": "w0"}}
    doc["added_tokens"] = [
        {"id": 10, "content": "<x>", "special": True, "single_word": False, "lstrip": False,
         "rstrip": False, "normalized": False}
    ]  # fmt: skip
    (tmp_path / "tokenizer.json").write_text(json.dumps(doc))
    assert tokenizer_size(None, tmp_path) == 11
    (tmp_path / "broken.json").write_text("{")
    with pytest.raises(TokenDataError, match="unreadable tokenizer"):
        tokenizer_json_size(tmp_path / "broken.json")


def test_a_tokenizer_of_another_model_is_refused():
    check_tokenizer(151_665, 151_936, "qwen")  # Qwen2.5 pads its embedding: fine
    check_tokenizer(50_257, 50_304, "nanogpt")  # so does nanoGPT
    check_tokenizer(None, 10, "none")
    with pytest.raises(TokenDataError, match="tokenizer has 50257 entries but the embedding"):
        check_tokenizer(50_257, 32_000, "m.gguf")  # larger: ids without a row
    with pytest.raises(TokenDataError, match=r"tokenizer has 50257 entries .* 151936 rows"):
        check_tokenizer(50_257, 151_936, "qwen")  # GPT-2 ids fed to Qwen2


@settings(max_examples=60, deadline=None)
@given(content=st.binary(max_size=300), npy_head=st.booleans())
def test_any_bytes_load_or_fail_by_name(tmp_path_factory, content, npy_head):
    """Hostile token files: a TokenDataError naming the file, never another exception."""
    path = tmp_path_factory.mktemp("fuzz") / "t.bin"
    path.write_bytes((b"\x93NUMPY" if npy_head else b"") + content)
    try:
        ids = load_tokens(path)
    except TokenDataError as exc:
        assert str(path) in str(exc)
    else:
        assert ids.ndim == 1 and ids.size >= 2
