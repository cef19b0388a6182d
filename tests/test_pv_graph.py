"""``pv graph``: dependency order, cycles with their members, claims resting on refutations."""

from __future__ import annotations

import json
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from provable.cli.main import main
from provable.contracts.loading import load_contracts
from provable.reports.graph import _topological, build_graph, render_dot, render_mermaid

ROOT = Path(__file__).resolve().parents[1]

NODE = """\
metadata:
  id: {id}
  version: "1.0.0"
  status: {status}
  description: "node {id}"
  depends_on: [{deps}]
falsification_tests:
  - id: FALSIFY-{prefix}-001
    rule: r
    prediction: p
    status: {fstatus}
    {evidence}
"""


def write_node(folder: Path, cid: str, deps=(), status="PROPOSED") -> None:
    folder.mkdir(parents=True, exist_ok=True)
    fstatus = {"PROPOSED": "PROPOSED", "DISCHARGED": "DISCHARGED", "FALSIFIED": "FALSIFIED"}[status]
    evidence = ""
    if status != "PROPOSED":
        rel = f"evidence/{cid}/FALSIFY-{cid.upper()}-001.json"
        evidence = f"evidence: {rel}"
        (folder.parent / rel).parent.mkdir(parents=True, exist_ok=True)
        outcome = "failed" if status == "FALSIFIED" else "passed"
        (folder.parent / rel).write_text(json.dumps({"outcome": outcome}))
    (folder / f"{cid}.yaml").write_text(
        NODE.format(
            id=cid,
            deps=", ".join(deps),
            status=status,
            prefix=cid.upper(),
            fstatus=fstatus,
            evidence=evidence,
        )
    )


def graph_of(folder: Path):
    contracts, _ = load_contracts([str(folder)])
    return build_graph(contracts)


def test_project_contracts_in_dependency_order():
    graph = graph_of(ROOT / "contracts")
    assert graph.cycles == [] and graph.missing == {} and graph.falsified_roots == {}
    position = {cid: i for i, cid in enumerate(graph.order)}
    assert set(position) == set(graph.nodes)
    for cid, node in graph.nodes.items():
        for dep in node.depends_on:
            assert position[dep] < position[cid], (dep, cid)
    assert main(["graph", str(ROOT / "contracts")]) == 0


def test_cycle_is_reported_with_its_members(tmp_path, capsys):
    folder = tmp_path / "contracts"
    write_node(folder, "a", ["b"])
    write_node(folder, "b", ["c"])
    write_node(folder, "c", ["a"])
    write_node(folder, "d", ["a"])
    write_node(folder, "e")
    graph = graph_of(folder)
    assert graph.cycles == [["a", "b", "c"]]
    assert graph.order == ["e"]  # d waits behind the cycle
    assert main(["graph", str(folder)]) == 1
    out = capsys.readouterr().out
    assert "dependency cycle: a -> b -> c -> a" in out
    assert "not orderable (in or behind a cycle): a, b, c, d" in out


def test_falsified_dependency_is_flagged(tmp_path, capsys):
    folder = tmp_path / "contracts"
    write_node(folder, "base", status="FALSIFIED")
    write_node(folder, "mid", ["base"], status="DISCHARGED")
    write_node(folder, "top", ["mid"], status="PROPOSED")
    graph = graph_of(folder)
    assert graph.falsified_roots == {"mid": ["base"], "top": ["base"]}
    by_contract = {f.message.split()[0]: f for f in graph.findings()}
    assert by_contract["mid"].severity == "error"  # claims DISCHARGED on a refuted claim
    assert "rests on a refuted claim" in by_contract["mid"].message
    assert by_contract["top"].severity == "warning"
    assert main(["graph", str(folder), "--format", "dot"]) == 1
    dot = capsys.readouterr().out
    assert '"mid" -> "base";' in dot and "penwidth=3, color=red" in dot


def test_missing_dependency_and_formats(tmp_path, capsys):
    folder = tmp_path / "contracts"
    write_node(folder, "x", ["nowhere"])
    write_node(folder, "y", ["x"])
    graph = graph_of(folder)
    assert graph.missing == {"x": ["nowhere"]}
    mermaid = render_mermaid(graph)
    assert mermaid.startswith("graph BT") and "c1 --> c0" in mermaid
    assert render_dot(graph).startswith("digraph contracts {")
    assert main(["graph", str(folder), "--json"]) == 1
    doc = json.loads(capsys.readouterr().out)
    assert doc["order"] == ["x", "y"] and doc["missing"] == {"x": ["nowhere"]}
    assert main(["graph", str(tmp_path / "nothing-here")]) == 2


@settings(max_examples=60, deadline=None)
@given(st.dictionaries(st.sampled_from("abcdefgh"), st.lists(st.sampled_from("abcdefgh"))))
def test_topological_order_respects_every_edge(raw):
    edges = {n: [d for d in deps if d in raw] for n, deps in raw.items()}
    order = _topological(edges)
    position = {n: i for i, n in enumerate(order)}
    assert len(order) == len(set(order))
    for n, deps in edges.items():
        if n in position:
            assert all(d in position and position[d] < position[n] for d in deps)
    # whatever is left out cannot be ordered: it sits on or behind a cycle
    left = set(edges) - set(position)
    for n in left:
        assert any(d in left for d in edges[n])
