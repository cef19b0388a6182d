"""The traceability chain of one contract: equation → proof obligation → falsifier.

The public dialect links nothing explicitly, so the links are read from two optional
fields and, where a contract leaves them out, inferred only when there is one candidate:

* an obligation names its equation(s) with ``equation: NAME`` (or ``equations: [..]``);
  in a contract with a single equation every obligation belongs to it;
* a falsifier names its obligation(s) with ``obligation: REF`` (or ``obligations: [..]``),
  REF being the obligation's ``id`` or its ``property`` text; in a contract with a single
  obligation every falsifier attacks it.

Anything else is a gap that ``pv audit`` reports, rather than a guess that hides one.
"""

from __future__ import annotations

import builtins
from dataclasses import dataclass, field
from typing import Any

from provable.contracts.model import Contract


@dataclass
class Obligation:
    index: int
    line: int
    type: str | None
    property: str | None
    id: str | None
    raw: dict[str, Any]
    equations: list[str] = field(default_factory=list)
    unknown_equations: list[str] = field(default_factory=list)
    falsifiers: list[str] = field(default_factory=list)

    @builtins.property  # the field `property` shadows the builtin in this class body
    def label(self) -> str:
        """How a message names it: its id, else its property, else its position."""
        if self.id:
            return self.id
        if self.property:
            return repr(self.property)
        return f"#{self.index + 1}"


@dataclass
class Chain:
    contract: Contract
    equations: dict[str, int]  # name → line
    obligations: list[Obligation]
    #: falsifier id → obligation references that match no obligation
    dangling: dict[str, list[str]] = field(default_factory=dict)

    def obligations_of(self, equation: str) -> list[Obligation]:
        return [o for o in self.obligations if equation in o.equations]

    @property
    def covered_obligations(self) -> int:
        return sum(bool(o.falsifiers) for o in self.obligations)


def _names(raw: dict[str, Any], one: str, many: str) -> list[str]:
    value = raw.get(many, raw.get(one))
    if isinstance(value, (str, int)) and not isinstance(value, bool):
        return [str(value)]
    if isinstance(value, list):
        return [str(v) for v in value if isinstance(v, (str, int)) and not isinstance(v, bool)]
    return []


def build_chain(contract: Contract) -> Chain:
    data = contract.data
    raw_equations = data.get("equations")
    equations = {
        str(name): contract.line_of("equations", name)
        for name in (raw_equations if isinstance(raw_equations, dict) else {})
    }
    raw_obligations = data.get("proof_obligations")
    obligations: list[Obligation] = []
    for i, raw in enumerate(raw_obligations if isinstance(raw_obligations, list) else []):
        if not isinstance(raw, dict):
            continue
        named = _names(raw, "equation", "equations")
        if not named and len(equations) == 1:
            named = list(equations)
        obligations.append(
            Obligation(
                index=i,
                line=contract.line_of("proof_obligations", i),
                type=raw.get("type") if isinstance(raw.get("type"), str) else None,
                property=raw.get("property") if isinstance(raw.get("property"), str) else None,
                id=raw.get("id") if isinstance(raw.get("id"), str) else None,
                raw=raw,
                equations=[n for n in named if n in equations],
                unknown_equations=[n for n in named if n not in equations],
            )
        )
    chain = Chain(contract, equations, obligations)
    raw_falsifiers = data.get("falsification_tests")
    raw_by_id = {
        r["id"]: r
        for r in (raw_falsifiers if isinstance(raw_falsifiers, list) else [])
        if isinstance(r, dict) and isinstance(r.get("id"), str)
    }
    for f in contract.falsifiers:
        refs = _names(raw_by_id.get(f.id, {}), "obligation", "obligations")
        if not refs:
            if len(obligations) == 1:
                obligations[0].falsifiers.append(f.id)
            continue
        for ref in refs:
            target = _find_obligation(obligations, ref)
            if target is None:
                chain.dangling.setdefault(f.id, []).append(ref)
            elif f.id not in target.falsifiers:
                target.falsifiers.append(f.id)
    return chain


def _find_obligation(obligations: list[Obligation], ref: str) -> Obligation | None:
    for o in obligations:
        if ref == o.id:
            return o
    for o in obligations:
        if o.property is not None and ref.strip().lower() == o.property.strip().lower():
            return o
    return None
