"""``pv equations``: a contract's equations as text and as LaTeX."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from provable.cli.main import main
from provable.reports.equations import to_latex

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path("/work/shared/compat/provable-contracts")


def test_text_lists_every_equation_of_a_real_contract(capsys):
    assert main(["equations", str(ROOT / "contracts" / "dtype-fidelity-v1.yaml")]) == 0
    out = capsys.readouterr().out
    for name in ("bf16:", "q8_0:", "q4_k:"):
        assert name in out
    assert "invariant: never decoded through float16" in out


def test_latex_escapes_names_and_maps_symbols(capsys):
    path = ROOT / "contracts" / "tensor-layout-v1.yaml"
    assert main(["equations", str(path), "--format", "latex"]) == 0
    out = capsys.readouterr().out
    assert r"\mathrm{logical\_shape}" in out and r"\label{eq:tensor-layout-v1:layout}" in out
    assert out.count(r"\begin{equation}") == out.count(r"\end{equation}") == 1
    # no bare underscore outside a subscript or an escape
    assert "logical_shape" not in out.replace(r"logical\_shape", "")


@pytest.mark.parametrize(
    ("formula", "latex"),
    [
        ("x ∈ ℝ^n, n ≥ 1", r"x \in \mathbb{R}^n, n \geq 1"),
        ("σ(x)_i = exp(x_i - max(x))", r"\sigma (x)_i = \exp (x_i - \max (x))"),
        ("a % b <= c & {d}", r"a \% b \leq c \& \{d\}"),
        ("never decoded", r"\mathrm{never}\ \mathrm{decoded}"),
    ],
)
def test_to_latex(formula, latex):
    assert to_latex(formula) == latex


def test_json_and_a_public_contract(capsys):
    softmax = SHARED / "softmax-kernel-v1.yaml"
    if not softmax.exists():
        pytest.skip("shared public contracts not present")
    assert main(["equations", str(softmax), "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["equations"][0]["name"] == "softmax"
    assert r"\sum" in doc["equations"][0]["latex"]


def test_usage_error(tmp_path):
    assert main(["equations", str(tmp_path / "none.yaml")]) == 2
