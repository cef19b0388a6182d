"""Issue 27's fast paths give the answers of the slow ones they replaced: libdeflate's CRC32
is zlib's, the GGUF string arrays decoded at once are the strings decoded one by one (and
a bad one is still refused), and the transposition check that tries one row first still
finds a transposed matrix and still refuses one that differs only after its first row.
"""

from __future__ import annotations

import dataclasses
import zlib
from pathlib import Path

import numpy as np
import pytest

from aprlib.compare import classify
from aprlib.errors import GgufFormatError
from aprlib.formats import filesource, gguf
from aprlib.formats.dtypes import DType
from aprlib.formats.filesource import FileSource, crc32
from aprlib.formats.modelfile import Tensor
from falsifiers.hostile_files import ARRAY, STRING, gguf_bytes, gguf_kv

SIZES = [0, 1, 7, filesource.FAST_CRC_MIN - 1, filesource.FAST_CRC_MIN, 1 << 20, (1 << 20) + 13]


@pytest.fixture(params=["fast", "zlib"])
def crc_path(request, monkeypatch):
    """Both paths of ``crc32``: libdeflate's where this host has it, and zlib's."""
    if request.param == "zlib":
        monkeypatch.setattr(filesource, "_FAST_CRC", [None])
    return request.param


@pytest.mark.parametrize("size", SIZES)
def test_crc32_is_zlibs_for_every_size_start_value_and_buffer_kind(crc_path, size):
    data = np.random.default_rng(size).integers(0, 256, size, dtype=np.uint8)
    for start in (0, 1, 0xDEADBEEF, 0xFFFFFFFF):
        want = zlib.crc32(data.tobytes(), start)
        assert crc32(data, start) == want
        assert crc32(data.data, start) == want
        assert crc32(data.tobytes(), start) == want
        assert crc32(bytearray(data.tobytes()), start) == want
    if size % 4 == 0:  # a typed view is its bytes
        assert crc32(data.view("<u4"), 5) == zlib.crc32(data.tobytes(), 5)


def test_crc32_chains_like_zlib(crc_path):
    """A tensor's CRC is built piece by piece as its bytes stream past."""
    data = np.random.default_rng(0).integers(0, 256, 3 << 20, dtype=np.uint8)
    value = 0
    for lo in range(0, data.size, 700_001):
        value = crc32(data[lo : lo + 700_001], value)
    assert value == zlib.crc32(data.tobytes())


def _tokens_file(tmp_path: Path, items: list[str | bytes]) -> Path:
    path = tmp_path / "tokens.gguf"
    path.write_bytes(gguf_bytes([gguf_kv("tokenizer.ggml.tokens", ARRAY, (STRING, items))]))
    return path


def _parse_tokens(path: Path) -> list[str]:
    with FileSource(path) as src:
        kv, _, _ = gguf._Head(src).parse()
    return kv["tokenizer.ggml.tokens"]


@pytest.mark.parametrize(
    "items",
    [
        [],
        [""],
        ["", "", ""],
        ["a", "Ġthe", "東京", "naïve café", "🙂", "x" * 300, ""],
        ["a\x00b", "\x00", "c"],  # a NUL inside a token: decoded one by one
        [chr(c) for c in range(1, 0x800)],  # every one- and two-byte sequence
    ],
    ids=["none", "one empty", "empties", "mixed", "NUL inside", "all short chars"],
)
def test_string_arrays_decode_to_the_strings_written(tmp_path, items):
    assert _parse_tokens(_tokens_file(tmp_path, items)) == items


def test_a_string_array_larger_than_the_first_read_grows_the_buffer(tmp_path):
    """The header is read in growing chunks (1 MiB first): strings straddle the seams."""
    items = [f"tok{i}-{'é' * (i % 13)}" for i in range(200_000)]
    assert _parse_tokens(_tokens_file(tmp_path, items)) == items


@pytest.mark.parametrize(
    "bad",
    [b"\xff", b"ab\xc3", b"\x80abc", b"\xed\xa0\x80"],  # invalid, cut, stray, surrogate
)
def test_a_string_that_is_not_utf8_is_refused_wherever_it_is(tmp_path, bad):
    for items in ([bad], ["a", bad, "b"], ["a", "b", bad]):
        with pytest.raises(GgufFormatError, match="not UTF-8"):
            _parse_tokens(_tokens_file(tmp_path, items))


def test_a_string_cut_short_by_the_end_of_the_file_is_refused(tmp_path):
    path = _tokens_file(tmp_path, ["a", "bcdefgh" * 100])
    path.write_bytes(path.read_bytes()[:-400])
    with pytest.raises(GgufFormatError, match="needs"):
        _parse_tokens(path)


def _bf16(name: str, values: np.ndarray) -> Tensor:
    raw = ((values.astype(np.float32).view(np.uint32) + 0x8000) >> 16).astype("<u2")
    data = raw.view(np.uint8).reshape(-1)
    return Tensor(name, DType.BF16, values.shape, name, lambda: data)


def test_the_transposition_check_finds_a_transposed_matrix_and_only_that():
    a = np.random.default_rng(0).standard_normal((48, 40)).astype(np.float32)
    ta = _bf16("w", a)
    stored_transposed = _bf16("w", np.ascontiguousarray(a.T))
    labelled = dataclasses.replace(stored_transposed, shape=a.shape)  # row-major label
    assert classify._transposed_in_place(ta, labelled)
    # the first row passes the quick check; a later element breaks the transposition
    later = a.T.copy()
    later[-1, -1] += 1.0
    wrong = dataclasses.replace(_bf16("w", np.ascontiguousarray(later)), shape=a.shape)
    assert not classify._transposed_in_place(ta, wrong)
    # a drift breaks the first row: refused at once
    drift = a.T.copy()
    drift[0, 0] += 1.0
    early = dataclasses.replace(_bf16("w", np.ascontiguousarray(drift)), shape=a.shape)
    assert not classify._transposed_in_place(ta, early)


def test_the_transposition_check_of_a_matrix_without_rows():
    empty = _bf16("w", np.zeros((0, 4), dtype=np.float32))
    flipped = _bf16("w", np.zeros((4, 0), dtype=np.float32))
    assert classify._transposed(empty, flipped) is True


@pytest.mark.parametrize(
    "case",
    ["short", "with long", "with empty", "with NUL text", "all empty", "lengths 256 and 65536"],
)
def test_long_string_arrays_are_located_as_the_walk_locates_them(tmp_path, case):
    """Arrays of at least ``_CHAIN_MIN`` strings are located by ``_Head._chain``: where it
    cannot tell (a long string, a run of zero bytes) the walk takes over, same strings."""
    items = [f"t{i % 97}{'ü' * (i % 5)}" for i in range(3 * gguf._CHAIN_MIN)]
    middle = len(items) // 2
    extra = {
        "short": [],
        "with long": ["L" * 70_000, "M" * 300],
        "with empty": ["", "", "x", ""],
        "with NUL text": ["\x00\x00\x00\x00\x00\x00\x00\x00\x00a", "\x00"],
        "all empty": [],
        "lengths 256 and 65536": ["a" * 256, "b" * 65536, "c" * 512],
    }[case]
    items[middle:middle] = extra
    if case == "all empty":
        items = [""] * (2 * gguf._CHAIN_MIN)
    assert _parse_tokens(_tokens_file(tmp_path, items)) == items


@pytest.mark.parametrize("suffix", [".gguf", ".apr", ".safetensors"])
def test_spans_copied_by_the_kernel_or_the_buffer_make_the_same_file(
    tiny_qwen2, tmp_path, monkeypatch, suffix
):
    """``output.KERNEL_COPY`` picks how a span without a CRC is copied (off: through the
    buffer, faster on ext4); either way the output is the same file."""
    from aprlib import convert
    from aprlib.formats import output

    made = []
    for kernel in (True, False):
        monkeypatch.setattr(output, "KERNEL_COPY", kernel)
        dst = tmp_path / f"{kernel}{suffix}"
        convert(tiny_qwen2.safetensors, dst)
        made.append(dst.read_bytes() if dst.is_file() else None)
    assert made[0] is not None and made[0] == made[1]
