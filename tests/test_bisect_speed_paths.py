"""bisect's fast paths keep its numbers and verdicts: each checked against a plain float64
recomputation (numpy, or a model whose weights are float64 outright), never against itself."""

from __future__ import annotations

import math
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

import aprlib.forward.bisect as bisect_module
import aprlib.forward.model as model_module
from aprlib import Ops, Transformer
from aprlib.forward.bisect import BisectError, Tolerance, bisect, twin
from aprlib.forward.model import capture_graph, widened_rows

ROOT = Path(__file__).resolve().parents[1]
TOKENS = [3, 1, 4, 1, 5, 9, 2, 6, 5, 3, 5]


# --- one point's numbers ---------------------------------------------------------------------


def plain_rmse(x: np.ndarray, y: np.ndarray) -> float:
    """RMSE in float64 over the positions where the difference is finite."""
    with np.errstate(invalid="ignore", over="ignore"):
        d = x.astype(np.float64) - y.astype(np.float64)
        keep = np.isfinite(d)
        return math.sqrt(float(np.sum(d[keep] ** 2)) / keep.sum()) if keep.any() else 0.0


def same(got: float, want: float) -> bool:
    return got == want or math.isclose(got, want, rel_tol=1e-12, abs_tol=1e-300)


SPECIAL = st.sampled_from([math.nan, math.inf, -math.inf, 1e200])  # 1e200: squares overflow
SPECIAL32 = st.sampled_from([math.nan, math.inf, -math.inf])


@st.composite
def point(draw):
    """A, B and ref64 at one capture point, with NaN/Inf/huge values anywhere."""
    n = draw(st.integers(1, 40))
    seed = draw(st.integers(0, 2**16))
    gen = torch.Generator().manual_seed(seed)
    ref = torch.randn(n, generator=gen, dtype=torch.float64)
    a = (ref + 1e-6 * torch.randn(n, generator=gen, dtype=torch.float64)).float()
    kind = draw(st.sampled_from(["equal", "close", "far", "bfloat16"]))
    b = {
        "equal": a.clone(),
        "close": (ref + 1e-6 * torch.randn(n, generator=gen, dtype=torch.float64)).float(),
        "far": (ref * 10).float(),
        "bfloat16": ref.to(torch.bfloat16),
    }[kind]
    for x in (a, b, ref):
        for i in draw(st.lists(st.integers(0, n - 1), max_size=3)):
            x[i] = draw(SPECIAL if x.dtype == torch.float64 else SPECIAL32)
    if kind == "equal" and draw(st.booleans()):
        b = a.clone()  # the specials too: an Inf on both sides at the same place
    return a, b, ref, draw(st.integers(1, 16))


@settings(max_examples=150, deadline=None)
@given(point())
def test_point_numbers_equal_a_plain_float64_computation(case):
    a, b, ref, chunk = case
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(bisect_module, "RMSE_CHUNK", chunk)
        got = bisect_module._errors(a.reshape(1, -1), b.reshape(1, -1), ref.reshape(1, -1))
    an, bn, rn = a.numpy(), b.float().numpy(), ref.numpy()
    assert same(got.rmse_a, plain_rmse(an, rn))
    assert same(got.rmse_b, plain_rmse(bn, rn))
    assert same(got.rmse_ab, plain_rmse(an, bn))
    assert same(got.ref_rms, plain_rmse(rn, np.zeros_like(rn)))
    assert got.nonfinite_a == int((~np.isfinite(an)).sum())
    assert got.nonfinite_b == int((~np.isfinite(bn)).sum())


# --- the float64 reference's weights -------------------------------------------------------


def test_widened_linear_equals_float64_weights_and_reuses_one_buffer(monkeypatch):
    gen = torch.Generator().manual_seed(7)
    x = torch.randn(1, 5, 24, generator=gen, dtype=torch.float64)
    weight, bias = torch.randn(37, 24, generator=gen), torch.randn(37, generator=gen)
    monkeypatch.setattr(model_module, "WIDEN_BYTES", 10 * 24 * 8)  # 10 rows: four blocks
    got = Ops().linear(x, weight, bias)
    want = F.linear(x, weight.double(), bias.double())
    torch.testing.assert_close(got, want, rtol=1e-13, atol=1e-13)
    # one buffer, faulted in once: every block of every call is written over the last
    pointers = {block.data_ptr() for block in widened_rows(weight, torch.float64)}
    pointers |= {block.data_ptr() for block in widened_rows(weight * 2, torch.float64)}
    assert len(pointers) == 1
    blocks = [block.clone() for block in widened_rows(weight, torch.float64)]
    assert torch.equal(torch.cat(blocks), weight.double())


# --- the whole bisect ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def three_layers(tmp_path_factory) -> Path:
    from conftest import build_tiny

    return build_tiny(tmp_path_factory.mktemp("speed"), num_hidden_layers=3).safetensors


def edited(net: Transformer, name: str, edit) -> Transformer:
    state = {k: v.clone() for k, v in net.state_dict().items()}
    state[name] = edit(state[name])
    other = Transformer(net.config)
    other.load_state_dict(state, strict=True, assign=True)
    return other.eval()


def captured(net: Transformer, tokens: list[int]) -> dict[str, np.ndarray]:
    out: dict[str, np.ndarray] = {}
    with torch.no_grad(), net.capture(lambda name, x: out.__setitem__(name, x.double().numpy())):
        net(torch.tensor([tokens]))
    return out


def blow_up_k_bias(w):
    return w * 10


def nan_in_down(w):
    w[0, 0] = math.nan
    return w


@pytest.mark.parametrize(
    ("weight", "edit", "introduced", "nonfinite"),
    [
        ("model.layers.1.self_attn.k_proj.bias", blow_up_k_bias, "layers.1.attn.k.post_bias", None),
        ("model.layers.2.mlp.down_proj.weight", nan_in_down, *["layers.2.mlp.down"] * 2),
    ],
)
def test_verdicts_equal_a_plain_recomputation(
    three_layers, monkeypatch, weight, edit, introduced, nonfinite
):
    """Every point's numbers, flag and role as the rule defines them, from whole forwards
    captured in memory and a model whose weights are float64 outright."""
    monkeypatch.setattr(model_module, "WIDEN_BYTES", 4096)  # many blocks per weight
    monkeypatch.setattr(bisect_module, "RMSE_CHUNK", 100)  # many chunks per point
    net_a = Transformer.from_file(three_layers)
    net_b = edited(net_a, weight, edit)
    report = bisect(net_a, net_b, TOKENS)

    xa, xb = captured(net_a, TOKENS), captured(net_b, TOKENS)
    xr = captured(twin(net_a, dtype="float64"), TOKENS)
    tol, diverged = Tolerance(), set()
    graph = capture_graph(net_a.config.num_hidden_layers)
    assert [p.name for p in report.points] == list(graph)
    for p in report.points:
        a, b, r = xa[p.name], xb[p.name], xr[p.name]
        rmse_a, rmse_b = plain_rmse(a, r), plain_rmse(b, r)
        bound = tol.m * rmse_a + tol.atol + tol.rtol * plain_rmse(r, np.zeros_like(r))
        bad = rmse_b > bound or (~np.isfinite(b)).sum() > (~np.isfinite(a)).sum()
        role = "agrees"
        if bad:
            diverged.add(p.name)
            role = "inherited" if any(i in diverged for i in graph[p.name]) else "introduced"
        assert (p.diverged, p.role) == (bad, role), p.name
        for got, want in ((p.rmse_a, rmse_a), (p.rmse_b, rmse_b), (p.bound, bound)):
            assert math.isclose(got, want, rel_tol=1e-6, abs_tol=1e-12), p.name
    assert [p.name for p in report.introduced] == [introduced]  # and nothing after it
    first_nonfinite = report.first_nonfinite
    assert (first_nonfinite.name if first_nonfinite else None) == nonfinite
    assert report.points[-1].role == "inherited"  # the logits inherit it


class SameArithmetic(Ops):
    """The reference arithmetic under another name: a backend bisect must judge (an exact
    ``Ops`` twin is the reference itself, its own floor, and runs no check)."""


def judged_twin(net: Transformer) -> Transformer:
    other = Transformer(net.config, SameArithmetic())
    other.load_state_dict(net.state_dict(), strict=True, assign=True)
    return other.eval()


def test_the_forwards_take_turns_on_the_cpu(three_layers, monkeypatch):
    """A, its float64 reference and B never compute at once (on two cores, three forwards
    that each use every core only contend; before, three threads ran at once)."""
    lock, active, peak = threading.Lock(), [0], [0]
    linear = Ops.linear

    def counted(self, x, weight, bias=None):
        with lock:
            active[0] += 1
            peak[0] = max(peak[0], active[0])
        try:
            time.sleep(0.002)  # long enough for a concurrent forward to show
            return linear(self, x, weight, bias)
        finally:
            with lock:
                active[0] -= 1

    monkeypatch.setattr(Ops, "linear", counted)
    net_a = Transformer.from_file(three_layers)
    report = bisect(net_a, judged_twin(net_a), TOKENS)
    assert report.clean and [c.title for c in report.checks] == ["B's engine"]
    assert peak[0] == 1


def test_one_transformer_as_both_sides_is_clean_not_hung(three_layers):
    """Two forwards of one module at once: hooks on it would fire in both (it hung)."""
    net = Transformer.from_file(three_layers)
    assert bisect(net, net, TOKENS).clean


def test_a_forward_out_of_step_is_refused(three_layers, monkeypatch):
    net_a = Transformer.from_file(three_layers)
    net_b = judged_twin(net_a)
    points = Transformer.points

    def skipping(self, *args, **kwargs):
        for name, x in points(self, *args, **kwargs):  # B loses one point
            if self is not net_b or not name.endswith("mlp.up"):
                yield name, x

    monkeypatch.setattr(Transformer, "points", skipping)
    with pytest.raises(BisectError, match=r"out of step at layers\.0\.mlp\.up"):
        bisect(net_a, net_b, TOKENS)


def test_building_a_transformer_does_not_import_dynamo():
    """The meta embedding's random init imported torch._dynamo: a second per `apr` command."""
    code = (
        "import sys, torch\n"
        "from aprlib import Transformer, qwen2_0_5b\n"
        "Transformer(qwen2_0_5b())\n"
        "print('torch._dynamo' in sys.modules)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "False"
