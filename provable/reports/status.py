"""``pv status``: what every contract has proven, what is pending, what was refuted."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from provable.contracts.findings import Finding, display_path
from provable.contracts.lifecycle import (
    FalsifierStatus,
    derive_contract_status,
    parse_contract_status,
    parse_falsifier_status,
)
from provable.contracts.loading import read_checked
from provable.contracts.model import Contract
from provable.contracts.paths import is_safe_name, project_root
from provable.reports.lastrun import (
    FLAKY,
    NOT_CHECKED,
    LastRun,
    error_summary,
    is_unchecked,
    last_runs,
    one_line,
)
from provable.reports.mdescape import md_code, md_escape

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
UNCHECKED_STYLE = "dark_orange"


#: kept for callers of the old name; ``provable.contracts.lifecycle`` parses status words
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
    #: each falsifier's last run, from history.jsonl (``provable.reports.lastrun``)
    last_runs: dict[str, LastRun | None] = field(default_factory=dict)
    #: why the file was refused, one finding a line as ``pv validate`` prints them
    findings: list[Finding] = field(default_factory=list)

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    @property
    def unchecked(self) -> dict[str, LastRun]:
        """Falsifiers whose last run errored or was flaky: their claims were not tested."""
        return {f: r for f, r in self.last_runs.items() if r is not None and is_unchecked(r)}

    @property
    def not_checked(self) -> int:
        return sum(r["outcome"] == NOT_CHECKED for r in self.unchecked.values())

    @property
    def flaky(self) -> int:
        return sum(r["outcome"] == FLAKY for r in self.unchecked.values())


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


def collect(paths: list[Path], evidence_dir: Path | None = None) -> list[ContractRow]:
    """A row per contract file, with each falsifier's last run from the evidence folder
    (``evidence/`` of each contract's project root unless given).

    Files are read by ``provable.contracts.loading.read_checked``, as ``pv validate`` reads them: a
    contract validate refuses is a row with the first refusal as its error (every refusal
    is in ``findings``), never a row built from what could be read of it."""
    rows: list[ContractRow] = []
    for path in paths:
        result = read_checked(path)
        if result.registry:
            continue
        contract = result.usable
        if contract is None:
            refused = result.refusals
            first = refused[0]
            more = f" (and {len(refused) - 1} more errors)" if len(refused) > 1 else ""
            error = f"line {first.line}: error [{first.rule}] {first.message}{more}"
            row = problem_row(path, error)
            row.findings = refused
            rows.append(row)
            continue
        row = row_for(contract)
        evidence = evidence_dir if evidence_dir is not None else project_root(path) / "evidence"
        if is_safe_name(contract.id):  # an id from a file name ('...yaml') may not be
            row.last_runs = last_runs(evidence, contract.id, (f.id for f in contract.falsifiers))
        rows.append(row)
    return rows


def problem_row(path: Path, error: str) -> ContractRow:
    """A row for a file (or folder) that could not be read as a contract."""
    return ContractRow(path.stem, display_path(path), "-", "INVALID", False, {}, error)


def scoreboard(rows: list[ContractRow]) -> str:
    total = {s.value: sum(r.counts.get(s.value, 0) for r in rows) for s in ORDER}
    n = sum(total.values())
    contracts = sum(r.error is None for r in rows)
    line = (
        f"{total['DISCHARGED']} discharged · {total['PARTIAL']} partial · "
        f"{total['PROPOSED']} proposed · {total['FALSIFIED']} falsified "
        f"(of {n} falsifiers in {contracts} contracts)"
    )
    not_checked, flaky = count_unchecked(rows)
    if not_checked:
        line += f" · {not_checked} not checked"
    if flaky:
        line += f" · {flaky} flaky"
    return line


def count_unchecked(rows: list[ContractRow]) -> tuple[int, int]:
    """(not checked, flaky) over every row: falsifiers whose last run left the claim untested."""
    return sum(r.not_checked for r in rows), sum(r.flaky for r in rows)


def unchecked_json(record: LastRun) -> dict[str, object]:
    """A falsifier's last run as ``pv status --json`` and ``status.json`` show it."""
    return {"outcome": record["outcome"], "time": record["time"], "last_error": record["error"]}


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
                    "not_checked": r.not_checked,
                    "flaky": r.flaky,
                    "last_errors": [
                        {"id": fid, **unchecked_json(record)} for fid, record in r.unchecked.items()
                    ],
                }
                for r in rows
            ],
            "scoreboard": scoreboard(rows),
            "not_checked": count_unchecked(rows)[0],
            "flaky": count_unchecked(rows)[1],
        },
        indent=2,
    )


def render_markdown(rows: list[ContractRow]) -> str:
    """For a CI job summary (``$GITHUB_STEP_SUMMARY``) or a committed dashboard page."""
    head = "| contract | version | status | " + " | ".join(s.value.lower() for s in ORDER) + " |"
    lines = [head, "|" + "---|" * (3 + len(ORDER))]
    for r in rows:
        status = (
            r.status if r.status in STYLE else md_escape(r.status)
        )  # a word of ours, or escaped
        status += " (derived)" if r.derived else ""
        if r.error:
            status += f": {md_escape(r.error)}"
        cells = " | ".join(str(r.counts.get(s.value, 0)) for s in ORDER)
        lines.append(f"| {md_code(r.id)} | {md_escape(r.version)} | {status} | {cells} |")
    lines += ["", scoreboard(rows)]
    unchecked = [(r.id, fid, rec) for r in rows for fid, rec in r.unchecked.items()]
    if unchecked:
        lines += [
            "",
            "Not checked (the last run errored or was flaky; the claims were not tested):",
            "",
            "| falsifier | contract | last run | at | error |",
            "|---|---|---|---|---|",
        ]
        for cid, fid, rec in unchecked:
            lines.append(
                f"| {md_code(fid)} | {md_code(cid)} | {_label(rec)} | "
                f"{md_escape(one_line(rec['time']) or '-')} | "
                f"{md_escape(error_summary(rec) or '-')} |"
            )
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
    not_checked, flaky = count_unchecked(rows)
    extra = [("not checked", "not_checked")] if not_checked else []
    extra += [("flaky", "flaky")] if flaky else []
    for title, _ in extra:  # only when there is any: the usual table stays as it was
        table.add_column(title, justify="right", style=UNCHECKED_STYLE)
    for r in rows:
        status = f"[{STYLE.get(r.status, '')}]{r.status}[/]" if r.status in STYLE else r.status
        if r.derived:
            status += " [dim](derived)[/]"
        if r.error:
            status += f"\n[red]{escape(r.error)}[/]"
        table.add_row(
            r.id,
            r.version,
            status,
            *(str(r.counts.get(s.value, 0)) for s in ORDER),
            str(r.total),
            *(str(getattr(r, attr)) for _, attr in extra),
        )
    console = Console()
    if not console.is_terminal:  # a CI log is wide; don't fold names at 80 columns
        console = Console(width=160)
    console.print(table)
    console.print(scoreboard(rows))
    for line in unchecked_lines(rows):
        console.print(line, style=UNCHECKED_STYLE, markup=False, highlight=False, soft_wrap=True)


def unchecked_lines(rows: list[ContractRow]) -> list[str]:
    """One line per falsifier whose last run left its claim untested, with the error."""
    lines = []
    for r in rows:
        for fid, rec in r.unchecked.items():
            when = f", {rec['time']}" if rec["time"] else ""
            error = error_summary(rec)
            text = f"{_label(rec)}: {fid} ({r.id}{when})" + (f": {error}" if error else "")
            lines.append(one_line(text))
    return lines


def _label(record: LastRun) -> str:
    return "not checked" if record["outcome"] == NOT_CHECKED else "flaky"
