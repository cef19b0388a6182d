"""``pv coverage``: how much of each contract is attacked, bound and proven.

Three ratios per contract and in total: obligations covered by a falsifier (the chain's
links, see ``provable.reports.chain``), falsifiers bound to a test (the plugin's own binding table,
collected without running), falsifiers DISCHARGED.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass

from provable.contracts.model import Contract
from provable.reports.bound import BoundTests
from provable.reports.chain import build_chain


@dataclass
class CoverageRow:
    contract: str
    obligations: int
    obligations_covered: int
    falsifiers: int
    falsifiers_bound: int
    falsifiers_discharged: int

    @staticmethod
    def percent(part: int, whole: int) -> float | None:
        return None if whole == 0 else round(100.0 * part / whole, 1)


def coverage_rows(contracts: Sequence[Contract], bound: BoundTests | None) -> list[CoverageRow]:
    rows = []
    for c in contracts:
        chain = build_chain(c)
        rows.append(
            CoverageRow(
                contract=c.id,
                obligations=len(chain.obligations),
                obligations_covered=chain.covered_obligations,
                falsifiers=len(c.falsifiers),
                falsifiers_bound=sum(
                    bool(bound and bound.tests_of(c.id, f.id)) for f in c.falsifiers
                ),
                falsifiers_discharged=sum(f.status == "DISCHARGED" for f in c.falsifiers),
            )
        )
    return rows


def total_row(rows: Sequence[CoverageRow]) -> CoverageRow:
    return CoverageRow(
        "TOTAL",
        *(sum(getattr(r, k) for r in rows) for k in list(asdict(rows[0]))[1:])
        if rows
        else (0, 0, 0, 0, 0),
    )


def _cell(part: int, whole: int) -> str:
    pct = CoverageRow.percent(part, whole)
    return f"{part}/{whole}" + ("" if pct is None else f" ({pct:g}%)")


def render_json(rows: Sequence[CoverageRow]) -> str:
    def one(r: CoverageRow) -> dict[str, object]:
        return {
            **asdict(r),
            "obligations_covered_pct": r.percent(r.obligations_covered, r.obligations),
            "falsifiers_bound_pct": r.percent(r.falsifiers_bound, r.falsifiers),
            "falsifiers_discharged_pct": r.percent(r.falsifiers_discharged, r.falsifiers),
        }

    return json.dumps(
        {"contracts": [one(r) for r in rows], "total": one(total_row(rows))}, indent=2
    )


def print_table(rows: Sequence[CoverageRow]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title="contract coverage", title_justify="left")
    table.add_column("contract")
    for name in ("obligations covered", "falsifiers bound", "falsifiers discharged"):
        table.add_column(name, justify="right")

    def style(part: int, whole: int) -> str:
        colour = "green" if part == whole else ("red" if part == 0 else "yellow")
        return f"[{colour}]{_cell(part, whole)}[/]"

    for i, r in enumerate([*rows, total_row(rows)]):
        table.add_row(
            f"[bold]{r.contract}[/]" if i == len(rows) else r.contract,
            style(r.obligations_covered, r.obligations),
            style(r.falsifiers_bound, r.falsifiers),
            style(r.falsifiers_discharged, r.falsifiers),
            end_section=i == len(rows) - 1,
        )
    console = Console()
    if not console.is_terminal:
        console = Console(width=160)
    console.print(table)
