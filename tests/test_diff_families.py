"""apr diff and apr qa on the newer families' shapes: a mixture's experts (their swaps said
as a person would, their names folded like the layers), fused projections (parts named only
where the blocks are exactly the config's parts), and a GGUF llama.cpp refuses (a SKIP, not
an abort)."""

from __future__ import annotations

import importlib.util
from typing import Any

import numpy as np
import pytest

from aprlib import diff_models, model_from_arrays, open_model
from aprlib.cli.main import main as apr
from aprlib.compare import swaps
from aprlib.compare.classify import exchanged_blocks
from aprlib.compare.names import fold, number_runs

EXPERT = "model.layers.{}.mlp.experts.{}.{}_proj.weight"


def _diff(tiny: Any, edit: Any) -> Any:
    """``diff_models`` of the tiny model against a copy whose arrays ``edit`` changed."""
    with open_model(tiny.folder) as src:
        arrays = {t.name: (t.dtype, t.shape, t.to_float32()) for t in src}
        edit(arrays)
        return diff_models(src, model_from_arrays(arrays, src.config))


def _exchange(pairs: list[tuple[str, str]]) -> Any:
    def edit(arrays: dict[str, Any]) -> None:
        orig = dict(arrays)
        for x, y in pairs:
            arrays[x], arrays[y] = orig[y], orig[x]

    return edit


def _rows(name: str, fn: Any) -> Any:
    def edit(arrays: dict[str, Any]) -> None:
        dtype, shape, values = arrays[name]
        arrays[name] = (dtype, shape, np.ascontiguousarray(fn(values)))

    return edit


def _line(report: Any) -> str:
    return str(report.diagnosis["line"])


# --- swaps inside and between experts ------------------------------------------------------


def test_gate_and_up_exchanged_inside_one_expert_are_named_in_that_expert(tiny_factory):
    report = _diff(
        tiny_factory("qwen3_moe"),
        _exchange([(EXPERT.format(0, 2, "gate"), EXPERT.format(0, 2, "up"))]),
    )
    assert _line(report).startswith(
        "DIAGNOSIS: SWAPPED gate_proj <-> up_proj in expert 2 of layer 0:"
    )


def test_gate_and_up_exchanged_in_every_expert_is_one_phrase(tiny_factory):
    pairs = [(EXPERT.format(0, e, "gate"), EXPERT.format(0, e, "up")) for e in range(4)]
    report = _diff(tiny_factory("qwen3_moe"), _exchange(pairs))
    assert _line(report).startswith(
        "DIAGNOSIS: SWAPPED gate_proj <-> up_proj in every expert of layer 0:"
    ), _line(report)


def test_two_whole_experts_exchanged_are_one_phrase(tiny_factory):
    pairs = [(EXPERT.format(1, 2, p), EXPERT.format(1, 3, p)) for p in ("gate", "up", "down")]
    report = _diff(tiny_factory("qwen3_moe"), _exchange(pairs))
    assert _line(report).startswith("DIAGNOSIS: SWAPPED experts 2 <-> 3 in layer 1:"), _line(report)


def test_describe_sorts_experts_and_layers_by_number():
    moves = {}
    for e, f in ((10, 11), (2, 3)):
        x, y = EXPERT.format(0, e, "down"), EXPERT.format(0, f, "down")
        moves[x], moves[y] = y, x
    for layer in (10, 2):
        x, y = EXPERT.format(layer, 5, "gate"), EXPERT.format(layer, 5, "up")
        moves[x], moves[y] = y, x
    sizes = {(layer, e): 3 for layer in (0, 2, 10) for e in range(12)}
    assert swaps.describe(moves, {}, sizes) == [
        "experts 2 <-> 3 in layer 0 (down_proj)",
        "experts 10 <-> 11 in layer 0 (down_proj)",
        "gate_proj <-> up_proj in expert 5 of layers 2, 10",
    ]


def test_describe_without_expert_counts_knows_qwen3_moes_three_projections():
    moves = {}
    for p in ("gate", "up", "down"):
        x, y = EXPERT.format(1, 2, p), EXPERT.format(1, 3, p)
        moves[x], moves[y] = y, x
    x, y = EXPERT.format(0, 1, "gate"), EXPERT.format(0, 1, "up")
    moves[x], moves[y] = y, x
    assert swaps.describe(moves, {}) == [
        "gate_proj <-> up_proj in expert 1 of layer 0",
        "experts 2 <-> 3 in layer 1",
    ]


# --- fused parts: named only where the blocks are exactly the parts -------------------------


def test_blocks_are_named_parts_only_when_they_are_the_configs_parts():
    order = np.r_[np.arange(64), np.arange(96, 128), np.arange(64, 96)]  # q, v, k
    said = exchanged_blocks("model.layers.0.self_attn.qkv_proj.weight", order, (64, 32, 32))
    assert said == "fused parts in another order: B holds q, v, k where A holds q, k, v"
    merged = np.r_[np.arange(64, 128), np.arange(64)]  # k and v, then q: two blocks
    said = exchanged_blocks("model.layers.0.self_attn.qkv_proj.weight", merged, (64, 32, 32))
    assert said == "fused parts in another order: B holds k, v, q where A holds q, k, v"
    rolled = np.roll(np.arange(320), -10)  # gate_up rolled: not gate and up exchanged
    said = exchanged_blocks("model.layers.0.mlp.gate_up_proj.weight", rolled, (160, 160))
    assert said == "blocks of rows in another order: B holds A's rows 10-319, A's rows 0-9"
    halves = np.r_[np.arange(160, 320), np.arange(160)]
    assert exchanged_blocks("model.layers.0.mlp.gate_up_proj.weight", halves, ()) == (
        "blocks of rows in another order: B holds A's rows 160-319, A's rows 0-159"
    )  # no config, no part names


def test_phi3_gate_up_rolled_is_not_called_up_and_gate(tiny_factory):
    name = "model.layers.0.mlp.gate_up_proj.weight"
    report = _diff(tiny_factory("phi3"), _rows(name, lambda v: np.roll(v, -10, axis=0)))
    pair = next(p for p in report.pairs if p.name == name)
    assert pair.tag == "PERMUTED"
    assert "up, gate" not in pair.detail and pair.detail.startswith("blocks of rows"), pair.detail


def test_phi3_qkv_cut_elsewhere_than_its_parts_is_not_named_by_them(tiny_factory):
    name = "model.layers.0.self_attn.qkv_proj.weight"
    report = _diff(
        tiny_factory("phi3"), _rows(name, lambda v: np.concatenate([v[114:], v[100:114], v[:100]]))
    )
    pair = next(p for p in report.pairs if p.name == name)
    assert pair.detail.startswith("blocks of rows in another order"), pair.detail


def test_two_rows_exchanged_are_rows_reordered_not_blocks(tiny_factory):
    name = "model.embed_tokens.weight"
    report = _diff(tiny_factory("llama"), _rows(name, lambda v: v[[1, 0, *range(2, len(v))]]))
    pair = next(p for p in report.pairs if p.name == name)
    assert pair.tag == "PERMUTED"
    assert pair.detail == f"rows reordered: 2 of {pair.a['shape'][0]} rows moved", pair.detail


# --- the diagnosis line folds the experts --------------------------------------------------


def test_fold_folds_the_expert_index_like_the_layer():
    names = [
        EXPERT.format(layer, e, p)
        for layer in range(2)
        for e in range(128)
        for p in ("gate", "up", "down")
    ]
    said = fold(names, 2)
    assert said == "mlp.experts.{0..127}.{down,gate,up}_proj.weight in 2/2 layers"
    one = fold([EXPERT.format(0, 7, "up"), EXPERT.format(1, 7, "up")], 2)
    assert one == "mlp.experts.7.up_proj.weight in 2/2 layers"
    assert fold([EXPERT.format(0, e, "up") for e in (0, 1, 2, 3, 10)], 2) == (
        "mlp.experts.{0..3,10}.up_proj.weight in 1/2 layers"
    )
    assert number_runs([10, 2, 3, 0]) == ["0", "2", "3", "10"]


def test_the_diagnosis_line_does_not_grow_with_the_experts(tiny_factory):
    tiny = tiny_factory("qwen3_moe", num_experts=32, num_experts_per_tok=4)

    def double_experts(arrays: dict[str, Any]) -> None:
        for name, (dtype, shape, values) in list(arrays.items()):
            if ".experts." in name:
                arrays[name] = (dtype, shape, values * 2)

    line = _line(_diff(tiny, double_experts))
    assert "mlp.experts.{0..31}.{down,gate,up}_proj.weight in 2/2 layers" in line, line
    assert len(line) < 300, line


# --- apr qa on a file llama.cpp refuses ----------------------------------------------------

needs_llama_cpp = pytest.mark.skipif(
    importlib.util.find_spec("llama_cpp") is None, reason="llama-cpp-python not installed"
)


@needs_llama_cpp
@pytest.mark.parametrize(
    ("arch", "overrides", "note"),
    [
        ("qwen3_moe", {"mlp_only_layers": [1]}, "mlp_only_layers [1]"),
        ("gemma2", {}, "tie_word_embeddings false"),
    ],
)
def test_qa_skips_parity_on_a_file_llama_cpp_refuses(tiny_factory, capsys, arch, overrides, note):
    from aprlib.forward.qa import run_qa

    tiny = tiny_factory(arch, **overrides)
    gates = {g.name: g for g in run_qa(tiny.folder)}
    parity = gates["backend_parity"]
    assert parity.status == "SKIP", parity
    assert note in parity.detail and "will refuse" in parity.detail, parity.detail
    assert {"load", "logits", "round_trip"} <= set(gates)
    assert not [g for g in gates.values() if g.status == "FAIL"]
    capsys.readouterr()
    assert apr(["qa", str(tiny.folder)]) == 0  # as for any SKIP, not 2
    assert "backend_parity" in capsys.readouterr().out


@needs_llama_cpp
def test_qa_says_llama_cpps_own_message_where_no_note_explains_it(tiny_factory, monkeypatch):
    from aprlib.forward import logits
    from aprlib.forward.qa import run_qa

    def refuse(path: Any, tokens: Any, timeout: Any = None) -> Any:
        raise ValueError(f"Failed to load model from file: {path}")

    monkeypatch.setattr(logits, "llamacpp_logits", refuse)
    gates = {g.name: g for g in run_qa(tiny_factory("llama").folder)}
    parity = gates["backend_parity"]
    assert parity.status == "SKIP"
    assert "Failed to load model from file" in parity.detail, parity.detail
    assert parity.numbers["oracle_error"] == "ValueError"
