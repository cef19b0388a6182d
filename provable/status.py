"""``pv status``: what every contract has proven, what is pending, what was refuted."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from provable.findings import display_path
from provable.lifecycle import (
    FalsifierStatus,
    derive_contract_status,
    parse_contract_status,
    parse_falsifier_status,
)
from provable.model import BindingRegistryFile, Contract, NotAMapping, read_contract
from provable.yamlsource import YamlSourceError

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


#: kept for callers of the old name; ``provable.lifecycle`` parses status words
falsifier_status = parse_falsifier_status


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
    declared = parse_contract_status(contract.status)
    if declared is not None:
        status, derived = declared.value, False
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
            contract = read_contract(path)
        except YamlSourceError as exc:
            rows.append(problem_row(path, f"line {exc.line}: {exc.message}"))
            continue
        except NotAMapping as exc:
            rows.append(problem_row(path, str(exc)))
            continue
        except Exception as exc:  # one bad file must not hide the others
            rows.append(problem_row(path, f"could not read ({type(exc).__name__}: {exc})"))
            continue
        if isinstance(contract, BindingRegistryFile):
            continue
        rows.append(row_for(contract))
    return rows


def problem_row(path: Path, error: str) -> ContractRow:
    """A row for a file (or folder) that could not be read as a contract."""
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
        lines.append(f"| {_md_code(r.id)} | {_md(r.version)} | {_md(status)} | {cells} |")
    lines += ["", scoreboard(rows)]
    return "\n".join(lines)


def _md(text: str) -> str:
    """A Markdown table cell: a ``|`` would end the cell, a newline the row."""
    return text.replace("\\", "\\\\").replace("|", "\\|").replace("\n", " ")


def _md_code(text: str) -> str:
    """Inline code in a table cell (GitHub reads ``\\|`` as ``|`` inside it too)."""
    return "`" + text.replace("`", "'").replace("|", "\\|").replace("\n", " ") + "`"


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
