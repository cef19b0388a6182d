"""Hostile GGUF files (issue 8: cases 1, 3, 7): bounded parsing and typed errors."""

from __future__ import annotations

import pytest

from falsifiers.hostile_files import (
    ARRAY,
    STRING,
    U8,
    U32,
    apr_inline,
    assert_one_line_error,
    gguf_bytes,
    gguf_kv,
    gguf_string,
    qwen2_kv,
    run_apr,
    tiny_gguf,
)


def test_a_49_byte_gguf_with_a_huge_array_count_is_refused_at_once(tmp_path):
    """Seen: an array of uint32 with count 2**63-1 hung `apr inspect` at 5.5 GB RSS."""
    kv = gguf_string("a") + (ARRAY).to_bytes(4, "little") + (U32).to_bytes(4, "little")
    kv += ((1 << 63) - 1).to_bytes(8, "little")
    path = tmp_path / "bomb.gguf"
    path.write_bytes(gguf_bytes([kv], alignment=1))
    assert path.stat().st_size == 49
    run = run_apr("inspect", str(path), timeout=20, memory_mb=1024)
    assert_one_line_error(run, str(path), "array")
    assert run.seconds < 10


@pytest.mark.parametrize(
    "case",
    ["3 MB uint8 array", "1M token strings"],
)
def test_arrays_that_fit_the_file_parse_in_bounded_time_and_memory(tmp_path, case):
    """Seen: a 3 MB uint8 array took 2.1 GB and 62 s; 1M strings in 9 MB, 1.3 GB, 38 s."""
    if case.startswith("3 MB"):
        big = gguf_kv("general.blob", ARRAY, (U8, [7] * 3_000_000))
    else:
        big = gguf_kv("tokenizer.ggml.tokens", ARRAY, (STRING, ["t"] * 1_000_000))
    path = tmp_path / "big.gguf"
    path.write_bytes(gguf_bytes([*qwen2_kv(), big]))
    size_mb = path.stat().st_size / 2**20
    run = run_apr("inspect", "--json", str(path), timeout=30)
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.seconds < 10, run.seconds
    assert run.peak_rss_mb < 300 + size_mb, run.peak_rss_mb


@pytest.mark.parametrize(
    ("heads", "needle"),
    [(0, "num_attention_heads is 0"), ("two", "num_attention_heads is 'two'")],
)
def test_a_bad_head_count_is_a_typed_error(tmp_path, capsys, heads, needle):
    """Seen: head_count 0 or a string ended in a traceback."""
    path = tmp_path / "heads.gguf"
    path.write_bytes(tiny_gguf(heads=heads))
    rc, err = apr_inline(capsys, "inspect", str(path))
    assert rc == 1 and str(path) in err and needle in err, err


def test_a_llama_head_count_that_does_not_divide_the_q_rows_fails_at_open(tmp_path, capsys):
    """Seen: inspect passed, then convert/diff died of ZeroDivisionError."""
    path = tmp_path / "llama.gguf"
    path.write_bytes(tiny_gguf("llama", q_rows=6, heads=2, kv_heads=1))  # 6 rows, 2 heads
    for args in (["inspect", str(path)], ["convert", str(path), str(tmp_path / "o.apr")]):
        rc, err = apr_inline(capsys, *args)
        assert rc == 1 and "blk.0.attn_q.weight" in err and "heads" in err, err
    rc, err = apr_inline(capsys, "diff", str(path), str(path))
    assert rc == 2 and "blk.0.attn_q.weight" in err, err


def _two_tensors(offset_b: int, size: int = 128) -> bytes:
    tensors = [("token_embd.weight", (8, 4), 0, 0), ("output_norm.weight", (8,), 0, offset_b)]
    return gguf_bytes(qwen2_kv(), tensors, bytes(size + 64))


@pytest.mark.parametrize(
    ("offset", "needle"),
    [(64, "overlaps"), (130, "not a multiple of 32"), ((1 << 64) - 1, "not a multiple")],
)
def test_overlapping_misaligned_or_wrapping_tensors_are_refused(tmp_path, capsys, offset, needle):
    """Seen: GGUF tensors that overlap, are misaligned or sit at 2**64-1 were converted."""
    path = tmp_path / "placed.gguf"
    path.write_bytes(_two_tensors(offset))
    rc, err = apr_inline(capsys, "convert", str(path), str(tmp_path / "o.apr"))
    assert rc == 1 and needle in err and "output_norm.weight" in err, err
    assert not (tmp_path / "o.apr").exists()


def test_an_offset_near_2_64_that_is_aligned_is_refused_not_wrapped(tmp_path, capsys):
    path = tmp_path / "wrap.gguf"
    path.write_bytes(_two_tensors((1 << 64) - 32))
    rc, err = apr_inline(capsys, "inspect", str(path))
    assert rc == 1 and "runs past the data section" in err, err
