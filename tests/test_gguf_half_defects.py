"""FALSIFY-LLAMACPP-003 turns red when the GGUF writer keeps half-precision vectors."""

from __future__ import annotations

import pytest

from aprlib.formats import gguf as gguf_format
from falsifiers import test_gguf_llamacpp_parity_v1 as falsifier


def test_llamacpp_003_catches_half_precision_norms_in_the_gguf(tiny_factory, tmp_path, monkeypatch):
    tiny = tiny_factory("qwen2", dtype="bfloat16", **falsifier.WIDE)
    (tmp_path / "real").mkdir()
    falsifier.check_half_precision_convert(tiny, tmp_path / "real")
    monkeypatch.setattr(gguf_format, "gguf_dtype", lambda t, out: out)  # the defect
    (tmp_path / "broken").mkdir()
    with pytest.raises(AssertionError, match=r"llama\.cpp died"):
        falsifier.check_half_precision_convert(tiny, tmp_path / "broken")
