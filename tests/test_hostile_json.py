"""JSON inside model files under caps (issue 8, cases 2 and 3): APR metadata, safetensors
headers, ``model.safetensors.index.json`` and ``config.json``."""

from __future__ import annotations

import json

import pytest

from falsifiers.hostile_files import (
    apr_inline,
    assert_one_line_error,
    one_f32_apr,
    one_tensor_header,
    run_apr,
    safetensors_bytes,
)

DEEP = b"[" * 200_000 + b"]" * 200_000
WIDE = b"[" + b"[]," * 2_100_000 + b"[]]"  # 6 MB, past the item cap


def _apr_with_metadata(path, metadata: bytes):
    path.write_bytes(one_f32_apr(metadata))
    return path


def _safetensors_with_metadata_value(path, value: bytes):
    header = json.dumps(one_tensor_header()).encode()
    header = header[:-1] + b', "__metadata__": {"x": ' + value + b"}}"
    path.write_bytes(safetensors_bytes(header, bytes(16)))
    return path


@pytest.mark.parametrize("shape", ["deep", "wide"])
@pytest.mark.parametrize("where", ["apr metadata", "safetensors header"])
def test_json_in_a_model_file_is_capped(tmp_path, where, shape):
    """Seen: 43 MB of `[[],[],...]` metadata took 1.1 GB and exited 0; deep nesting ended
    in a RecursionError traceback."""
    value = DEEP if shape == "deep" else WIDE
    if where == "apr metadata":
        path = _apr_with_metadata(tmp_path / "m.apr", b'{"x": ' + value + b"}")
    else:
        path = _safetensors_with_metadata_value(tmp_path / "m.safetensors", value)
    run = run_apr("inspect", str(path), timeout=30)
    assert_one_line_error(run, str(path), "deeper" if shape == "deep" else "items")
    assert run.peak_rss_mb < 300


@pytest.mark.parametrize("shape", ["deep", "wide"])
@pytest.mark.parametrize("name", ["config.json", "model.safetensors.index.json"])
def test_json_beside_a_model_is_capped(tmp_path, capsys, name, shape):
    folder = tmp_path / "m"
    folder.mkdir()
    (folder / "model.safetensors").write_bytes(safetensors_bytes(one_tensor_header(), bytes(16)))
    value = DEEP if shape == "deep" else WIDE
    (folder / name).write_bytes(b'{"x": ' + value + b"}")
    rc, err = apr_inline(capsys, "inspect", str(folder))
    assert rc == 1 and name in err and ("deeper" if shape == "deep" else "items") in err, err


def test_a_97_mb_safetensors_header_is_refused_without_parsing(tmp_path):
    """Seen: a 97 MB header took 2.5 GB."""
    header = b'{"__metadata__": {"x": "' + b"a" * 10 + b'"}, "pad": [' + b"0," * (48 << 20)
    header += b"0]}"
    path = tmp_path / "big.safetensors"
    path.write_bytes(safetensors_bytes(header))
    run = run_apr("inspect", str(path), timeout=30)
    assert_one_line_error(run, str(path), "items")
    assert run.peak_rss_mb < 300 + path.stat().st_size / 2**20


BAD_CONFIGS = {
    "a list": ([1, 2], "config.json is a list"),
    "vocab_size [1]": ({"vocab_size": [1]}, "vocab_size is [1]"),
    "heads 0": ({"num_attention_heads": 0, "head_dim": None}, "num_attention_heads is 0"),
    "rope_parameters x": ({"rope_parameters": "x", "rope_theta": None}, "rope_parameters"),
    "vocab 10**10": ({"vocab_size": 10**10}, "vocab_size is 10000000000"),
}


def _config(**overrides):
    base = {
        "architectures": ["Qwen2ForCausalLM"],
        "model_type": "qwen2",
        "vocab_size": 4,
        "hidden_size": 8,
        "intermediate_size": 16,
        "num_hidden_layers": 1,
        "num_attention_heads": 2,
        "num_key_value_heads": 1,
        "rope_theta": 10000.0,
    }
    return {k: v for k, v in {**base, **overrides}.items() if v is not None}


@pytest.mark.parametrize("case", list(BAD_CONFIGS))
def test_config_values_are_checked_before_use(tmp_path, capsys, case):
    """Seen: a list config, `vocab_size: [1]`, `num_attention_heads: 0` without head_dim
    (ZeroDivisionError) and `rope_parameters: "x"` ended in tracebacks; `vocab_size:
    10**10` made convert build placeholder tokens until memory ran out."""
    raw, needle = BAD_CONFIGS[case]
    folder = tmp_path / "m"
    folder.mkdir()
    shape = [4, 8]
    header = {
        "model.embed_tokens.weight": {"dtype": "F32", "shape": shape, "data_offsets": [0, 128]}
    }
    (folder / "model.safetensors").write_bytes(safetensors_bytes(header, bytes(128)))
    text = json.dumps(raw if isinstance(raw, list) else _config(**raw))
    (folder / "config.json").write_text(text)
    for args in (["inspect", str(folder)], ["convert", str(folder), str(tmp_path / "o.gguf")]):
        rc, err = apr_inline(capsys, *args)
        assert rc == 1 and "config.json" in err and needle in err, err
    assert not (tmp_path / "o.gguf").exists()


@pytest.mark.parametrize(
    ("config", "needle"),
    [("5", "config"), ('"x"', "config"), ('{"vocab_size": "many"}', "vocab_size")],
)
def test_apr_metadata_config_of_the_wrong_type_is_a_typed_error(tmp_path, capsys, config, needle):
    """Seen: an APR metadata `"config"` of the wrong type ended in a traceback."""
    path = _apr_with_metadata(tmp_path / "c.apr", b'{"config": ' + config.encode() + b"}")
    rc, err = apr_inline(capsys, "inspect", str(path))
    assert rc == 1 and str(path) in err and needle in err, err


def test_a_vocab_the_embedding_does_not_have_gets_no_placeholder_tokens(tmp_path, capsys):
    """A config within the caps but larger than the embedding: no 4M placeholder tokens."""
    folder = tmp_path / "m"
    folder.mkdir()
    header = {
        "model.embed_tokens.weight": {"dtype": "F32", "shape": [4, 8], "data_offsets": [0, 128]}
    }
    (folder / "model.safetensors").write_bytes(safetensors_bytes(header, bytes(128)))
    (folder / "config.json").write_text(
        json.dumps(_config(vocab_size=1 << 22, tie_word_embeddings=True))
    )
    rc, err = apr_inline(capsys, "convert", str(folder), str(tmp_path / "o.gguf"))
    assert rc == 1 and "vocab_size 4,194,304" in err and "4 rows" in err, err
