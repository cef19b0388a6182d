"""Every aprlib falsifier turns red on an injected defect of its class."""

from __future__ import annotations

import numpy as np
import pytest

from aprlib.formats import conversion as convert_module
from aprlib.formats import dtypes, layout, output
from aprlib.formats.apr import AprFile
from falsifiers import test_apr_format_v2 as apr_format
from falsifiers import test_dtype_fidelity_v1 as fidelity
from falsifiers import test_gguf_export_v1 as export
from falsifiers import test_tensor_layout_v1 as layout_falsifiers
from falsifiers import test_tied_embeddings_v1 as tied


@pytest.fixture
def transpose_ffn(monkeypatch):
    """The incident: a converter that stores FFN weights transposed (same bytes count)."""
    real = output.encode

    def encode(t, dtype):
        raw = real(t, dtype)
        if "mlp" in t.name and len(t.shape) == 2 and not dtype.info.quantized:
            width = dtype.info.block_bytes
            return np.ascontiguousarray(
                raw.reshape(t.shape[0], t.shape[1], width).transpose(1, 0, 2)
            ).reshape(-1)
        return raw

    monkeypatch.setattr(output, "encode", encode)
    # every tensor through encode: same-dtype bytes otherwise go file to file, unencoded
    monkeypatch.setattr(output, "unchanged_span", lambda t, dtype: None)


def test_apr_001_catches_a_transposing_converter(tiny_factory, tmp_path, transpose_ffn):
    with pytest.raises(AssertionError):
        apr_format.check_roundtrip(tiny_factory("qwen2").safetensors, tmp_path)


def test_apr_002_catches_a_reader_without_bounds(tmp_path, monkeypatch):
    monkeypatch.setattr(AprFile, "_parse_index", lambda self, *args: {})  # trusts the header
    make, field = apr_format.HOSTILE["offset past EOF"]
    path = make(tmp_path / "hostile.apr")
    with pytest.raises(AssertionError):
        apr_format.check_hostile(path, field)


def test_apr_003_catches_a_reader_that_skips_the_crc(tmp_path, monkeypatch):
    real = AprFile.raw
    monkeypatch.setattr(AprFile, "raw", lambda self, name, verify=True: real(self, name, False))
    path = apr_format.small_apr(tmp_path / "small.apr")
    with pytest.raises(BaseException) as info:  # pytest.raises(...) inside fails: Failed
        apr_format.check_crc(path, [3])
    assert "DID NOT RAISE" in str(info.value)


def test_layout_001_catches_a_transposing_converter(tiny_factory, tmp_path, transpose_ffn):
    with pytest.raises(AssertionError):
        layout_falsifiers.check_orientation(tiny_factory("qwen2"), tmp_path)


def test_layout_002_catches_a_gguf_with_unpermuted_llama_rows(tiny_factory, tmp_path, monkeypatch):
    monkeypatch.setattr(layout, "PERMUTED_QK_ARCHS", frozenset())
    with pytest.raises(AssertionError):
        layout_falsifiers.check_gguf_package_reads_our_file(tiny_factory("llama"), tmp_path)


def test_layout_003_catches_a_swapped_name(tiny_factory, monkeypatch):
    swapped = dict(layout._HF_BLOCK)
    swapped["mlp.gate_proj.weight"], swapped["mlp.up_proj.weight"] = (
        "ffn_up.weight",
        "ffn_gate.weight",
    )
    monkeypatch.setattr(layout, "_HF_BLOCK", swapped)
    with pytest.raises(AssertionError):
        layout_falsifiers.check_name_map(tiny_factory("qwen2"))


def test_dtype_001_catches_bf16_decoded_as_f16(tiny_factory, tmp_path, monkeypatch):
    monkeypatch.setattr(
        dtypes, "bf16_to_float32", lambda raw, out=None: raw.view("<f2").astype(np.float32)
    )
    with pytest.raises(AssertionError):
        fidelity.check_against_safetensors(
            tiny_factory("qwen2", dtype="bfloat16").safetensors, tmp_path
        )


def test_dtype_002_catches_f16_decoded_as_bf16(tiny_factory, tmp_path, monkeypatch):
    real = dtypes.to_float32

    def mislabel(raw, dtype, shape):
        if dtype is dtypes.DType.F16:
            dtype = dtypes.DType.BF16
        return real(raw, dtype, shape)

    monkeypatch.setattr("aprlib.formats.modelfile.to_float32", mislabel)
    with pytest.raises(AssertionError):
        fidelity.check_against_safetensors(
            tiny_factory("qwen2", dtype="float16").safetensors, tmp_path
        )


def test_dtype_003_catches_a_wrong_q8_0_block_layout(monkeypatch):
    real = dtypes.from_float32

    def scale_last(values, dtype):
        raw = real(values, dtype)
        if dtype is dtypes.DType.Q8_0:  # scale written after the 32 values
            blocks = raw.reshape(-1, 34)
            return np.concatenate([blocks[:, 2:], blocks[:, :2]], axis=1).reshape(-1)
        return raw

    monkeypatch.setattr("falsifiers.test_dtype_fidelity_v1.from_float32", scale_last)
    x = fidelity.sample(2, 2, 32, 0.0, "normal", 1)
    with pytest.raises(AssertionError):
        fidelity.check_q8_0(x)


def test_dtype_004_catches_swapped_nibbles():
    from aprlib.formats.q4k import quantize_q4_k

    def swapped(x):
        raw = quantize_q4_k(x).reshape(-1, 144).copy()
        raw[:, 16:] = (raw[:, 16:] >> 4) | (raw[:, 16:] << 4)
        return raw.reshape(x.shape[0], -1)

    x = fidelity.sample(2, 1, 256, 0.0, "normal", 3)
    fidelity.check_q4_k(x)
    with pytest.raises(AssertionError):
        fidelity.check_q4_k(x, quantize=swapped)


def test_tied_001_catches_a_duplicated_head(tiny_factory, tmp_path, monkeypatch):
    monkeypatch.setattr(
        convert_module,
        "output_tensors",
        lambda model, notes: (
            list(model.tensors.values()) + ([model.get("lm_head.weight")] if model.tied else [])
        ),
    )
    with pytest.raises(AssertionError, match="duplicate lm_head"):
        tied.check_tied(tiny_factory("qwen2", tied=True), tmp_path)


def test_tied_002_catches_a_head_that_falls_through(tiny_factory, tmp_path, monkeypatch):
    real = convert_module.output_tensors
    monkeypatch.setattr(
        convert_module,
        "output_tensors",
        lambda model, notes: [t for t in real(model, notes) if t.name != "lm_head.weight"],
    )
    with pytest.raises(AssertionError):
        tied.check_untied(tiny_factory("qwen2", tied=False), tmp_path)


def test_tied_003_catches_a_converter_that_trusts_the_config(tiny_factory, tmp_path, monkeypatch):
    monkeypatch.setattr(
        convert_module, "output_tensors", lambda model, notes: list(model.tensors.values())
    )
    with pytest.raises(BaseException, match="DID NOT RAISE"):
        tied.check_disagreement_refused(
            tiny_factory("qwen2", tied=False), tiny_factory("qwen2", tied=True), tmp_path
        )


@pytest.mark.parametrize(
    ("arch", "archs"), [("qwen2", frozenset({"qwen2", "llama"})), ("llama", frozenset())]
)
def test_gguf_llamacpp_catches_the_wrong_rotary_order(
    tiny_factory, tmp_path, monkeypatch, arch, archs
):
    monkeypatch.setattr(layout, "PERMUTED_QK_ARCHS", archs)
    with pytest.raises(AssertionError, match=r"llama\.cpp and transformers differ"):
        export.check_logits(tiny_factory(arch), tmp_path)
