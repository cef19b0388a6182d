"""llama.cpp's Phi-3 and Qwen3-MoE graphs (``src/models/phi3.cpp``, ``qwen3moe.cpp`` with
``build_moe_ffn``) placed at our capture points by the built-in map
(``llamacpp_points._phi3_map``, ``_qwen3moe_map``), and bisect through them.

The map is checked against an independent forward: aprlib's ``Transformer`` on the same
F32 GGUF. Both graphs are SiLU, so every mapped tensor agrees to float32 rounding; a map
entry naming the wrong tensor (Phi-3's scaled ``Qcur`` #3, its fused ``ffn_up``, a
neighbouring ``Qcur``) is off by O(1). The mapped point set is asserted, so a dropped entry
fails too. Then bisect: an identical model is clean, and a weight changed in the GGUF is
named at its point and layer.

Phi-3's GGUF is converted from a copy of the tiny model's folder under a neutral name:
aprlib writes the folder's name as ``general.name``, and llama.cpp's vocabulary loader,
for a name holding "phi3" or "phi-3", looks up ``</s>``, ``<unk>``, ``<s>`` and
``<|endoftext|>`` with ``unordered_map::at``, which the tiny vocabulary lacks (the load
fails: "error loading model vocabulary: unordered_map::at").
"""

from __future__ import annotations

import math
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from aprlib import convert
from aprlib.forward import llamacpp
from aprlib.forward import llamacpp_points as lp
from aprlib.forward.model import capture_graph
from falsifiers.llamacpp_oracle import require_llama_cpp
from falsifiers.test_gguf_real_files_v1 import rewrite_gguf
from tests.family_checks import llama_cpp_bisect_json
from tests.test_llamacpp_capture import mapped_points, relative
from tests.test_llamacpp_gemma_points import nmse, reference

#: tiny matrices: torch's threads only contend (the MoE loop's small products most)
pytestmark = pytest.mark.usefixtures("one_torch_thread")

TOKENS = [3, 17, 42, 5, 88, 1, 60, 29, 11, 70, 2]
#: HF model type → GGUF arch
ARCHS = {"phi3": "phi3", "qwen3_moe": "qwen3moe"}
#: float32 rounding of two forwards (summation order, rope tables), relative to the
#: tensor's largest value (observed <= 1e-6); a wrong tensor is off by O(1)
RTOL = 1e-5
#: the same on the whole tensor (observed <= 6e-13)
NMSE = 1e-10
#: per layer, every point but these is placed: no llama.cpp graph names the scaled scores
NOT_IN_LLAMACPP = {"attn.scores", "attn.o_proj"}
#: phi3.cpp: q/k/v are views of the fused product (placed at post_bias), the residual
#: after attention is unnamed, the fused ffn_up is gate and up side by side
NOT_IN_PHI3 = {"attn.q.pre_bias", "attn.k.pre_bias", "attn.v.pre_bias", "resid.attn"}
NOT_IN_PHI3 |= {"mlp.gate", "mlp.up"}
#: (Qcur-0, Kcur-0, Vcur-0) as a run names them
CENSUS = {"phi3": (3, 2, 1), "qwen3moe": (3, 3, 2)}


@pytest.fixture(scope="module")
def made(tmp_path_factory: pytest.TempPathFactory, tiny_factory: Any) -> Any:
    """``made(model_type)`` → (HF folder, its F32 GGUF by aprlib, config), made once; the
    folder a copy of the tiny model's under a name llama.cpp reads as no Phi-3
    (the module docstring says why)."""
    cache: dict[str, tuple[Path, Path, Any]] = {}

    def make(model_type: str) -> tuple[Path, Path, Any]:
        if model_type not in cache:
            tiny = tiny_factory(model_type)
            root = tmp_path_factory.mktemp(f"points-{ARCHS[model_type]}")
            folder = Path(shutil.copytree(tiny.folder, root / "tiny"))
            convert(folder, root / "m.gguf")
            cache[model_type] = (folder, root / "m.gguf", tiny.model.config)
        return cache[model_type]

    return make


def expected_points(arch: str, config: Any) -> set[str]:
    """The points the map must place: every capture point of the model but those llama.cpp
    holds no tensor for."""
    missing = NOT_IN_LLAMACPP | (NOT_IN_PHI3 if arch == "phi3" else set())
    layers = config.num_hidden_layers
    moe = frozenset(range(layers)) if arch == "qwen3moe" else frozenset()
    graph = capture_graph(layers, qk_norm=arch == "qwen3moe", moe_layers=moe)
    return {p for p in graph if not p.startswith("layers.") or p.split(".", 2)[-1] not in missing}


@pytest.mark.parametrize("model_type", sorted(ARCHS))
def test_every_mapped_tensor_is_the_reference_point(made: Any, model_type: str) -> None:
    """Exactly the expected points placed, each the reference's value to float32 rounding
    (a MoE layer's router and mixture included: the same experts chosen per token)."""
    require_llama_cpp()
    arch = ARCHS[model_type]
    _, path, config = made(model_type)
    got, (run, absent, _ignored) = mapped_points(path, TOKENS)
    assert run.arch == arch and run.qkv_bias is False
    assert (run.census["Qcur-0"], run.census["Kcur-0"], run.census["Vcur-0"]) == CENSUS[arch]
    assert set(got) == expected_points(arch, config)
    ref = reference(path, TOKENS)
    assert set(absent) == set(ref) - set(got)
    bad = {}
    for point, value in got.items():
        error, whole = (
            relative(value.reshape(ref[point].shape), ref[point]),
            nmse(value, ref[point]),
        )
        if error > RTOL or whole > NMSE:
            bad[point] = (error, whole)
    assert not bad, f"{arch}: mapped llama.cpp tensors differ from the reference: {bad}"
    assert np.array_equal(run.logits, run.tensors["result_output"][0])


def test_the_phi3_neighbours_the_map_leaves_out_are_other_quantities(made: Any) -> None:
    """What a careless map would take: the fused ``wqkv`` is q, k and v side by side; the
    last ``Qcur`` (#3) is q after RoPE times 1/sqrt(head_dim), #2 is our ``attn.q.rope``;
    the fused ``ffn_up`` is our gate then our up (neither alone)."""
    require_llama_cpp()
    _, path, config = made("phi3")
    ref = reference(path, TOKENS)
    names = ["wqkv-{layer}", "Qcur-{layer}", "ffn_up-{layer}"]
    run = llamacpp.activations(path, TOKENS, names=names)
    point = "layers.1."
    wqkv = run.tensors["wqkv-1"][0]
    parts = [ref[f"{point}attn.{p}.post_bias"].reshape(len(TOKENS), -1) for p in "qkv"]
    assert relative(wqkv, np.concatenate(parts, axis=-1)) <= RTOL
    rope = ref[point + "attn.q.rope"]
    qcur = [a.reshape(rope.shape) for a in run.tensors["Qcur-1"]]
    assert len(qcur) == 3
    assert relative(qcur[0], rope) > 0.1  # before RoPE
    assert relative(qcur[1], rope) <= RTOL
    head_dim = config.hidden_size // config.num_attention_heads
    assert relative(qcur[2], rope) > 0.5  # the scaled query is not the point ...
    assert relative(qcur[2] * math.sqrt(head_dim), rope) <= RTOL  # ... but q / sqrt(d)
    up = run.tensors["ffn_up-1"][0]
    gate_up = np.concatenate([ref[point + "mlp.gate"], ref[point + "mlp.up"]], axis=-1)
    assert relative(up, gate_up) <= RTOL
    assert up.shape[-1] == 2 * config.intermediate_size


def test_the_map_data_for_phi3_and_qwen3moe() -> None:
    """The entries that differ from llama's and qwen3's, spelled out."""
    phi3 = {(e["name"], e.get("nth", 1)): e for e in lp.point_map_data("phi3")["points"]}
    assert phi3[("Qcur-{layer}", 1)]["point"] == "layers.{layer}.attn.q.post_bias"
    assert phi3[("Qcur-{layer}", 1)]["layout"] == lp.HEADS
    assert phi3[("Qcur-{layer}", 2)]["point"] == "layers.{layer}.attn.q.rope"
    assert ("Qcur-{layer}", 3) not in phi3  # the scaled query
    assert phi3[("Vcur-{layer}", 1)]["point"] == "layers.{layer}.attn.v.post_bias"
    for name in ("wqkv-{layer}", "ffn_up-{layer}", "ffn_gate-{layer}", "ffn_inp-{layer}"):
        assert (name, 1) not in phi3
    assert phi3[("ffn_swiglu-{layer}", 1)]["point"] == "layers.{layer}.mlp.swiglu"
    assert lp.qkv_bias_from_census({"Qcur-0": 3, "Kcur-0": 2, "Vcur-0": 1}, "phi3") is False
    with pytest.raises(ValueError, match="pass a map"):
        lp.qkv_bias_from_census({"Qcur-0": 3, "Kcur-0": 3, "Vcur-0": 2}, "phi3")
    moe = {(e["name"], e.get("nth", 1)): e for e in lp.point_map_data("qwen3moe")["points"]}
    assert moe[("ffn_moe_logits-{layer}", 1)]["point"] == "layers.{layer}.mlp.router"
    assert moe[("ffn_moe_logits-{layer}", 1)]["layout"] == "ne[experts, tokens]"
    assert moe[("ffn_moe_out-{layer}", 1)]["point"] == "layers.{layer}.mlp.down"
    assert moe[("Qcur_normed-{layer}", 1)]["point"] == "layers.{layer}.attn.q.norm"
    assert moe[("Qcur-{layer}", 3)]["point"] == "layers.{layer}.attn.q.rope"
    assert not {n for n, _ in moe} & {"ffn_gate-{layer}", "ffn_up-{layer}", "ffn_out-{layer}"}
    assert lp.qkv_bias_from_census({"Qcur-0": 3, "Kcur-0": 3, "Vcur-0": 2}, "qwen3moe") is False
    assert {"ffn_moe_logits-{layer}", "ffn_moe_out-{layer}"} <= set(lp.engine_names())


def bisect_json(folder: Path, gguf: Path, capsys: Any) -> tuple[int, dict[str, Any]]:
    return llama_cpp_bisect_json(folder, gguf, TOKENS, capsys)


@pytest.mark.parametrize("model_type", sorted(ARCHS))
def test_bisect_through_llama_cpp_finds_an_identical_model_clean(
    made: Any, model_type: str, capsys: Any
) -> None:
    require_llama_cpp()
    folder, path, _ = made(model_type)
    code, report = bisect_json(folder, path, capsys)
    assert code == 0, report["findings"]
    assert report["findings"] == []


Change = Callable[[np.ndarray], np.ndarray]


def changed(name: str, change: Change) -> Any:
    """A ``rewrite_gguf`` tensor function: ``name``'s stored values through ``change``."""

    def rewrite(tensor: str, data: Any, kind: Any) -> tuple[Any, Any]:
        if tensor == name:
            return np.ascontiguousarray(change(np.asarray(data, dtype=np.float32))), kind
        return data, kind

    return rewrite


def times(factor: float) -> Change:
    return lambda data: data * np.float32(factor)


def halves_swapped(data: np.ndarray) -> np.ndarray:
    """A fused gate/up weight read up then gate (rows: ``[2 x intermediate, hidden]``)."""
    half = data.shape[0] // 2
    return np.concatenate([data[half:], data[:half]])


def rows_times(start: int, stop: int, factor: float) -> Change:
    """Rows ``start:stop`` of a weight scaled: one part of a fused projection."""

    def change(data: np.ndarray) -> np.ndarray:
        out = data.copy()
        out[start:stop] *= np.float32(factor)
        return out

    return change


def one_expert_times(expert: int, factor: float) -> Change:
    """One expert's slice of a stacked ``*_exps`` weight (``[experts, rows, cols]``) scaled."""

    def change(data: np.ndarray) -> np.ndarray:
        out = data.copy()
        out[expert] *= np.float32(factor)
        return out

    return change


#: (model type, GGUF tensor, its change, the point bisect must name first); a point
#: llama.cpp has no tensor for (phi3's pre_bias, gate) is named by the weights check,
#: which runs both files on the reference; K_ROWS: k's rows of the tiny phi3's fused
#: q/k/v weight (q: 4 heads x 16 rows, then k: 2 x 16, then v)
K_ROWS = (64, 96)
DEFECTS = [
    ("phi3", "blk.0.attn_qkv.weight", rows_times(*K_ROWS, 1.5), "layers.0.attn.k.pre_bias"),
    ("phi3", "blk.1.ffn_down.weight", times(1.5), "layers.1.mlp.down"),
    ("phi3", "blk.1.ffn_up.weight", halves_swapped, "layers.1.mlp.gate"),
    ("qwen3_moe", "blk.1.ffn_gate_inp.weight", times(3.0), "layers.1.mlp.router"),
    ("qwen3_moe", "blk.1.ffn_down_exps.weight", one_expert_times(2, 1.5), "layers.1.mlp.down"),
]


@pytest.mark.parametrize(
    ("model_type", "tensor", "change", "point"), DEFECTS, ids=[d[1] for d in DEFECTS]
)
def test_bisect_through_llama_cpp_names_a_weight_changed_in_the_gguf(
    made: Any,
    tmp_path: Path,
    capsys: Any,
    model_type: str,
    tensor: str,
    change: Change,
    point: str,
) -> None:
    require_llama_cpp()
    folder, path, _ = made(model_type)
    bad = rewrite_gguf(path, tmp_path / "bad.gguf", tensor=changed(tensor, change))
    code, report = bisect_json(folder, bad, capsys)
    assert code == 1
    assert report["findings"][0].startswith(f"introduced by B's weights at {point}"), report[
        "findings"
    ]
