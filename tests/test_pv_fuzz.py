"""Hypothesis over contract structure: the new commands report, they never crash."""

from __future__ import annotations

import tempfile
from pathlib import Path

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from provable.contracts.model import load_contract
from provable.reports.audit import chain_findings
from provable.reports.chain import build_chain
from provable.reports.contract_diff import diff_contracts
from provable.reports.coverage import coverage_rows
from provable.reports.equations import equations_of, render_latex, render_text, to_latex
from provable.reports.graph import build_graph, render_dot, render_mermaid
from provable.reports.graph import render_text as graph_text

scalars = st.one_of(
    st.none(), st.booleans(), st.integers(-5, 5), st.floats(allow_nan=True), st.text(max_size=8)
)
values = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=6), inner, max_size=3)
    ),
    max_leaves=8,
)
names = st.sampled_from(["a", "b", "c", "FALSIFY-X-001", "FALSIFY-X-002", "p", ""])
obligation = st.fixed_dictionaries(
    {},
    optional={
        "type": values,
        "property": st.one_of(names, values),
        "equation": st.one_of(names, values),
        "equations": st.lists(names, max_size=3),
        "id": st.one_of(names, values),
        "tolerance": st.one_of(st.floats(allow_nan=True), st.text(max_size=5), values),
        "formal": values,
    },
)
falsifier = st.fixed_dictionaries(
    {"id": st.one_of(names, values)},
    optional={
        "rule": values,
        "prediction": values,
        "obligation": st.one_of(names, values),
        "obligations": st.lists(names, max_size=3),
        "hosts": values,
        "status": st.one_of(st.sampled_from(["DISCHARGED", "FALSIFIED", "PROPOSED"]), values),
    },
)
contract = st.fixed_dictionaries(
    {
        "metadata": st.fixed_dictionaries(
            {"id": st.just("fuzz-v1")},
            optional={
                "version": st.one_of(st.sampled_from(["1.0.0", "2.1.3"]), values),
                "depends_on": st.one_of(st.lists(names, max_size=3), values),
            },
        )
    },
    optional={
        "equations": st.one_of(st.dictionaries(names, values, max_size=3), values),
        "proof_obligations": st.one_of(st.lists(obligation, max_size=3), values),
        "falsification_tests": st.one_of(st.lists(falsifier, max_size=3), values),
    },
)


def load(data: dict, folder: Path, name: str):
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data, allow_unicode=True))
    return load_contract(path)


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(old=contract, new=contract)
def test_commands_survive_any_structure(old, new):
    with tempfile.TemporaryDirectory() as tmp:
        a = load(old, Path(tmp), "old")
        b = load(new, Path(tmp), "new")
        for c in (a, b):
            chain_findings(build_chain(c))
            eqs = equations_of(c)
            render_text(c, eqs)
            render_latex(c, eqs)
        coverage_rows([a, b], None)
        result = diff_contracts(a, b)
        result.render_text()
        result.render_json()
        graph = build_graph([a])
        graph_text(graph), render_dot(graph), render_mermaid(graph), graph.findings()


@given(st.text(max_size=40))
def test_to_latex_never_raises_and_balances_braces(text):
    out = to_latex(text)
    assert out.count("{") - out.count(r"\{") == out.count("}") - out.count(r"\}")
