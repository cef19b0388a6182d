"""``python -m bench.defects [--json OUT] [--only ID ...]``: the defect-injection benchmark.

Prints a table (defect, caught?, by which falsifiers, diff diagnosis, right?, time to the
first red) and the line ``killed K/N · diagnosis right D/N · false alarms F · T s``.
Exit 0 when every runnable defect was killed and the clean run raised no alarm, else 1.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any


def _table(doc: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console() if Console().is_terminal else Console(width=200)
    table = Table(title="defect-injection benchmark", title_justify="left")
    for col in ("defect", "DESIGN row", "caught", "red falsifiers", "apr diff", "right", "1st red"):
        table.add_column(col, overflow="fold")
    for r in doc["defects"]:
        status = r["status"]
        style = {"killed": "green", "survived": "bold red"}.get(status, "dim")
        right = "-" if r["diagnosis_right"] is None else ("yes" if r["diagnosis_right"] else "NO")
        table.add_row(
            r["id"],
            r["design_row"],
            f"[{style}]{status}[/]" + (f"\n[dim]{r['reason']}[/]" if r["reason"] else ""),
            ", ".join(x.replace("FALSIFY-", "") for x in r["red"]) or "-",
            r["diff_class"] or "-",
            right,
            f"{r['first_red_s']:.2f} s" if r["first_red_s"] is not None else "-",
        )
    console.print(table)
    clean = doc["clean"]
    console.print(
        f"clean models: {clean['status']} ({len(clean['ran'])} checks, {clean['seconds']} s)"
        + (f": {'; '.join(clean['red'])}" if clean["red"] else ""),
        highlight=False,
    )
    for r in doc["defects"]:
        if r["status"] == "survived" or r["diagnosis_right"] is False:
            console.print(f"[yellow]finding[/] {r['id']}: {r['diff_line']}", highlight=False)
    console.print(doc["summary"], style="bold", highlight=False)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.defects", description=__doc__)
    parser.add_argument("--json", type=Path, metavar="OUT", help="write the results as JSON")
    parser.add_argument("--only", nargs="+", metavar="ID", help="run only these defects")
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    root = str(Path(__file__).resolve().parents[2])
    if root not in sys.path:
        sys.path.insert(0, root)
    from bench.defects.runner import run_catalogue

    doc = run_catalogue(args.only)
    _table(doc)
    if args.json:
        args.json.write_text(json.dumps(doc, indent=2) + "\n", encoding="utf-8")
    return 0 if doc["killed"] == doc["runnable"] and doc["false_alarms"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
