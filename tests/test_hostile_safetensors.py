"""Hostile safetensors files and sharded folders (issue 8: cases 3, 4, 6, 7)."""

from __future__ import annotations

import os

import pytest

from falsifiers.hostile_files import (
    apr_inline,
    assert_one_line_error,
    one_tensor_header,
    run_apr,
    safetensors_bytes,
    sharded_folder,
)

SHARD = safetensors_bytes(one_tensor_header(), bytes(16))


@pytest.mark.parametrize(
    ("header", "field"),
    [
        (one_tensor_header(dtype=["F32"]), "dtype"),
        ({**one_tensor_header(), "__metadata__": 5}, "__metadata__"),
        (one_tensor_header(shape=[0, 2**70], data_offsets=[0, 0]), "shape"),
        (one_tensor_header(shape=[1] * 100_002, data_offsets=[0, 4]), "shape"),
        (one_tensor_header(shape=[0, 2**41], data_offsets=[0, 0]), "shape"),
        (one_tensor_header(shape=[True, 4], data_offsets=[0, 16]), "shape"),
    ],
    ids=["dtype list", "metadata 5", "dim 2**70", "100002 dims", "dim 2**41", "bool dim"],
)
def test_bad_header_entries_are_typed_errors_on_inspect_and_convert(
    tmp_path, capsys, header, field
):
    """Seen: tracebacks (TypeError, struct.error on convert); a [0, 2**41] tensor converted
    to an APR that our own reader then refused."""
    path = tmp_path / "bad.safetensors"
    path.write_bytes(safetensors_bytes(header, bytes(16)))
    for args in (["inspect", str(path)], ["convert", str(path), str(tmp_path / "o.apr")]):
        rc, err = apr_inline(capsys, *args)
        assert rc == 1 and str(path) in err and f"field {field}" in err, err
    assert not (tmp_path / "o.apr").exists()


def test_a_duplicate_header_key_is_refused_not_last_one_wins(tmp_path, capsys):
    """Seen: a duplicate key in a safetensors header: the last one silently won."""
    entry = '{"dtype": "F32", "shape": [2, 2], "data_offsets": [0, 16]}'
    header = ('{"w": ' + entry + ', "w": ' + entry.replace("[2, 2]", "[4, 1]") + "}").encode()
    path = tmp_path / "dup.safetensors"
    path.write_bytes(safetensors_bytes(header, bytes(16)))
    rc, err = apr_inline(capsys, "inspect", str(path))
    assert rc == 1 and "'w' appears twice" in err, err


@pytest.mark.parametrize(
    ("weight_map", "needle"),
    [
        (["w"], "weight_map"),
        ({"w": 3}, "weight_map"),
        ({"w": None}, "weight_map"),
        ({"w": {"file": "x"}}, "weight_map"),
        ({"w": "missing.safetensors"}, "'missing.safetensors' does not exist"),
        ({"w": "."}, "'.' lies outside the model folder"),
        ({"w": ""}, "lies outside the model folder"),
    ],
    ids=["list", "int", "null", "dict", "missing shard", "dot", "empty"],
)
def test_a_bad_index_is_a_typed_error(tmp_path, capsys, weight_map, needle):
    """Seen: tracebacks for each of these index shapes."""
    folder = sharded_folder(tmp_path / "m", weight_map, {"a.safetensors": SHARD})
    rc, err = apr_inline(capsys, "inspect", str(folder))
    assert rc == 1 and "model.safetensors.index.json" in err and needle in err, err


def test_an_index_of_invalid_utf8_names_the_file_and_exits_1(tmp_path, capsys):
    """Seen: exit 2 without the file's name."""
    folder = sharded_folder(tmp_path / "m", b'{"weight_map": {"w": "\xff.safetensors"}}')
    rc, err = apr_inline(capsys, "inspect", str(folder))
    assert rc == 1 and "model.safetensors.index.json" in err and "UTF-8" in err, err


@pytest.mark.parametrize("target", ["../../../etc/passwd", "/etc/passwd", "symlink"])
def test_shards_outside_the_folder_are_refused_by_name(tmp_path, capsys, target):
    """Seen: `../../../etc/passwd`, `/etc/passwd` and symlinked shards were opened, and the
    error leaked the first 8 bytes of /etc/passwd as a 'header length'."""
    outside = tmp_path / "secret.safetensors"
    outside.write_bytes(SHARD)
    folder = tmp_path / "m"
    if target == "symlink":
        folder.mkdir()
        (folder / "link.safetensors").symlink_to(outside)
        target = "link.safetensors"
    sharded_folder(folder, {"w": target})
    opened = []
    real_open = os.open
    os_open = lambda path, *a, **k: opened.append(str(path)) or real_open(path, *a, **k)  # noqa: E731
    try:
        os.open = os_open
        rc, err = apr_inline(capsys, "inspect", str(folder))
    finally:
        os.open = real_open
    assert rc == 1 and repr(target) in err and "outside the model folder" in err, err
    assert "header length" not in err
    assert not any("passwd" in p or "secret" in p for p in opened), opened


def test_the_glob_of_a_folder_without_index_refuses_a_symlink_out(tmp_path, capsys):
    outside = tmp_path / "secret.safetensors"
    outside.write_bytes(SHARD)
    folder = tmp_path / "m"
    folder.mkdir()
    (folder / "model.safetensors").symlink_to(outside)
    rc, err = apr_inline(capsys, "inspect", str(folder))
    assert rc == 1 and "outside the model folder" in err, err


def test_shards_in_a_subfolder_of_the_model_folder_are_fine(tmp_path, capsys):
    folder = sharded_folder(tmp_path / "m", {"w": "sub/a.safetensors"})
    (folder / "sub").mkdir()
    (folder / "sub" / "a.safetensors").write_bytes(SHARD)
    rc, err = apr_inline(capsys, "inspect", str(folder))
    assert rc == 0, err


def test_a_fifo_as_a_shard_does_not_block(tmp_path):
    """Seen: a FIFO as a shard blocked forever."""
    folder = sharded_folder(tmp_path / "m", {"w": "a.safetensors"})
    os.mkfifo(folder / "a.safetensors")
    run = run_apr("inspect", str(folder), timeout=20)
    assert_one_line_error(run, "a.safetensors", "not a regular file")


def test_a_fifo_as_the_model_file_does_not_block(tmp_path):
    path = tmp_path / "pipe.safetensors"
    os.mkfifo(path)
    run = run_apr("inspect", str(path), timeout=20)
    assert run.returncode == 1 and not run.timed_out and "Traceback" not in run.stderr
