"""`apr diff` on the pipelines users run (issue 22, items 2-5): llama.cpp quantisations made
through an F16 or BF16 intermediate, codebook and ternary types, the row-major/column-major
bug under the original shape label, mislabel blame from the whole file, and words that
must not mislead. Each case failed before its fix."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from aprlib import diff_models, open_model
from aprlib.formats.dtypes import DType, from_float32
from aprlib.formats.io import model_from_arrays
from falsifiers.test_model_diff_v1 import Arrays, f32, write_variant


def run_diff(a: Path, b: Path):
    with open_model(a) as ma, open_model(b) as mb:
        return diff_models(ma, mb)


# --- item 2: one intermediate half-precision rounding before a quantisation ---------------


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory, request):
    """A tiny F32 HF folder (hidden 256: K-quant rows) and llama.cpp's files from it."""
    pytest.importorskip("llama_cpp")
    from conftest import build_tiny
    from falsifiers.llamacpp_converter import convert_hf_to_gguf
    from falsifiers.test_tokenizer_fidelity_v1 import VOCAB, hf_folder_with_tokenizer

    work = tmp_path_factory.mktemp("pipelines")
    tiny = build_tiny(work / "tiny", hidden_size=256, intermediate_size=512, vocab_size=VOCAB)
    folder, _ = hf_folder_with_tokenizer(tiny, "qwen2", work)
    made: dict[str, Path] = {"hf": folder}

    def get(label: str) -> Path:
        if label in made:
            return made[label]
        from aprlib.forward import llamacpp

        if "->" not in label:
            made[label] = convert_hf_to_gguf(folder, work / f"{label}.gguf", "qwen2", label)
            return made[label]
        src, ftype = label.split("->")
        dst = work / f"{src}-{ftype}.gguf"
        assert llamacpp.model_quantize(get(src), dst, ftype) == 0
        made[label] = dst
        return dst

    return get


CHAINS = ["f16->Q8_0", "bf16->Q8_0", "f16->Q4_K_M", "bf16->Q4_K_S", "bf16->Q3_K_M"]


@pytest.mark.parametrize("chain", CHAINS)
def test_a_quant_made_through_a_half_intermediate_is_noise(pipeline, chain):
    report = run_diff(pipeline("hf"), pipeline(chain))
    line = report.diagnosis["line"]
    assert report.passes(expect_quantized=True), line
    assert report.diagnosis["class"] == "QUANT_NOISE", line
    mid = chain.split("->")[0].upper()
    assert any(f"after one {mid} rounding" in p.detail for p in report.pairs), line


@pytest.mark.parametrize("chain", ["f32->TQ2_0", "bf16->TQ2_0", "f16->TQ1_0"])
def test_ternary_types_have_a_bound_from_their_codebook(pipeline, chain):
    report = run_diff(pipeline("hf"), pipeline(chain))
    line = report.diagnosis["line"]
    assert report.passes(expect_quantized=True), line
    tq = [p for p in report.pairs if p.b and p.b["dtype"].startswith("TQ")]
    assert tq and all("d/2 per 256-element block" in p.detail for p in tq), line


@pytest.mark.parametrize("chain", ["f32->IQ3_S", "bf16->IQ3_M"])
def test_codebook_types_say_they_are_compared_by_cosine_only(pipeline, chain):
    report = run_diff(pipeline("hf"), pipeline(chain))
    line = report.diagnosis["line"]
    assert report.passes(expect_quantized=True), line
    assert "no bound known for IQ3_S: compared by cosine >= 0.95 only" in line, line


def _plant(src: Path, dst: Path, name: str, edit) -> Path:
    """A copy of GGUF ``src`` with ``edit(bytes of tensor name)`` applied in place."""
    from gguf import GGUFReader

    data = bytearray(src.read_bytes())
    tensor = next(t for t in GGUFReader(src).tensors if t.name == name)
    start = int(tensor.data_offset)
    view = np.frombuffer(data, dtype=np.uint8, count=int(tensor.n_bytes), offset=start).copy()
    edit(view)
    data[start : start + view.size] = view.tobytes()
    dst.write_bytes(bytes(data))
    return dst


def _q8_0_quant_moved(v: np.ndarray) -> None:
    v[34 * 5 + 2 + 7] ^= 0x10  # one int8 code of block 5 moved by 16 steps


def _q8_0_scale_halved(v: np.ndarray) -> None:
    d = v[34 * 3 : 34 * 3 + 2].view(np.float16)
    d[0] = d[0] / 2


def _q4_k_nibble(v: np.ndarray) -> None:
    v[144 * 2 + 16 + 9] ^= 0x08  # one 4-bit code of block 2 moved by 8 steps


def _q4_k_scale_bits(v: np.ndarray) -> None:
    v[144 * 1 + 4] ^= 0x20  # a six-bit sub-block scale of block 1 changed


def _tq2_0_code(v: np.ndarray) -> None:
    v[66 * 4 + 3] ^= 0x03  # four 2-bit codes of block 4 changed


def _tq2_0_scale(v: np.ndarray) -> None:
    d = v[66 * 2 + 64 : 66 * 2 + 66].view(np.float16)
    d[0] = d[0] * 2


PLANTED = [
    ("bf16->Q8_0", "blk.0.attn_q.weight", _q8_0_quant_moved),
    ("f16->Q8_0", "blk.1.ffn_up.weight", _q8_0_quant_moved),
    ("bf16->Q8_0", "blk.1.ffn_down.weight", _q8_0_scale_halved),
    ("f16->Q4_K_M", "blk.0.ffn_gate.weight", _q4_k_nibble),
    ("bf16->Q4_K_S", "blk.1.attn_q.weight", _q4_k_nibble),
    ("bf16->Q4_K_S", "blk.0.attn_output.weight", _q4_k_scale_bits),
    ("bf16->TQ2_0", "blk.0.ffn_up.weight", _tq2_0_code),
    ("f32->TQ2_0", "blk.1.ffn_gate.weight", _tq2_0_scale),
]


#: (block bytes, offset of the block's f16 scale d, offset of a code byte) per ggml type
BLOCKS = {
    "Q8_0": (34, 0, 7), "Q4_0": (18, 0, 7), "Q6_K": (210, 208, 10), "Q5_K": (176, 0, 58),
    "Q4_K": (144, 0, 26), "Q3_K": (110, 108, 42), "TQ1_0": (54, 52, 10),
    "TQ2_0": (66, 64, 10), "IQ4_NL": (18, 0, 7),
}  # fmt: skip


def _scale_x4(kind: str):
    def edit(v: np.ndarray) -> None:
        size, at, _ = BLOCKS[kind]
        d = v[size + at : size + at + 2].view(np.float16)
        d[0] = d[0] * 4

    edit.__name__ = f"{kind}_scale_x4"
    return edit


def _codes_flipped(kind: str):
    def edit(v: np.ndarray) -> None:
        size, _, at = BLOCKS[kind]
        v[size + at] ^= 0xCC

    edit.__name__ = f"{kind}_codes_flipped"
    return edit


PLANTED += [
    ("f16->Q3_K_M", "blk.1.ffn_up.weight", _scale_x4("Q3_K")),
    ("f16->Q3_K_M", "blk.1.ffn_down.weight", _codes_flipped("Q4_K")),
    ("f16->Q3_K_M", "blk.1.attn_v.weight", _scale_x4("Q5_K")),
    ("f16->Q3_K_M", "output.weight", _scale_x4("Q6_K")),
    ("bf16->Q4_K_M", "blk.1.ffn_up.weight", _codes_flipped("Q4_K")),
    ("bf16->Q4_K_M", "blk.1.ffn_down.weight", _scale_x4("Q6_K")),
    ("bf16->Q4_0", "blk.1.ffn_up.weight", _scale_x4("Q4_0")),
    ("bf16->TQ1_0", "blk.1.ffn_up.weight", _codes_flipped("TQ1_0")),
    ("bf16->TQ1_0", "blk.1.ffn_up.weight", _scale_x4("TQ1_0")),
    ("bf16->IQ4_NL", "blk.1.ffn_up.weight", _scale_x4("IQ4_NL")),
    ("bf16->Q5_K_S", "blk.1.ffn_up.weight", _scale_x4("Q5_K")),
    ("f16->Q6_K", "blk.1.ffn_up.weight", _scale_x4("Q6_K")),
    ("f16->Q8_0", "blk.0.attn_k.weight", _codes_flipped("Q8_0")),
]


@pytest.mark.parametrize("chain,tensor,edit", PLANTED, ids=lambda x: getattr(x, "__name__", x))
def test_the_intermediate_bound_lets_no_planted_defect_through(
    pipeline, tmp_path, chain, tensor, edit
):
    bad = _plant(pipeline(chain), tmp_path / "bad.gguf", tensor, edit)
    report = run_diff(pipeline("hf"), bad)
    line = report.diagnosis["line"]
    assert not report.passes(expect_quantized=True), line
    flagged = [p for p in report.pairs if p.tag not in ("IDENTICAL", "EQUIVALENT", "QUANT_NOISE")]
    assert len(flagged) == 1 and flagged[0].tag == "VALUE_DRIFT", line


# --- items 3 and 5: transposed bytes under the original shape label ----------------------


def _transpose_in_place(arrays: Arrays) -> None:
    for name in [n for n in arrays if ".mlp." in n]:
        v = f32(arrays[name])
        arrays[name] = (DType.F32, v.shape, np.ascontiguousarray(v.T).reshape(v.shape))


def test_bytes_transposed_under_the_row_major_label_are_transposed(tiny_qwen2, tmp_path):
    bad = write_variant(tiny_qwen2.safetensors, _transpose_in_place, "safetensors", tmp_path / "v")
    report = run_diff(tiny_qwen2.safetensors, bad)
    line = report.diagnosis["line"]
    assert line.startswith("DIAGNOSIS: TRANSPOSED mlp.{down,gate,up}_proj.weight in 2/2 layers")
    assert "stored transposed (column-major) under a row-major shape: a layout defect" in line
    assert "format layout diff" not in line, line


def test_a_square_transpose_is_a_layout_defect_too(tiny_qwen2, tmp_path):
    def square(arrays: Arrays) -> None:
        v = f32(arrays["model.layers.0.self_attn.q_proj.weight"])
        arrays["model.layers.0.self_attn.q_proj.weight"] = (DType.F32, v.shape, v.T.copy())

    report = run_diff(
        tiny_qwen2.safetensors,
        write_variant(tiny_qwen2.safetensors, square, "safetensors", tmp_path / "v"),
    )
    line = report.diagnosis["line"]
    assert "TRANSPOSED self_attn.q_proj.weight in 1/2 layers" in line, line
    assert "a layout defect" in line and "format layout diff" not in line, line


# --- item 4: mislabel blame from the whole file ------------------------------------------


def _retag_norm_bf16(arrays: Arrays) -> None:
    _, shape, raw = arrays["model.norm.weight"]
    arrays["model.norm.weight"] = (DType.BF16, shape, raw)


def _narrow_norm(arrays: Arrays) -> None:
    """A final norm as trained models have it: near 1, a narrow spread (F16 bytes of it
    read as BF16 spread over a binade and look like weights; read as F16, they do not)."""
    _, shape, _ = arrays["model.norm.weight"]
    v = 1 + np.random.default_rng(3).standard_normal(shape) * 0.05
    arrays["model.norm.weight"] = (DType.F16, shape, from_float32(v.astype(np.float32), DType.F16))


def test_the_odd_tag_of_its_own_file_is_blamed(tiny_factory, tmp_path):
    h16 = write_variant(
        tiny_factory("qwen2", dtype="float16").folder, _narrow_norm, "safetensors", tmp_path / "h"
    )
    bad = write_variant(h16, _retag_norm_bf16, "safetensors", tmp_path / "bad")
    line = run_diff(h16, bad).diagnosis["line"]
    assert "F16 data tagged BF16 (in B)" in line, line
    line = run_diff(bad, h16).diagnosis["line"]
    assert "F16 data tagged BF16 (in A)" in line, line


def test_when_the_evidence_does_not_decide_the_finding_says_a_or_b(tmp_path):
    from aprlib.formats.conversion import write_model

    values = (1.0 + np.random.default_rng(0).standard_normal(64) * 0.1).astype(np.float32)
    raw = from_float32(values, DType.F16)
    for side, dtype in (("a", DType.F16), ("b", DType.BF16)):
        model = model_from_arrays({"model.norm.weight": (dtype, (64,), raw.copy())}, None)
        write_model(model, tmp_path / f"{side}.safetensors")
    line = run_diff(tmp_path / "a.safetensors", tmp_path / "b.safetensors").diagnosis["line"]
    assert "cannot tell which side" in line and " in A or " in line, line


# --- item 5: words that mislead ----------------------------------------------------------


def test_f32_against_two_byte_data_is_not_called_bytes_identical(tiny_qwen2, tmp_path):
    def mislabel(arrays: Arrays) -> None:
        _, shape, raw = arrays["model.norm.weight"]
        arrays["model.norm.weight"] = (
            DType.BF16,
            shape,
            from_float32(raw.view(np.float32), DType.F16),
        )

    bad = write_variant(tiny_qwen2.safetensors, mislabel, "safetensors", tmp_path / "v")
    report = run_diff(tiny_qwen2.safetensors, bad)
    pair = next(p for p in report.pairs if p.name == "model.norm.weight")
    assert pair.tag == "DTYPE_MISLABEL", pair.detail
    assert "bytes identical" not in pair.detail.lower(), pair.detail
    assert "F16 data tagged BF16 (in B)" in pair.detail, pair.detail


def test_a_zeroed_tensor_is_not_b_equals_zero_times_a(tiny_qwen2, tmp_path):
    def zero(arrays: Arrays) -> None:
        _, shape, raw = arrays["model.layers.1.self_attn.o_proj.weight"]
        arrays["model.layers.1.self_attn.o_proj.weight"] = (DType.F32, shape, np.zeros_like(raw))

    line = run_diff(
        tiny_qwen2.safetensors,
        write_variant(tiny_qwen2.safetensors, zero, "safetensors", tmp_path / "v"),
    ).diagnosis["line"]
    assert "0 x A" not in line, line
    assert "B is all zeros" in line, line


def test_bf16_by_truncation_names_the_rounding_mode(tiny_qwen2, tmp_path):
    def truncate(arrays: Arrays) -> None:
        for name, (_, shape, raw) in list(arrays.items()):
            top = (raw.view(np.uint32) >> np.uint32(16)).astype(np.uint16)
            arrays[name] = (DType.BF16, shape, top.view(np.uint8).reshape(-1))

    report = run_diff(
        tiny_qwen2.safetensors,
        write_variant(tiny_qwen2.safetensors, truncate, "safetensors", tmp_path / "v"),
    )
    line = report.diagnosis["line"]
    assert "by truncation (round toward zero), not round-to-nearest-even" in line, line
