"""Falsifiers of engine-bisect-v1: bisect names the first point where *an engine* (either
side, an outside one included) leaves the reference on its own weights.

Each check takes the piece it attacks as an argument where one can be swapped (the rule's
plan, the config comparison, the point map, the capture), so that
``tests/test_engine_bisect_falsifiers_catch_defects.py`` can hand it the defect it exists
to catch — the old one-sided floor, an ``--expect`` ignored, a map that drops a point, a
callback that copies the wrong tensor — and watch it fail.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F

from aprlib import DType, Ops, Side, Transformer, bisect, model_from_arrays, open_model, write_model

TOKENS = [3, 1, 4, 1, 5, 9, 2, 6, 5, 3, 5, 8]


# --- planted engine bugs, one per family, as Ops backends -------------------------------------


class KvHeadsModulo(Ops):
    """GQA heads mapped h % n_kv instead of h // (n_heads / n_kv)."""

    def attention(self, q, k, v):
        rep = q.shape[1] // k.shape[1]
        return F.scaled_dot_product_attention(
            q, k.repeat(1, rep, 1, 1), v.repeat(1, rep, 1, 1), is_causal=True
        )


class GateUpSwapped(Ops):
    def swiglu(self, gate, up):
        return F.silu(up) * gate


class BiasTwice(Ops):
    """The seeds' incident: a q/k/v bias fused into the GEMM and added once more."""

    def add_bias(self, y, bias):
        return y + 2 * bias.to(y.dtype)


class NormOnePlusW(Ops):
    """RMSNorm multiplying by (1 + w): Gemma's convention applied to a Llama."""

    def rms_norm(self, x, weight, eps):
        return super().rms_norm(x, weight + 1, eps)


PLANTED: dict[str, tuple[type[Ops], str]] = {
    "gqa head mapping": (KvHeadsModulo, "layers.0.attn.out"),
    "gate/up swapped": (GateUpSwapped, "layers.0.mlp.swiglu"),
    "q/k/v bias twice": (BiasTwice, "layers.0.attn.q.post_bias"),
    "rmsnorm (1+w)": (NormOnePlusW, "layers.0.attn_norm"),
}


def on(net: Transformer, ops: Ops) -> Transformer:
    """The same weights (shared) on another backend."""
    other = Transformer(net.config, ops)
    other.load_state_dict(net.state_dict(), strict=True, assign=True)
    return other.eval()


def first_finding(report: Any) -> str | None:
    findings = report.findings()
    return findings[0] if findings else None


# --- FALSIFY-EBIS-001: either side is judged against a floor it did not make --------------------


def check_either_side_is_named(
    path: Path, bug: str, run_bisect: Callable[..., Any] = bisect
) -> dict[str, Any]:
    """The planted backend on A, then on B, the reference on the other side: each time the
    broken side is named at the planted point; the clean pair is clean."""
    ops_class, point = PLANTED[bug]
    net = Transformer.from_file(path)
    broken = on(net, ops_class())
    seen = {}
    with torch.no_grad():
        clean = run_bisect(
            Side("A", net, weights="w"), Side("B", on(net, Ops()), weights="w"), TOKENS
        )
        assert clean.clean, f"the clean pair bisected {clean.findings()}"
        for side, (a, b) in {"A": (broken, net), "B": (net, broken)}.items():
            report = run_bisect(Side("A", a, weights="w"), Side("B", b, weights="w"), TOKENS)
            seen[side] = first_finding(report)
            assert seen[side] == f"introduced in {side}'s engine at {point}", (
                f"planted {bug} on {side}: bisect said {seen[side] or 'CLEAN'}"
            )
    return seen


@pytest.mark.falsifies("FALSIFY-EBIS-001")
@pytest.mark.parametrize("bug", sorted(PLANTED))
def test_a_planted_engine_bug_is_named_on_either_side(bug, tiny_factory, evidence):
    path = tiny_factory("qwen2", tied=False).safetensors
    evidence.record(bug=bug, **check_either_side_is_named(path, bug))


# --- FALSIFY-EBIS-002: expected rounding sets the floor; a real defect still shows -------------


def rounded_copy(src: Path, dst: Path, dtype: str, edit: Callable | None = None) -> Path:
    """``src`` converted by ``apr convert --dtype`` (then edited, kept in float32)."""
    from aprlib import convert

    convert(src, dst, dtype=DType[dtype.upper()])
    if edit is None:
        return dst
    with open_model(dst) as m:
        arrays = {t.name: (DType.F32, t.shape, t.to_float32().copy()) for t in m}
        cfg = m.config
    edit(arrays)
    edited = dst.with_name(f"edited-{dst.stem}.apr")
    write_model(model_from_arrays(arrays, cfg), edited)
    return edited


def k_bias_times_ten(arrays: dict) -> None:
    name = "model.layers.1.self_attn.k_proj.bias"
    d, s, v = arrays[name]
    arrays[name] = (d, s, v * 10)


def check_expected_rounding(
    path: Path, folder: Path, dtype: str, run_bisect: Callable[..., Any] = bisect
) -> dict[str, Any]:
    """A faithful conversion to ``dtype`` bisects CLEAN with ``expect=dtype``; the same
    conversion with a 10x k bias in layer 1 is named at that bias."""
    suffix = "gguf" if dtype in ("q8_0", "q4_k") else "apr"
    faithful = rounded_copy(path, folder / f"faithful.{suffix}", dtype)
    broken = rounded_copy(path, folder / f"broken.{suffix}", dtype, k_bias_times_ten)
    a = Side("A", Transformer.from_file(path), weights=str(path))
    out = {}
    with torch.no_grad():
        for name, other in (("faithful", faithful), ("broken", broken)):
            b = Side("B", Transformer.from_file(other), weights=str(other), expect=dtype)
            out[name] = first_finding(run_bisect(a, b, TOKENS))
    assert out["faithful"] is None, f"a faithful {dtype} conversion bisected {out['faithful']}"
    want = "introduced by B's weights at layers.1.attn.k.post_bias"
    assert out["broken"] == want, f"a 10x k bias in {dtype} bisected {out['broken']}"
    return out


@pytest.mark.falsifies("FALSIFY-EBIS-002")
@pytest.mark.parametrize("dtype", ["bf16", "f16", "q8_0", "q4_k"])
def test_expected_rounding_is_clean_and_a_defect_is_not(dtype, tiny_factory, tmp_path, evidence):
    # Q4_K's blocks are 256 wide: a model whose rows are whole blocks
    shape = {"hidden_size": 256, "intermediate_size": 512} if dtype == "q4_k" else {}
    path = tiny_factory("qwen2", tied=False, **shape).safetensors
    evidence.record(dtype=dtype, **check_expected_rounding(path, tmp_path, dtype))


# --- FALSIFY-EBIS-003: a config difference is named before any op ------------------------------


def check_config_named_first(
    path: Path, folder: Path, field: str, value: Any, run_bisect: Callable[..., Any] = bisect
) -> str:
    with open_model(path) as m:
        arrays = {t.name: (DType.F32, t.shape, t.to_float32().copy()) for t in m}
        cfg = m.config
    other = folder / f"{field}.apr"
    write_model(model_from_arrays(arrays, dataclasses.replace(cfg, **{field: value})), other)
    a = Side("A", Transformer.from_file(path), weights=str(path))
    b = Side("B", Transformer.from_file(other), weights=str(other))
    with torch.no_grad():
        report = run_bisect(a, b, TOKENS)
    note = report.config_note() or ""
    assert note.startswith(f"configs differ: {field} "), f"no config named: {note!r}"
    assert "follows from it" in note and report.findings(), note
    return note


@pytest.mark.falsifies("FALSIFY-EBIS-003")
@pytest.mark.parametrize(("field", "value"), [("rope_theta", 1e6), ("rms_norm_eps", 0.25)])
def test_a_config_difference_is_named_before_any_op(field, value, tiny_factory, tmp_path, evidence):
    path = tiny_factory("qwen2", tied=False).safetensors
    evidence.record(note=check_config_named_first(path, tmp_path, field, value))


# --- FALSIFY-EBIS-006: a patched module inside a transformers model is named ---------------------


def _k_bias_twice(module: torch.nn.Module) -> None:
    plain = module.forward

    def forward(x):
        return plain(x) + module.bias

    module.forward = forward


def _gelu_for_silu(mlp: torch.nn.Module) -> None:
    mlp.act_fn = torch.nn.GELU(approximate="tanh")


#: a patch to a module of a transformers Qwen2 -> the capture point it produces
PATCHES: dict[str, tuple[Callable[[Any], None], str]] = {
    "k_proj adds its bias twice (layer 1)": (
        lambda model: _k_bias_twice(model.model.layers[1].self_attn.k_proj),
        "layers.1.attn.k.post_bias",
    ),
    "mlp activation GELU for SiLU (layer 0)": (
        lambda model: _gelu_for_silu(model.model.layers[0].mlp),
        "layers.0.mlp.swiglu",
    ),
}


def check_patched_module_is_named(
    model: torch.nn.Module, patch: str, run_bisect_module: Callable[..., Any] | None = None
) -> str | None:
    """bisect_module on the stock model is CLEAN; with one module patched, the first
    finding is that module's capture point, introduced in the transformers side."""
    import copy

    from aprlib import bisect_module

    run = run_bisect_module or bisect_module
    stock = run(copy.deepcopy(model), TOKENS)
    assert stock.clean, f"the stock transformers model bisected {stock.findings()}"
    patched = copy.deepcopy(model)
    apply, point = PATCHES[patch]
    apply(patched)
    found = first_finding(run(patched, TOKENS))
    assert found == f"introduced in B's engine at {point}", f"{patch}: bisect said {found}"
    return found


@pytest.mark.falsifies("FALSIFY-EBIS-006")
@pytest.mark.parametrize("patch", sorted(PATCHES))
def test_a_patched_transformers_module_is_named(patch, tiny_factory, evidence):
    model = tiny_factory("qwen2", tied=False).model
    evidence.record(patch=patch, finding=check_patched_module_is_named(model, patch))


# --- FALSIFY-EBIS-004: an outside engine's dump is judged like a backend -------------------------


def check_dump_names_the_planted_bug(
    model: Path,
    folder: Path,
    bug: str,
    map_text: Callable[[], str] | None = None,
    dump_is: str = "B",
) -> dict[str, Any]:
    """An independent numpy engine writes its activations under llama.cpp-style names, in
    GGML ``ne[]`` and transposed layouts, placed by a ``--map``; ``apr bisect``'s sides read
    it. Clean: CLEAN with the points the map has no name for listed absent. With ``bug``
    planted: introduced in the dump's side (``dump_is``, A or B) at the bug's point."""
    from aprlib.forward.dump import PointMap
    from aprlib.forward.sides import dump_side, file_side
    from falsifiers import numpy_engine as ne

    engine = ne.NumpyModel.load(model)
    found: dict[str, Any] = {}
    for label, planted in (("clean", None), ("planted", bug)):
        acts = ne.forward(engine, TOKENS, planted)
        dump, map_path = ne.write_engine_names(
            folder / f"{label}.safetensors", TOKENS, acts, engine.layers
        )
        if map_text is not None:
            map_path.write_text(map_text())
        reference = file_side(model)
        side, held = dump_side(reference, dump, PointMap.load(map_path))
        pair = (reference, side) if dump_is == "B" else (side, reference)
        with torch.no_grad():
            report = bisect(*pair, held.tokens)
        found[label] = first_finding(report)
        found[f"{label}_absent"] = len(held.absent)
    assert found["clean"] is None, f"the clean engine's dump bisected {found['clean']}"
    assert found["clean_absent"] > 0, "the engine-named dump is partial: its gaps are listed"
    want = f"introduced in {dump_is}'s engine at {ne.EXPECTED[bug]}"
    assert found["planted"] == want, f"planted {bug} in {dump_is}: bisect said {found['planted']}"
    return found


def _engine_bugs() -> list[str]:
    from falsifiers import numpy_engine as ne

    return sorted(ne.BUGS)


@pytest.mark.falsifies("FALSIFY-EBIS-004")
@pytest.mark.parametrize("dump_is", ["A", "B"])
@pytest.mark.parametrize("bug", _engine_bugs())
def test_an_outside_engines_dump_names_its_planted_bug(bug, dump_is, tmp_path, evidence):
    from falsifiers import numpy_engine as ne

    model = ne.write_tiny(tmp_path / "model", "qwen2")
    found = check_dump_names_the_planted_bug(model, tmp_path, bug, dump_is=dump_is)
    evidence.record(bug=bug, dump_is=dump_is, **found)


# --- FALSIFY-EBIS-005: llama.cpp's own graph, op by op -------------------------------------------


def _llamacpp_bisect(reference: Path, gguf: Path, expect: str | None = None) -> Any:
    from aprlib.forward.sides import file_side, llamacpp_side

    side_a = file_side(reference)
    side_b = llamacpp_side(gguf, TOKENS, expect)
    with torch.no_grad():
        return bisect(side_a, side_b, TOKENS)


def check_llamacpp_names_a_planted_bias(reference: Path, folder: Path) -> dict[str, Any]:
    """The incident: a GGUF whose layer-1 k bias is 10x, run by llama.cpp, against the HF
    folder. The clean GGUF: CLEAN; the planted one: introduced by B's weights at llama.cpp's
    Kcur-1 after the bias add, llama.cpp's engine itself clean, the tensor named."""
    from aprlib import convert

    clean = folder / "clean.gguf"
    convert(reference, clean)
    planted = folder / "planted.gguf"
    with open_model(clean) as m:
        arrays = {t.name: (DType.F32, t.shape, t.to_float32().copy()) for t in m}
        cfg = m.config
    k_bias_times_ten(arrays)
    write_model(model_from_arrays(arrays, cfg), planted)
    found = {}
    for label, gguf in (("clean", clean), ("planted", planted)):
        report = _llamacpp_bisect(reference, gguf)
        found[label] = report.findings()
        found[f"{label}_weights_differ"] = report.weights_differ
    assert found["clean"] == [], f"llama.cpp on the clean GGUF bisected {found['clean']}"
    want = "introduced by B's weights at layers.1.attn.k.post_bias (Kcur-1#2)"
    assert found["planted"] == [want], f"the planted k bias bisected {found['planted']}"
    assert found["planted_weights_differ"] == ["model.layers.1.self_attn.k_proj.bias"]
    return found


@pytest.mark.falsifies("FALSIFY-EBIS-005")
def test_llamacpp_names_a_planted_bias_at_kcur(tiny_factory, tmp_path, evidence):
    from falsifiers.llamacpp_oracle import require_llama_cpp

    require_llama_cpp()
    path = tiny_factory("qwen2", tied=False).safetensors
    evidence.record(**check_llamacpp_names_a_planted_bias(path, tmp_path))


def _gguf_as_users_have_it(tiny: Any, kind: str, work: Path) -> Path:
    """A GGUF of ``tiny`` as users get one: ours (``apr convert``), llama.cpp's converter,
    or llama.cpp's own quantiser (Q4_K_M)."""
    from aprlib import convert
    from aprlib.forward import llamacpp

    if kind == "llama.cpp converter f32":
        from falsifiers.llamacpp_converter import convert_hf_to_gguf
        from falsifiers.test_tokenizer_fidelity_v1 import hf_folder_with_tokenizer

        folder, _ = hf_folder_with_tokenizer(tiny, "qwen2", work)
        return convert_hf_to_gguf(folder, work / "theirs.gguf", "qwen2", "f32")
    if kind == "llama.cpp quantiser q4_k_m":
        convert(tiny.safetensors, work / "f32.gguf")
        rc = llamacpp.model_quantize(work / "f32.gguf", work / "q4_k_m.gguf", "Q4_K_M", nthread=1)
        assert rc == 0, f"llama_model_quantize returned {rc}"
        return work / "q4_k_m.gguf"
    dtype = kind.removeprefix("ours ")
    out = work / f"ours_{dtype}.gguf"
    convert(tiny.safetensors, out, dtype=DType[dtype.upper()])
    return out


#: GGUF kind -> the --expect it is run with
CLEAN_GGUFS = {
    "ours f32": "f32",
    "llama.cpp converter f32": "f32",
    "ours f16": "f16",
    "ours bf16": "bf16",
    "ours q8_0": "q8_0",
    "llama.cpp quantiser q4_k_m": "q4_k",
}


def check_clean_gguf(tiny: Any, kind: str, work: Path) -> list[str]:
    """llama.cpp on a faithful GGUF, with the --expect of its dtype: nothing introduced."""
    work.mkdir(parents=True, exist_ok=True)
    gguf = _gguf_as_users_have_it(tiny, kind, work)
    findings = _llamacpp_bisect(tiny.safetensors, gguf, CLEAN_GGUFS[kind]).findings()
    assert findings == [], f"llama.cpp on {kind} with --expect {CLEAN_GGUFS[kind]}: {findings}"
    return findings


@pytest.mark.falsifies("FALSIFY-EBIS-005")
@pytest.mark.parametrize("kind", list(CLEAN_GGUFS))
def test_llamacpp_on_a_faithful_gguf_introduces_nothing(kind, tiny_factory, tmp_path, evidence):
    from falsifiers.llamacpp_oracle import require_llama_cpp

    require_llama_cpp()
    # Q4_K's blocks are 256 wide: rows of whole blocks
    shape = {"hidden_size": 256, "intermediate_size": 512} if "q4" in kind else {}
    if "converter" in kind:  # llama.cpp's converter needs a tokenizer of the model's vocab
        from falsifiers.test_tokenizer_fidelity_v1 import VOCAB

        shape = {"vocab_size": VOCAB}
    tiny = tiny_factory("qwen2", tied=False, **shape)
    evidence.record(kind=kind, findings=check_clean_gguf(tiny, kind, tmp_path))
