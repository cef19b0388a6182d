"""Each hostile-input-v1 falsifier turns red on an injected defect of its class."""

from __future__ import annotations

import pathlib

import pytest

from aprlib.formats import safetensors as safetensors_format
from falsifiers import test_hostile_input_v1 as hostile


def test_hostile_001_catches_a_reader_that_trusts_a_dtype_field(tmp_path, monkeypatch):
    """The original defect: ``SAFETENSORS_DTYPES.get(["F32"])`` is a TypeError."""
    real = safetensors_format.SafetensorsFile._entry

    def trusting(self, name, info, data_len):
        if isinstance(info, dict):
            safetensors_format.SAFETENSORS_DTYPES.get(info.get("dtype"))
        return real(self, name, info, data_len)

    monkeypatch.setattr(safetensors_format.SafetensorsFile, "_entry", trusting)
    with pytest.raises(AssertionError, match="untyped TypeError"):
        hostile.fuzz("safetensors", tmp_path, examples=300)


def test_hostile_001_catches_config_values_used_unchecked(tmp_path, monkeypatch):
    """head_count 0 reaches a division when the value checks are gone."""
    monkeypatch.setattr("aprlib.config.modelconfig.check_config_values", lambda raw, source: None)
    with pytest.raises(AssertionError, match="untyped"):
        hostile.fuzz("gguf", tmp_path, examples=100)


MAPPED_READS = """
import mmap
import numpy as np
from aprlib.formats import filesource
real_init = filesource.FileSource.__init__
def mapped_init(self, *a, **k):
    real_init(self, *a, **k)
    self.map = mmap.mmap(self.fd, 0, access=mmap.ACCESS_READ) if self.size else None
def mapped_read_into(self, buf, offset, tensor=None, field=None):
    buf[:] = self.map[offset : offset + len(buf)]
def mapped_read(self, offset, length, tensor=None, field=None):
    return np.frombuffer(self.map, dtype=np.uint8, count=length, offset=offset).copy()
filesource.FileSource.__init__ = mapped_init
filesource.FileSource.read_into = mapped_read_into
filesource.FileSource.read = mapped_read
"""


@pytest.mark.parametrize("suffix", [".apr", ".safetensors"])
def test_hostile_002_catches_a_reader_through_a_memory_map(tmp_path, suffix):
    path = hostile._small_model(tmp_path / f"model{suffix}")
    with pytest.raises(AssertionError, match="signal"):
        hostile.truncation_race(path, rounds=10, before=MAPPED_READS)


def test_hostile_003_catches_writers_that_never_clean_dead_temps(tmp_path):
    src = hostile._small_model(tmp_path / "model.apr")
    out = tmp_path / "dst"
    out.mkdir()
    no_cleaning = "from aprlib.formats import atomic\natomic.remove_dead_temps = lambda dst: []\n"
    with pytest.raises(AssertionError, match="left behind"):
        hostile.killed_converts(src, out / "model.gguf", kills=10, before=no_cleaning)


def test_hostile_004_catches_json_without_an_item_cap(tmp_path):
    uncapped = "from aprlib.formats import jsonlimits\njsonlimits.MAX_ITEMS = 10**12\n"
    with pytest.raises(AssertionError, match="peak RSS"):
        hostile.check_rss(tmp_path, before=uncapped, only="apr metadata 20 MB of [],")


def test_hostile_005_catches_shard_paths_resolved_without_the_folder_check(tmp_path, monkeypatch):
    monkeypatch.setattr(pathlib.PurePath, "is_relative_to", lambda self, *other: True)
    with pytest.raises(AssertionError, match="opened"):
        hostile.test_no_shard_outside_the_model_folder_is_ever_opened(tmp_path, _Evidence())


class _Evidence:
    def record(self, **values):
        self.values = values
