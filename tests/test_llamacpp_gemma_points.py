"""llama.cpp's Gemma 2 and Gemma 3 graphs (``src/models/gemma2.cpp``, ``gemma3.cpp``) placed
at our capture points by the built-in map (``llamacpp_points._gemma_map``), and bisect
through them.

The map is checked against an independent forward: aprlib's ``Transformer`` on the same
F32 GGUF, with GELU computed as llama.cpp's CPU backend does (its F16 table: the one
arithmetic difference, ~3e-4 relative at the MLP, shown here to be the whole gap). A map
entry naming the wrong tensor (the unscaled ``embd``, a neighbouring ``Qcur``, the query
after its scale) is off by O(1), not by rounding; the mapped point set is asserted, so a
dropped entry fails too. Then bisect: an identical model is clean, and a weight changed in
the GGUF is named at its point and layer.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from aprlib import convert
from aprlib.forward import llamacpp
from aprlib.forward import llamacpp_points as lp
from aprlib.forward.model import Ops, Transformer
from falsifiers.llamacpp_oracle import require_llama_cpp
from falsifiers.test_gguf_real_files_v1 import rewrite_gguf
from tests.family_checks import llama_cpp_bisect_json
from tests.test_llamacpp_capture import mapped_points, relative

TOKENS = [3, 17, 42, 5, 88, 1, 60, 29, 11, 70, 2]
#: windows shorter than the tokens (a windowed layer masks keys), the query scale llama.cpp
#: assumes (1/sqrt(head_dim): head_dim 16), a final soft-cap that bites (logits ~ 5)
GEMMA2 = {"sliding_window": 4, "query_pre_attn_scalar": 16, "final_logit_softcapping": 5.0}
GEMMA3 = {"sliding_window": 4, "query_pre_attn_scalar": 16, "sliding_window_pattern": 2}
#: HF model type → (GGUF arch, tiny model's overrides); gemma2's graph always reads its head
#: from the embedding, so its model is tied
ARCHS = {"gemma2": ("gemma2", {"tied": True, **GEMMA2}), "gemma3_text": ("gemma3", GEMMA3)}
#: float32 rounding of two forwards (summation order, rope tables), relative to the
#: tensor's largest value; a wrong tensor is off by O(1)
RTOL = 1e-5
#: from the first GELU on, against a reference with llama.cpp's GELU table: a gate on an
#: F16 rounding boundary may round the other way there (its gate differs from ours by
#: float32 rounding; ~1 element in 2000), one F16 step of that GELU (~1e-3 of it), so the
#: gate is on the whole tensor (observed NMSE <= 3.5e-9; exact GELU's gap ~1e-7 and a
#: wrong tensor's ~1 both fail) and on the largest difference (observed <= 1.8e-4)
NMSE_AFTER_GELU = 3e-8
RTOL_AFTER_GELU = 1e-3
#: per layer, every point but these is placed: llama.cpp names no ``wo @ kqv_out`` and no
#: scaled scores; gemma2 names the MLP's post norm without its layer
NOT_IN_LLAMACPP = {"attn.scores", "attn.o_proj"}
NOT_IN_GEMMA2 = {"mlp.post_norm"}


class GgmlGelu(Ops):
    """The reference ``Ops`` with GELU read from llama.cpp's CPU table: the float32 GELU of
    each F16 value, stored as F16, looked up at the F16-rounded gate; at or beyond ±10 the
    gate itself or 0 (``ggml_vec_geglu_f32`` under ``GGML_GELU_FP16``)."""

    def geglu(self, gate: torch.Tensor, up: torch.Tensor, approximate: str = "tanh"):
        return ggml_gelu(gate, approximate) * up


def ggml_gelu(gate: torch.Tensor, approximate: str = "tanh") -> torch.Tensor:
    """``GgmlGelu``'s GELU alone (modelled here, independently of the code under test)."""
    at = gate.to(torch.float16).to(torch.float32)
    table = torch.nn.functional.gelu(at, approximate=approximate).to(torch.float16)
    table = table.to(gate.dtype)
    return torch.where(gate >= 10, gate, torch.where(gate <= -10, torch.zeros_like(gate), table))


@pytest.fixture(scope="module")
def gemma_gguf(tmp_path_factory: pytest.TempPathFactory, tiny_factory: Any) -> Any:
    """``gemma_gguf(model_type)`` → (tiny model, its F32 GGUF by aprlib), made once."""
    made: dict[str, tuple[Any, Path]] = {}

    def make(model_type: str) -> tuple[Any, Path]:
        if model_type not in made:
            tiny = tiny_factory(model_type, **ARCHS[model_type][1])
            path = tmp_path_factory.mktemp(f"gemma-{model_type}") / "m.gguf"
            convert(tiny.folder, path)
            made[model_type] = (tiny, path)
        return made[model_type]

    return make


def reference(path: Path, tokens: list[int], ops: Ops | None = None) -> dict[str, np.ndarray]:
    """Every capture point of aprlib's float32 forward on ``path``, batch dropped, as
    [tokens, ...] (q/k after RoPE transposed from [heads, tokens, head_dim])."""
    model = Transformer.from_file(path, ops=ops)
    got: dict[str, np.ndarray] = {}

    def hook(name: str, x: torch.Tensor) -> None:
        value = x[0].float().numpy()
        if name.endswith((".q.rope", ".k.rope")):
            value = value.transpose(1, 0, 2)
        got[name] = np.ascontiguousarray(value)

    with torch.no_grad(), model.capture(hook):
        model(torch.tensor([tokens]))
    return got


def nmse(a: np.ndarray, b: np.ndarray) -> float:
    """Σ(a - b)² / Σb², in float64 (``a`` in ``b``'s shape: the same values in either
    layout, [tokens, heads, head_dim] or [tokens, heads*head_dim])."""
    d = a.reshape(b.shape).astype(np.float64) - b
    return float(np.sum(d * d) / max(float(np.sum(b.astype(np.float64) ** 2)), 1e-300))


def expected_points(arch: str, n_layer: int) -> set[str]:
    """The points the map must place: every capture point of the model but those llama.cpp
    holds no tensor for."""
    from aprlib.forward.model import capture_graph

    missing = NOT_IN_LLAMACPP | (NOT_IN_GEMMA2 if arch == "gemma2" else set())
    graph = capture_graph(n_layer, qk_norm=arch == "gemma3", norms="sandwich")
    return {p for p in graph if p.split(".", 2)[-1] not in missing or not p.startswith("layers.")}


@pytest.mark.parametrize("model_type", sorted(ARCHS))
def test_every_mapped_tensor_is_the_reference_point(gemma_gguf: Any, model_type: str) -> None:
    """Exactly the expected points placed, each the reference's value: to float32 rounding
    up to the first GELU, to llama.cpp's GELU table's rounding from there."""
    require_llama_cpp()
    arch = ARCHS[model_type][0]
    tiny, path = gemma_gguf(model_type)
    got, (run, absent, _ignored) = mapped_points(path, TOKENS)
    assert run.arch == arch and run.qkv_bias is False
    assert (run.census["Qcur-0"], run.census["Kcur-0"], run.census["Vcur-0"]) == (3, 3, 2)
    n_layer = tiny.model.config.num_hidden_layers
    assert set(got) == expected_points(arch, n_layer)
    assert set(absent) == set(reference(path, TOKENS)) - set(got)
    ref = reference(path, TOKENS, GgmlGelu())
    order = list(ref)
    first_gelu = order.index("layers.0.mlp.swiglu")
    bad = {}
    for point, value in got.items():
        error = relative(value.reshape(ref[point].shape), ref[point])
        if order.index(point) < first_gelu:
            if error > RTOL:
                bad[point] = error
        elif error > RTOL_AFTER_GELU or nmse(value, ref[point]) > NMSE_AFTER_GELU:
            bad[point] = (error, nmse(value, ref[point]))
    assert not bad, f"{arch}: mapped llama.cpp tensors differ from the reference: {bad}"
    assert np.array_equal(run.logits, run.tensors["result_output"][0])


@pytest.mark.parametrize("model_type", sorted(ARCHS))
def test_the_gelu_table_is_the_whole_gap(gemma_gguf: Any, model_type: str) -> None:
    """At the MLP's GELU, llama.cpp differs from exact tanh-GELU by its F16 table: its
    ``ffn_geglu`` is the table's GELU of its own gate times its own up (but for a gate on
    an F16 rounding boundary, where the table's float32 GELU and torch's may round
    apart), ~1e-7 NMSE off the exact GELU, which every later point inherits; with the
    table modelled the logits are 30x closer."""
    require_llama_cpp()
    _, path = gemma_gguf(model_type)
    run = llamacpp.activations(path, TOKENS)
    for layer in (0, 1):
        gate = torch.from_numpy(np.array(run.tensors[f"ffn_gate-{layer}"][0]))
        up = torch.from_numpy(np.array(run.tensors[f"ffn_up-{layer}"][0]))
        theirs = np.asarray(run.tensors[f"ffn_geglu-{layer}"][0])
        tabled = (ggml_gelu(gate) * up).numpy()
        exact = (torch.nn.functional.gelu(gate, approximate="tanh") * up).numpy()
        off = np.abs(theirs - tabled) > 1e-6 * np.abs(theirs).max()
        assert off.mean() < 0.01 and relative(theirs, tabled) < 1e-4
        assert 1e-8 < nmse(theirs, exact) < 1e-6 and nmse(theirs, tabled) < 1e-9
    exact_ref, tabled_ref = reference(path, TOKENS), reference(path, TOKENS, GgmlGelu())
    got, _ = mapped_points(path, TOKENS)
    logits = got["logits"]
    assert nmse(logits, exact_ref["logits"]) > 30 * nmse(logits, tabled_ref["logits"])


@pytest.mark.parametrize("model_type", sorted(ARCHS))
def test_the_neighbours_the_map_leaves_out_are_other_quantities(
    gemma_gguf: Any, model_type: str
) -> None:
    """What a careless map would take: ``embd`` is the embedding before x sqrt(hidden)
    (``inp_scaled`` after), the ``Qcur`` reshape (#2) is q before RoPE, and the query
    llama.cpp attends with is the RoPE result times 1/sqrt(query_pre_attn_scalar): the
    map's ``attn.q.rope`` (``Qcur`` #3) is before that scale."""
    require_llama_cpp()
    _, path = gemma_gguf(model_type)
    ref = reference(path, TOKENS)
    run = llamacpp.activations(path, TOKENS, names=["embd", "inp_scaled", "Qcur-{layer}"])
    embd, scaled = run.tensors["embd"][0], run.tensors["inp_scaled"][0]
    np.testing.assert_allclose(embd * np.float32(math.sqrt(64)), scaled, rtol=1e-6)
    assert relative(embd.reshape(ref["embed"].shape), ref["embed"]) > 0.5
    assert relative(scaled.reshape(ref["embed"].shape), ref["embed"]) == 0.0
    rope = ref["layers.0.attn.q.rope"]
    qcur = [a.reshape(rope.shape) for a in run.tensors["Qcur-0"]]
    assert len(qcur) == 3
    assert relative(qcur[1], rope) > 0.1  # before RoPE
    assert relative(qcur[2], rope) <= RTOL
    assert relative(qcur[2] / math.sqrt(16), rope) > 0.5  # the scaled query is not the point


def test_the_map_data_for_gemma() -> None:
    """The entries that differ from llama's, spelled out."""
    for arch in ("gemma2", "gemma3"):
        entries = {(e["name"], e.get("nth", 1)): e for e in lp.point_map_data(arch)["points"]}
        assert entries[("inp_scaled", 1)]["point"] == "embed"
        assert ("embd", 1) not in entries
        assert entries[("Qcur-{layer}", 3)]["point"] == "layers.{layer}.attn.q.rope"
        assert entries[("sa_out-{layer}", 1)]["point"] == "layers.{layer}.resid.attn"
        assert entries[("ffn_geglu-{layer}", 1)]["point"] == "layers.{layer}.mlp.swiglu"
        assert ("attn_out-{layer}", 1) not in entries
        assert (("ffn_post_norm-{layer}", 1) in entries) is (arch == "gemma3")
        assert (("Qcur_normed-{layer}", 1) in entries) is (arch == "gemma3")
        assert lp.qkv_bias_from_census({"Qcur-0": 3, "Kcur-0": 3, "Vcur-0": 2}, arch) is False
    assert "inp_scaled" in lp.engine_names() and "sa_out-{layer}" in lp.engine_names()


def bisect_json(folder: Path, gguf: Path, capsys: Any) -> tuple[int, dict[str, Any]]:
    return llama_cpp_bisect_json(folder, gguf, TOKENS, capsys)


@pytest.mark.parametrize("model_type", sorted(ARCHS))
def test_bisect_through_llama_cpp_finds_an_identical_gemma_clean(
    gemma_gguf: Any, model_type: str, capsys: Any
) -> None:
    require_llama_cpp()
    tiny, path = gemma_gguf(model_type)
    code, report = bisect_json(tiny.folder, path, capsys)
    assert code == 0, report["findings"]
    assert report["findings"] == []


def scaled(name: str, factor: float) -> Any:
    """A ``rewrite_gguf`` tensor function: ``name``'s stored values times ``factor``."""

    def change(tensor: str, data: Any, kind: Any) -> tuple[Any, Any]:
        if tensor == name:
            return (np.asarray(data, dtype=np.float32) * np.float32(factor)), kind
        return data, kind

    return change


#: (model type, GGUF tensor scaled, factor, the point bisect must name first); a norm
#: scaled as stored (1 + w, llama.cpp's convention); gemma2's MLP post norm has no
#: llama.cpp point, but the weights check runs both files on the reference and holds it
DEFECTS = [
    ("gemma2", "blk.1.ffn_down.weight", 1.5, "layers.1.mlp.down"),
    ("gemma2", "blk.1.post_ffw_norm.weight", 1.5, "layers.1.mlp.post_norm"),
    ("gemma3_text", "blk.1.attn_k_norm.weight", 3.0, "layers.1.attn.k.norm"),
]


@pytest.mark.parametrize(("model_type", "tensor", "factor", "point"), DEFECTS)
def test_bisect_through_llama_cpp_names_a_weight_changed_in_the_gguf(
    gemma_gguf: Any,
    tmp_path: Path,
    capsys: Any,
    model_type: str,
    tensor: str,
    factor: float,
    point: str,
) -> None:
    require_llama_cpp()
    tiny, path = gemma_gguf(model_type)
    # the writer's float32 residual for a norm (w = stored - 1 + residual) fits only the
    # stored value it was written with: it goes with the change (our reader refuses a
    # residual that moves the weight llama.cpp runs)
    residual = {f"aprlib.norm_residual.{tensor}"}
    bad = rewrite_gguf(path, tmp_path / "bad.gguf", residual, tensor=scaled(tensor, factor))
    code, report = bisect_json(tiny.folder, bad, capsys)
    assert code == 1
    assert report["findings"][0].startswith(f"introduced by B's weights at {point}"), report[
        "findings"
    ]


def test_a_query_scale_llama_cpp_does_not_take_is_named_at_attn_out(
    tiny_factory: Any, tmp_path: Path, capsys: Any
) -> None:
    """llama.cpp's gemma3 graph scales queries by 1/sqrt(head_dim) (its 27B rule aside),
    not query_pre_attn_scalar^-1/2 (convert says so in a note): q after RoPE agrees, since
    the map takes ``Qcur`` before the scale, and attention's output is where it differs."""
    require_llama_cpp()
    tiny = tiny_factory("gemma3_text", **{**GEMMA3, "query_pre_attn_scalar": 24})
    convert(tiny.folder, tmp_path / "m.gguf")
    code, report = bisect_json(tiny.folder, tmp_path / "m.gguf", capsys)
    assert code == 1
    assert report["findings"][0] == "introduced in B's engine at layers.0.attn.out (kqv_out-0)"


def test_llama_cpp_converter_output_maps_alike(tmp_path: Path, tiny_factory: Any) -> None:
    """A Gemma 3 GGUF from llama.cpp's own convert_hf_to_gguf.py (F32; the norms its
    converter stores as w + 1) places the same points, within the same gates."""
    require_llama_cpp()
    from falsifiers.llamacpp_converter import convert_hf_to_gguf
    from falsifiers.test_gguf_real_files_v1 import PRE, converter_vocab
    from falsifiers.test_tokenizer_fidelity_v1 import hf_folder_with_tokenizer

    pre = PRE["gemma3_text"]
    # bf16 (as Gemma ships: w + 1 exact in float32), exactly the tokenizer's rows (the
    # converter cuts the embedding to them)
    tiny = tiny_factory("gemma3_text", vocab_size=converter_vocab(pre), dtype="bfloat16", **GEMMA3)
    folder, _ = hf_folder_with_tokenizer(tiny, pre, tmp_path)
    config = folder / "tokenizer_config.json"  # the fixture's BPE read as itself
    config.write_text(
        json.dumps({**json.loads(config.read_text()), "tokenizer_class": "PreTrainedTokenizerFast"})
    )
    path = convert_hf_to_gguf(folder, tmp_path / "gemma3-llamacpp.gguf", pre, "f32")
    got, (run, _absent, _ignored) = mapped_points(path, TOKENS)
    assert run.arch == "gemma3"
    assert set(got) == expected_points("gemma3", tiny.model.config.num_hidden_layers)
    ref = reference(path, TOKENS, GgmlGelu())
    worst = max(nmse(value, ref[point]) for point, value in got.items())
    assert worst <= NMSE_AFTER_GELU, worst
