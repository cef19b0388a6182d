"""llama.cpp's own graph tensors, captured by its eval callback, hold what the built-in map
says they hold.

The map (``aprlib.forward.llamacpp_points``) is checked against an independent forward:
each mapped tensor of an F32 GGUF of a tiny random model must equal the reference
forward's capture point (aprlib's ``Transformer`` on the same file) to float32 rounding,
for qwen2 (q/k/v biases, NEOX RoPE) and llama (no biases, pair-interleaved RoPE, an
``attn_out`` tensor). A map entry that names the wrong tensor or the wrong ``nth`` fails
here by the size of the signal, not by rounding.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from aprlib import convert
from aprlib.forward import llamacpp
from aprlib.forward import llamacpp_points as lp
from falsifiers.llamacpp_oracle import require_llama_cpp

TOKENS = [3, 1, 4, 1, 5, 9, 2, 6, 7, 0, 11, 42]
#: float32 rounding of two different forwards (summation order, rope's cos/sin), relative
#: to the tensor's largest value; a wrong tensor is off by O(1)
RTOL = 1e-5
#: llama.cpp's CPU matmul rounds its activations to the weight's type (F16: ~5e-4, BF16:
#: ~4e-3, Q8_0: 8-bit blocks) before the dot product; observed worst 9e-4, 7e-3, 3e-2
RTOL_WEIGHTS = {"F16": 3e-3, "BF16": 2e-2, "Q8_0": 8e-2}
NOT_IN_LLAMACPP = {"attn.scores"}  # kq is unscaled k·q over the cache's slots


@pytest.fixture(scope="module")
def gguf(tmp_path_factory: pytest.TempPathFactory, tiny_factory: Any) -> Any:
    made: dict[str, Path] = {}

    def make(arch: str) -> Path:
        if arch not in made:
            path = tmp_path_factory.mktemp(f"capture-{arch}") / f"{arch}.gguf"
            convert(tiny_factory(arch).safetensors, path)
            made[arch] = path
        return made[arch]

    return make


def reference_points(path: Path, tokens: list[int]) -> dict[str, np.ndarray]:
    """Every capture point of aprlib's float32 forward, in the dump's canonical layout."""
    import torch

    from aprlib.forward.model import Transformer

    model = Transformer.from_file(path)
    cfg = model.config
    got: dict[str, np.ndarray] = {}

    def hook(name: str, x: torch.Tensor) -> None:
        got[name] = x[0].float().numpy()  # batch dropped

    with torch.no_grad(), model.capture(hook):
        model(torch.tensor([tokens]))
    head_dim = cfg.attention_head_dim
    out = {}
    for name, value in got.items():
        if name.endswith((".q.rope", ".k.rope")):  # [H, T, D] -> [T, H, D]
            value = value.transpose(1, 0, 2)
        elif name.endswith(("pre_bias", "post_bias", "attn.out")):  # [T, H*D] -> [T, H, D]
            value = value.reshape(len(tokens), -1, head_dim)
        out[name] = np.ascontiguousarray(value)
    return out


def mapped_points(path: Path, tokens: list[int]) -> tuple[dict[str, np.ndarray], Any]:
    """llama.cpp's captures placed by the built-in map, canonical layout."""
    from aprlib.formats.io import open_model
    from aprlib.forward.dump import PointMap, apply_map

    run = llamacpp.activations(path, tokens)
    assert run.point_map is not None
    with open_model(path) as model:
        config = model.config
    points, scopes, absent, ignored = apply_map(
        run.tensors, PointMap.from_dict(run.point_map), config, len(tokens)
    )
    assert set(scopes.values()) == {"all"}
    return {k: v.numpy() for k, v in points.items()}, (run, absent, ignored)


def relative(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.max(np.abs(a - b)) / max(float(np.max(np.abs(b))), 1e-30))


@pytest.mark.parametrize("arch", ["qwen2", "llama"])
def test_every_mapped_tensor_is_the_reference_point(gguf: Any, arch: str) -> None:
    require_llama_cpp()
    path = gguf(arch)
    ref = reference_points(path, TOKENS)
    got, (run, absent, _ignored) = mapped_points(path, TOKENS)
    assert run.arch == arch
    assert run.qkv_bias is (arch == "qwen2")
    missing = {p.split(".", 2)[-1] if p.startswith("layers.") else p for p in absent}
    # what llama.cpp has no tensor for, and nothing else
    assert missing == NOT_IN_LLAMACPP | ({"attn.o_proj"} if arch == "qwen2" else set())
    errors = {point: relative(got[point], ref[point]) for point in got}
    bad = {p: e for p, e in errors.items() if not e <= RTOL}
    assert not bad, f"{arch}: mapped llama.cpp tensors differ from the reference: {bad}"
    # the logits the callback run returned are its result_output
    assert np.array_equal(run.logits, run.tensors["result_output"][0])


@pytest.mark.parametrize("dtype", sorted(RTOL_WEIGHTS))
def test_half_and_quantised_weights_map_alike(
    tmp_path: Path, tiny_factory: Any, dtype: str
) -> None:
    """The map does not depend on the weight type: every point placed, each within the
    rounding llama.cpp's matmul applies to its activations for that type."""
    require_llama_cpp()
    from aprlib import DType

    path = tmp_path / f"qwen2-{dtype}.gguf"
    convert(tiny_factory("qwen2").safetensors, path, dtype=DType[dtype])
    ref = reference_points(path, TOKENS)
    got, _ = mapped_points(path, TOKENS)
    assert len(got) == 37  # 17 per layer (no o_proj, no scores) + embed, final_norm, logits
    bad = {p: e for p in got if not (e := relative(got[p], ref[p])) <= RTOL_WEIGHTS[dtype]}
    assert not bad, f"{dtype}: {bad}"


@pytest.mark.parametrize("arch", ["qwen2", "llama"])
def test_llamacpp_converter_output_maps_alike(tmp_path: Path, tiny_factory: Any, arch: str) -> None:
    """A GGUF from llama.cpp's own convert_hf_to_gguf.py (F32) maps as ours does."""
    require_llama_cpp()
    from falsifiers.llamacpp_converter import convert_hf_to_gguf
    from falsifiers.test_gguf_real_files_v1 import PRE
    from falsifiers.test_tokenizer_fidelity_v1 import VOCAB, hf_folder_with_tokenizer

    tiny = tiny_factory(arch, vocab_size=VOCAB)  # the converter wants the tokenizer's size
    folder, _ = hf_folder_with_tokenizer(tiny, PRE[arch], tmp_path)
    path = convert_hf_to_gguf(folder, tmp_path / f"{arch}-llamacpp.gguf", PRE[arch], "f32")
    ref = reference_points(path, TOKENS)
    got, _ = mapped_points(path, TOKENS)
    assert len(got) == (37 if arch == "qwen2" else 39)
    bad = {p: e for p in got if not (e := relative(got[p], ref[p])) <= RTOL}
    assert not bad, f"{arch}: {bad}"


def test_a_planted_k_bias_shows_first_at_kcur_post_bias(
    gguf: Any, tmp_path: Path, tiny_factory: Any
) -> None:
    """The seeds' incident at capture level: layer 1's k bias ×10 in the GGUF; against the
    clean file's reference, llama.cpp's tensors agree up to ``Kcur-1`` #1 (pre_bias) and
    leave at ``Kcur-1`` #2 (post_bias), the point the map names."""
    require_llama_cpp()
    from aprlib import DType, model_from_arrays, write_model
    from aprlib.formats.io import open_model
    from aprlib.forward.model import capture_graph

    tiny = tiny_factory("qwen2")
    state = tiny.state()
    state["model.layers.1.self_attn.k_proj.bias"] = (
        state["model.layers.1.self_attn.k_proj.bias"] * 10
    )
    with open_model(tiny.safetensors) as model:
        config = model.config
    arrays = {n: (DType.F32, tuple(v.shape), v) for n, v in state.items()}
    planted = tmp_path / "planted.gguf"
    write_model(model_from_arrays(arrays, config), planted)
    ref = reference_points(gguf("qwen2"), TOKENS)
    got, _ = mapped_points(planted, TOKENS)
    order = [p for p in capture_graph(config.num_hidden_layers) if p in got]
    first = next(p for p in order if not relative(got[p], ref[p]) <= RTOL)
    assert first == "layers.1.attn.k.post_bias"
    assert relative(got[first], ref[first]) > 0.1


def test_llama_q_k_are_interleaved_in_llamacpp(gguf: Any) -> None:
    """Without undoing the GGUF permutation, llama's q/k differ from ours by O(1): the
    de-interleave is load-bearing, not cosmetic."""
    require_llama_cpp()
    path = gguf("llama")
    ref = reference_points(path, TOKENS)
    run = llamacpp.activations(path, TOKENS, names=["Qcur-{layer}", "Vcur-{layer}"], raw=True)
    assert run.deinterleaved == []
    rope = run.tensors["Qcur-1"][2]  # no bias: matmul, reshape, rope
    assert relative(rope, ref["layers.1.attn.q.rope"]) > 0.1
    v = run.tensors["Vcur-1"][1]  # V has no RoPE and no permutation
    assert relative(v, ref["layers.1.attn.v.post_bias"]) <= RTOL


def test_names_select_what_is_copied(gguf: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """Only the asked names are copied; the census still sees the whole graph."""
    require_llama_cpp()
    made: list[str] = []
    real = tempfile.mkdtemp

    def mkdtemp(*args: Any, **kwargs: Any) -> str:
        made.append(real(*args, **kwargs))
        return made[-1]

    monkeypatch.setattr(tempfile, "mkdtemp", mkdtemp)
    run = llamacpp.activations(gguf("qwen2"), TOKENS, names=["l_out-{layer}", "result_norm"])
    assert sorted(run.tensors) == ["l_out-0", "l_out-1", "result_norm"]
    assert run.census["Qcur-0"] == 4 and run.census["kqv_out-1"] == 1
    assert run.tensors["l_out-1"][0].shape == (len(TOKENS), 64)
    # the captures came through a spill file; its folder is gone (this run's: another
    # test's capture may hold one at the same moment), the arrays still read
    spills = [Path(m) for m in made if Path(m).name.startswith("apr-llamacpp-")]
    assert spills and not any(folder.exists() for folder in spills)
    assert np.isfinite(run.tensors["result_norm"][0]).all()


def test_plain_forward_has_no_callback(gguf: Any) -> None:
    require_llama_cpp()
    path = gguf("qwen2")
    plain = llamacpp.activations(path, TOKENS, plain=True)
    captured = llamacpp.activations(path, TOKENS)
    assert plain.tensors == {} and plain.census == {}
    # the callback splits the graph but computes the same thing
    assert np.array_equal(plain.logits, captured.logits)


def test_map_nth_rules() -> None:
    """The nth rules the capture test validates, spelled out: q/k RoPE is the last Qcur/Kcur
    (4th with a bias, 3rd without), post_bias the 2nd in both."""
    for bias, rope_nth, post_layout in ((True, 4, lp.FLAT_HEADS), (False, 3, lp.HEADS)):
        entries = {
            (e["name"], e.get("nth", 1)): e for e in lp.point_map_data("llama", bias)["points"]
        }
        assert entries[("Qcur-{layer}", rope_nth)]["point"] == "layers.{layer}.attn.q.rope"
        assert entries[("Kcur-{layer}", 2)]["point"] == "layers.{layer}.attn.k.post_bias"
        assert entries[("Kcur-{layer}", 2)]["layout"] == post_layout
    assert lp.qkv_bias_from_census({"Qcur-0": 4, "Kcur-0": 4, "Vcur-0": 3}) is True
    with pytest.raises(ValueError, match="pass a map"):
        lp.qkv_bias_from_census({"Qcur-0": 4, "Kcur-0": 3, "Vcur-0": 3})
    with pytest.raises(ValueError, match="no built-in"):
        lp.point_map_data("phi2")


def test_a_wrong_nth_is_caught(gguf: Any) -> None:
    """The comparison can tell neighbouring tensors apart: a map that takes the k matmul
    (nth 1) for the biased k fails by far more than rounding."""
    require_llama_cpp()
    from aprlib.formats.io import open_model
    from aprlib.forward.dump import PointMap, apply_map

    path = gguf("qwen2")
    ref = reference_points(path, TOKENS)
    run = llamacpp.activations(path, TOKENS, names=["Kcur-{layer}"])
    blinded = {
        "points": [
            {"name": "Kcur-1", "point": "layers.1.attn.k.post_bias", "layout": lp.FLAT_HEADS}
        ]
    }
    with open_model(path) as model:
        points = apply_map(run.tensors, PointMap.from_dict(blinded), model.config, len(TOKENS))[0]
    point = "layers.1.attn.k.post_bias"
    assert relative(points[point].numpy(), ref[point]) > 1e-2


@pytest.mark.parametrize("arch", ["qwen2", "llama"])
def test_raw_captures_and_point_map_for_agree(gguf: Any, arch: str) -> None:
    """What bisect's llama.cpp side uses: raw captures and the map chosen from the config
    place the same tensors as the run's own census-chosen map."""
    require_llama_cpp()
    from aprlib.formats.io import open_model

    path = gguf(arch)
    with open_model(path) as model:
        config = model.config
    assert lp.point_map_for(config) == llamacpp.activations(path, TOKENS).point_map
    raw = llamacpp.llamacpp_activations(path, TOKENS)
    assert raw["Qcur-1"][-1].shape == (len(TOKENS), 4, 16)
