"""``pv graph``: the ``depends_on`` DAG in topological order, its cycles, and refuted roots.

A contract marked DISCHARGED whose dependency (direct or further down) is FALSIFIED rests on
a refuted claim: its own falsifiers passed, but what they assumed did not hold. That is
flagged as an error; a contract not claiming DISCHARGED gets a warning.
"""

from __future__ import annotations

import heapq
import json
from collections.abc import Sequence
from dataclasses import dataclass, field

from provable.contracts.findings import ERROR, WARNING, Finding, printable
from provable.contracts.model import Contract
from provable.contracts.validate import find_cycles
from provable.reports.status import row_for


@dataclass
class Node:
    id: str
    status: str
    path: str
    line: int
    depends_on: list[str]


@dataclass
class Graph:
    nodes: dict[str, Node]
    order: list[str]  # dependencies first; members of a cycle are left out
    cycles: list[list[str]]
    missing: dict[str, list[str]]  # contract → dependencies that name no contract
    falsified_roots: dict[str, list[str]] = field(default_factory=dict)  # contract → refuted deps
    #: files left out of the graph: ``pv validate`` refuses them (``provable.contracts.loading``)
    refused: list[Finding] = field(default_factory=list)

    def findings(self) -> list[Finding]:
        out: list[Finding] = list(self.refused)
        for cycle in self.cycles:
            first = self.nodes[cycle[0]]
            out.append(
                Finding(
                    first.path,
                    first.line,
                    ERROR,
                    "dependency-cycle",
                    "dependency cycle: " + " -> ".join([*cycle, cycle[0]]),
                )
            )
        for cid, deps in self.missing.items():
            n = self.nodes[cid]
            out.append(
                Finding(
                    n.path,
                    n.line,
                    ERROR,
                    "depends-on",
                    f"depends_on names {', '.join(map(repr, deps))}, but no contract given "
                    "has that id",
                )
            )
        for cid, refuted in self.falsified_roots.items():
            n = self.nodes[cid]
            claims = n.status == "DISCHARGED"
            out.append(
                Finding(
                    n.path,
                    n.line,
                    ERROR if claims else WARNING,
                    "falsified-dependency",
                    f"{cid} ({n.status}) depends on FALSIFIED {', '.join(refuted)}"
                    + ("; its DISCHARGED status rests on a refuted claim" if claims else ""),
                )
            )
        return out


def build_graph(contracts: list[Contract], refused: Sequence[Finding] = ()) -> Graph:
    """The graph of ``contracts``; ``refused`` are the findings of files left out of it."""
    nodes = {
        c.id: Node(
            id=c.id,
            status=row_for(c).status,
            path=c.shown_path,
            line=c.line_of("metadata", "depends_on"),
            depends_on=list(dict.fromkeys(c.depends_on)),
        )
        for c in contracts
    }
    edges = {cid: [d for d in n.depends_on if d in nodes] for cid, n in nodes.items()}
    missing = {
        cid: [d for d in n.depends_on if d not in nodes]
        for cid, n in nodes.items()
        if any(d not in nodes for d in n.depends_on)
    }
    graph = Graph(nodes, _topological(edges), find_cycles(edges), missing, refused=list(refused))
    for cid in nodes:
        refuted = [d for d in _reachable(cid, edges) if nodes[d].status == "FALSIFIED"]
        if refuted:
            graph.falsified_roots[cid] = sorted(refuted)
    return graph


def _topological(edges: dict[str, list[str]]) -> list[str]:
    """Kahn's algorithm, dependencies first, ties broken by id so the output is stable."""
    waiting = {cid: len(set(deps)) for cid, deps in edges.items()}
    users: dict[str, list[str]] = {cid: [] for cid in edges}
    for cid, deps in edges.items():
        for d in set(deps):
            users[d].append(cid)
    ready = [cid for cid, n in waiting.items() if n == 0]
    heapq.heapify(ready)
    order: list[str] = []
    while ready:
        cid = heapq.heappop(ready)
        order.append(cid)
        for user in users[cid]:
            waiting[user] -= 1
            if waiting[user] == 0:
                heapq.heappush(ready, user)
    return order


def _reachable(start: str, edges: dict[str, list[str]]) -> set[str]:
    seen: set[str] = set()
    stack = list(edges.get(start, ()))
    while stack:
        cid = stack.pop()
        if cid in seen or cid == start:
            continue
        seen.add(cid)
        stack.extend(edges.get(cid, ()))
    return seen


def _stuck(graph: Graph) -> list[str]:
    placed = set(graph.order)
    return sorted(cid for cid in graph.nodes if cid not in placed)


def render_text(graph: Graph) -> str:
    lines = ["dependency order (dependencies first):"]
    for i, cid in enumerate(graph.order, 1):
        n = graph.nodes[cid]
        deps = f" <- {', '.join(n.depends_on)}" if n.depends_on else ""
        flag = (
            "  !! rests on FALSIFIED " + ", ".join(graph.falsified_roots[cid])
            if (cid in graph.falsified_roots)
            else ""
        )
        lines.append(f"{i:3d}. {cid} [{n.status}]{deps}{flag}")
    stuck = _stuck(graph)
    if stuck:
        lines.append(f"not orderable (in or behind a cycle): {', '.join(stuck)}")
    for cycle in graph.cycles:
        lines.append("cycle: " + " -> ".join([*cycle, cycle[0]]))
    return "\n".join(printable(line) for line in lines)


def _dot_id(cid: str) -> str:
    return json.dumps(cid)


def render_dot(graph: Graph) -> str:
    """Graphviz: an edge points from a contract to what it depends on."""
    colour = {"DISCHARGED": "palegreen", "FALSIFIED": "salmon", "PROPOSED": "lightgrey"}
    in_cycle = {(c[i], c[(i + 1) % len(c)]) for c in graph.cycles for i in range(len(c))}
    lines = ["digraph contracts {", "  rankdir=BT;", "  node [shape=box, style=filled];"]
    for cid in [*graph.order, *_stuck(graph)]:
        n = graph.nodes[cid]
        fill = colour.get(n.status, "khaki")
        pen = ", penwidth=3, color=red" if cid in graph.falsified_roots else ""
        label = json.dumps(f"{cid}\n{n.status}")
        lines.append(f"  {_dot_id(cid)} [label={label}, fillcolor={fill}{pen}];")
    for cid in [*graph.order, *_stuck(graph)]:
        for dep in graph.nodes[cid].depends_on:
            if dep in graph.nodes:
                style = " [color=red, label=cycle]" if (cid, dep) in in_cycle else ""
                lines.append(f"  {_dot_id(cid)} -> {_dot_id(dep)}{style};")
    lines.append("}")
    return "\n".join(lines)


def _mermaid_text(text: str) -> str:
    """A label's text as Mermaid entity codes: a quote would end the label, markup render."""
    for raw, code in (("#", "#35;"), ('"', "#quot;"), ("<", "#lt;"), (">", "#gt;")):
        text = text.replace(raw, code)
    return printable(text)


def render_mermaid(graph: Graph) -> str:
    names = {cid: f"c{i}" for i, cid in enumerate([*graph.order, *_stuck(graph)])}
    lines = ["graph BT"]
    for cid, key in names.items():
        n = graph.nodes[cid]
        lines.append(f'  {key}["{_mermaid_text(cid)}<br/>{_mermaid_text(str(n.status))}"]')
    for cid, key in names.items():
        for dep in graph.nodes[cid].depends_on:
            if dep in names:
                lines.append(f"  {key} --> {names[dep]}")
    lines.append("  classDef falsified fill:#f99,stroke:#c00;")
    lines.append("  classDef restsOnFalsified stroke:#c00,stroke-width:3px;")
    refuted = [names[c] for c in names if graph.nodes[c].status == "FALSIFIED"]
    if refuted:
        lines.append(f"  class {','.join(refuted)} falsified;")
    resting = [names[c] for c in graph.falsified_roots]
    if resting:
        lines.append(f"  class {','.join(resting)} restsOnFalsified;")
    return "\n".join(lines)


def render_json(graph: Graph) -> str:
    return json.dumps(
        {
            "order": graph.order,
            "unordered": _stuck(graph),
            "contracts": {
                cid: {"status": n.status, "path": n.path, "depends_on": n.depends_on}
                for cid, n in graph.nodes.items()
            },
            "cycles": graph.cycles,
            "missing": graph.missing,
            "falsified_dependencies": graph.falsified_roots,
            "findings": [f.as_dict() for f in graph.findings()],
        },
        indent=2,
    )
