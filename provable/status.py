"""``pv status``: what every contract has proven, what is pending, what was refuted."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from provable.findings import display_path
from provable.lifecycle import (
    WILD_CONTRACT_STATUSES,
    WILD_FALSIFIER_STATUSES,
    ContractStatus,
    FalsifierStatus,
    derive_contract_status,
)
from provable.model import Contract, contract_from_document, is_binding_registry
from provable.yamlsource import YamlSourceError, read_yaml

ORDER = (
    FalsifierStatus.DISCHARGED,
    FalsifierStatus.PARTIAL,
    FalsifierStatus.PROPOSED,
    FalsifierStatus.FALSIFIED,
)
STYLE = {
    "DISCHARGED": "green",
    "PARTIAL_ALGORITHM_LEVEL": "yellow",
    "PARTIAL": "yellow",
    "PROPOSED": "dim",
    "FALSIFIED": "bold red",
    "SUPERSEDED": "dim",
    "RETIRED": "dim",
    "INVALID": "bold red",
}


def falsifier_status(word: str | None) -> FalsifierStatus:
    """Our status for a word found in a contract (wild words mapped to the nearest)."""
    if word is None:
        return FalsifierStatus.PROPOSED
    if word in FalsifierStatus.__members__:
        return FalsifierStatus(word)
    return WILD_FALSIFIER_STATUSES.get(word.upper(), FalsifierStatus.PROPOSED)


@dataclass
class ContractRow:
    id: str
    path: str
    version: str
    status: str
    derived: bool
    counts: dict[str, int] = field(default_factory=dict)
    error: str | None = None

    @property
    def total(self) -> int:
        return sum(self.counts.values())


def row_for(contract: Contract) -> ContractRow:
    statuses = [falsifier_status(f.status) for f in contract.falsifiers]
    counts = {s.value: statuses.count(s) for s in ORDER}
    declared = contract.status
    if declared in ContractStatus.__members__:
        status, derived = declared, False
    elif declared and declared.upper() in WILD_CONTRACT_STATUSES:
        status, derived = WILD_CONTRACT_STATUSES[declared.upper()].value, False
    else:
        status, derived = derive_contract_status(statuses).value, True
    return ContractRow(
        id=contract.id,
        path=display_path(contract.path),
        version=contract.version or "-",
        status=status,
        derived=derived,
        counts=counts,
    )


def collect(paths: list[Path]) -> list[ContractRow]:
    rows: list[ContractRow] = []
    for path in paths:
        try:
            doc = read_yaml(path)
        except YamlSourceError as exc:
            rows.append(_invalid(path, f"line {exc.line}: {exc.message}"))
            continue
        if is_binding_registry(doc.data):
            continue
        if not isinstance(doc.data, dict):
            rows.append(_invalid(path, "top level is not a mapping"))
            continue
        rows.append(row_for(contract_from_document(doc)))
    return rows


def _invalid(path: Path, error: str) -> ContractRow:
    return ContractRow(path.stem, display_path(path), "-", "INVALID", False, {}, error)


def scoreboard(rows: list[ContractRow]) -> str:
    total = {s.value: sum(r.counts.get(s.value, 0) for r in rows) for s in ORDER}
    n = sum(total.values())
    contracts = sum(r.error is None for r in rows)
    return (
        f"{total['DISCHARGED']} discharged · {total['PARTIAL']} partial · "
        f"{total['PROPOSED']} proposed · {total['FALSIFIED']} falsified "
        f"(of {n} falsifiers in {contracts} contracts)"
    )


def render_json(rows: list[ContractRow]) -> str:
    return json.dumps(
        {
            "contracts": [
                {
                    "id": r.id,
                    "path": r.path,
                    "version": r.version,
                    "status": r.status,
                    "status_derived": r.derived,
                    "falsifiers": r.counts,
                    **({"error": r.error} if r.error else {}),
                }
                for r in rows
            ],
            "scoreboard": scoreboard(rows),
        },
        indent=2,
    )


def render_markdown(rows: list[ContractRow]) -> str:
    """For a CI job summary (``$GITHUB_STEP_SUMMARY``) or a committed dashboard page."""
    head = "| contract | version | status | " + " | ".join(s.value.lower() for s in ORDER) + " |"
    lines = [head, "|" + "---|" * (3 + len(ORDER))]
    for r in rows:
        status = r.status + (" (derived)" if r.derived else "")
        if r.error:
            status += f": {r.error}"
        cells = " | ".join(str(r.counts.get(s.value, 0)) for s in ORDER)
        lines.append(f"| `{r.id}` | {r.version} | {status} | {cells} |")
    lines += ["", scoreboard(rows)]
    return "\n".join(lines)


def print_table(rows: list[ContractRow]) -> None:
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    table = Table(title="contract status", title_justify="left")
    table.add_column("contract")
    table.add_column("version")
    table.add_column("status")
    for s in ORDER:
        table.add_column(s.value.lower(), justify="right", style=STYLE[s.value])
    table.add_column("total", justify="right")
    for r in rows:
        status = f"[{STYLE.get(r.status, '')}]{r.status}[/]" if r.status in STYLE else r.status
        if r.derived:
            status += " [dim](derived)[/]"
        if r.error:
            status += f"\n[red]{escape(r.error)}[/]"
        table.add_row(
            r.id, r.version, status, *(str(r.counts.get(s.value, 0)) for s in ORDER), str(r.total)
        )
    console = Console()
    if not console.is_terminal:  # a CI log is wide; don't fold names at 80 columns
        console = Console(width=160)
    console.print(table)
    console.print(scoreboard(rows))
