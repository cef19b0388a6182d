"""``pv``: validate contracts, show their status, scaffold new ones.

Imports stay inside the subcommands so that ``pv --help`` and ``pv validate one.yaml`` start
fast; nothing here may import torch, triton or aprlib.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from provable.cli.exits import EXIT_FINDINGS, EXIT_OK, EXIT_USAGE, usage
from provable.version import __version__


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pv",
        description="Contract engine of provable: claims in YAML, falsifiers bound to tests.",
    )
    parser.add_argument("--version", action="version", version=f"pv {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    v = sub.add_parser(
        "validate",
        help="check contract files against the schema and the status rules",
        description="Check contracts: YAML, schema, IDs, statuses, evidence, dependencies. "
        "Exit 0 with no errors, 1 with errors, 2 on usage errors.",
    )
    v.add_argument("paths", nargs="+", metavar="PATH", help="contract files, folders or globs")
    v.add_argument("--strict", action="store_true", help="treat warnings as errors")
    v.add_argument("--format", choices=("text", "json"), default="text", help="output format")

    s = sub.add_parser(
        "status",
        help="table of contracts and their falsifiers' statuses",
        description="Show each contract's version and status and its falsifiers by status. "
        "A contract pv validate refuses is a row saying why (and its findings on stderr). "
        "Exit 0; 1 when a contract is refused or a folder holds none; 2 on usage errors.",
    )
    s.add_argument(
        "paths", nargs="*", metavar="PATH", help="contract files, folders or globs (contracts/)"
    )
    s.add_argument("--json", action="store_true", help="one JSON document (same as --format json)")
    s.add_argument(
        "--format", choices=("table", "json", "markdown"), default="table", help="output format"
    )

    c = sub.add_parser(
        "check",
        help="the main job: validate, run the falsifiers, show the status, write the dashboard",
        description="Validate the contracts (--strict), run the falsifier tests with pytest "
        "(which rewrites statuses and evidence), print the status table, write the dashboard "
        "(--dashboard) and show its scoreboard. Exit 0 only when validation and every "
        "falsifier passed, and no falsifier's last run left it not checked (an error, a "
        "flaky test).",
    )
    c.add_argument("--contracts", default="contracts", help="contracts folder (contracts/)")
    c.add_argument("--falsifiers", default="falsifiers", help="falsifier tests (falsifiers/)")
    c.add_argument("--dashboard", default="dashboard", help="dashboard folder (dashboard/)")
    c.add_argument(
        "pytest_args",
        nargs="*",
        metavar="PYTEST_ARG",
        help="passed to pytest after --, e.g. -- -n 2",
    )

    _add_dashboard_and_merge(sub)

    n = sub.add_parser(
        "new",
        help="scaffold a new contract that validates",
        description="Write <dir>/<ID>.yaml with one equation, one obligation, one falsifier.",
    )
    n.add_argument("id", metavar="ID", help="contract id, e.g. tensor-layout-v1")
    n.add_argument("--dir", type=Path, default=Path("contracts"), help="folder (contracts/)")
    n.add_argument("--prefix", help="falsifier ID prefix (default: from the id, e.g. LAYOUT)")
    n.add_argument("--description", help="one-line description")

    from provable.cli.analysis import add_parsers

    add_parsers(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return EXIT_USAGE
    from provable.cli.analysis import COMMANDS

    commands = {
        "validate": _validate,
        "status": _status,
        "new": _new,
        "check": _check,
        "dashboard": _dashboard,
        "merge": _merge,
        **COMMANDS,
    }
    try:
        return commands[args.command](args)
    except KeyboardInterrupt:  # pragma: no cover
        return 130
    except BrokenPipeError:  # pragma: no cover - `pv status | head`, `pv graph | head`
        return EXIT_OK


def _recover_named(arguments: Sequence[str]) -> None:
    """Finish or roll back an interrupted write around the files and folders named, so
    what is read next is whole (globs and missing names are left to discovery)."""
    from provable.plugin.writer import recover_around

    recover_around(Path(a) for a in arguments if Path(a).is_dir() or Path(a).is_file())


def _validate(args: argparse.Namespace) -> int:
    from provable.contracts.validate import UsageError, validate_arguments

    _recover_named(args.paths)
    try:
        report = validate_arguments(args.paths, strict=args.strict)
    except UsageError as exc:
        return usage(str(exc))
    print(report.render_json() if args.format == "json" else report.render_text())
    return EXIT_FINDINGS if report.errors else EXIT_OK


def _status(args: argparse.Namespace) -> int:
    from provable.contracts.discovery import UsageError, discover_all
    from provable.reports.status import (
        collect,
        print_table,
        problem_row,
        render_json,
        render_markdown,
    )

    arguments = args.paths or ["contracts"]
    _recover_named(arguments)
    try:
        found = discover_all(arguments)
    except UsageError as exc:
        return usage(str(exc))
    rows = [problem_row(p.path, p.message) for p in found.problems] + collect(found.files)
    for row in rows:  # a contract pv validate refuses: its row says error; here, why
        for finding in row.findings:
            print(finding.render(), file=sys.stderr)
    fmt = "json" if args.json else args.format
    if fmt == "json":
        print(render_json(rows))
    elif fmt == "markdown":
        print(render_markdown(rows))
    else:
        print_table(rows)
    return EXIT_FINDINGS if any(r.error for r in rows) else EXIT_OK


def _check(args: argparse.Namespace) -> int:
    import subprocess

    from provable.contracts.validate import UsageError, discover, validate_arguments
    from provable.reports.status import collect, print_table

    try:
        report = validate_arguments([args.contracts], strict=True)
    except UsageError as exc:
        return usage(str(exc))
    print(report.render_text(), flush=True)
    if report.errors:
        print("pv check: contracts are invalid; falsifiers not run", file=sys.stderr)
        return EXIT_FINDINGS
    cmd = [sys.executable, "-m", "pytest", args.falsifiers, *args.pytest_args]
    print(f"$ {' '.join(cmd[2:])}", flush=True)
    tests = subprocess.run(cmd).returncode
    print_table(collect(discover([args.contracts])))
    from provable.reports.dashboard import build_dashboard, print_summary, unchecked_lines

    evidence = Path(args.contracts).resolve().parent / "evidence"
    board = build_dashboard(Path(args.contracts), evidence, Path(args.dashboard))
    print_summary(board)
    unchecked = unchecked_lines(board)  # a claim whose last run errored was not tested
    for line in unchecked:
        print(f"pv check: {line}", file=sys.stderr)
    return EXIT_OK if tests == 0 and not unchecked else EXIT_FINDINGS


def _new(args: argparse.Namespace) -> int:
    from provable.reports.scaffold import new_contract

    try:
        path = new_contract(args.id, args.dir, prefix=args.prefix, description=args.description)
    except FileExistsError as exc:
        if exc.filename2 is None:  # from mkdir: the folder's name is taken by a file
            print(f"pv: {args.dir}: exists and is not a folder", file=sys.stderr)
        else:  # from the exclusive link of the contract itself
            print(f"pv: {exc.filename2} already exists; not overwritten", file=sys.stderr)
        return EXIT_FINDINGS
    except OSError as exc:  # a folder that cannot be made or written
        print(
            f"pv: cannot write {exc.filename or args.dir}: {exc.strerror or exc}", file=sys.stderr
        )
        return EXIT_FINDINGS
    except ValueError as exc:
        return usage(str(exc))
    print(f"wrote {path}")
    return EXIT_OK


def _add_dashboard_and_merge(sub: argparse._SubParsersAction) -> None:
    d = sub.add_parser(
        "dashboard",
        help="write the status dashboard (HTML, Markdown, JSON, badge, chart)",
        description="Write status.md, index.html, status.json, badge.svg and history.svg into "
        "--out from the contracts and their evidence. Exit 0; 1 with --check when a contract "
        "is FALSIFIED, a contract cannot be read, or a falsifier's last run errored or was "
        "flaky (not checked); 2 on usage errors.",
    )
    d.add_argument("--contracts", default="contracts", help="contracts folder (contracts/)")
    d.add_argument("--evidence", default="evidence", help="evidence folder (evidence/)")
    d.add_argument("--out", default="dashboard", help="output folder (dashboard/)")
    d.add_argument(
        "--check",
        action="store_true",
        help="exit 1 when any contract is FALSIFIED or any falsifier is not checked",
    )
    d.add_argument("--json", action="store_true", help="print status.json instead of a summary")

    m = sub.add_parser(
        "merge",
        help="merge the contracts + evidence of separate runs (CPU job, GPU job)",
        description="Each RUN is a folder holding a run's contracts/ and evidence/. Passes on "
        "different hosts combine, a failure wins, a host's newer observation replaces its "
        "older one; conflicts are reported. Same result in any order. Runs are untrusted: no "
        "symlink is followed, no unsafe id names a path, evidence is read within bounds. Exit "
        "0; 1 when conflicts were found (the failure side is kept), or with --strict when "
        "anything was left out; 2 on usage errors, unreadable runs, or a run holding a "
        "symlink or an unsafe id (nothing is written).",
    )
    m.add_argument("runs", nargs="+", metavar="RUN", help="run folders (contracts/ + evidence/)")
    m.add_argument("--out", required=True, type=Path, help="where to write the merged state")
    m.add_argument("--json", action="store_true", help="the merge report as JSON")
    m.add_argument(
        "--strict",
        action="store_true",
        help="exit 1 when something was left out: evidence that cannot be read, a host kind "
        "other than cpu/cuda, evidence of a falsifier no contract declares",
    )


def _dashboard(args: argparse.Namespace) -> int:
    from provable.contracts.validate import UsageError
    from provable.reports.dashboard import build_dashboard, print_summary, unchecked_lines

    try:
        board = build_dashboard(Path(args.contracts), Path(args.evidence), Path(args.out))
    except UsageError as exc:
        return usage(str(exc))
    if args.json:
        print(board.status_json)
    else:
        print_summary(board)
    if args.check:
        for line in unchecked_lines(board):
            print(f"pv dashboard: {line}", file=sys.stderr)
    failed = board.falsified or board.errors or board.unchecked
    return EXIT_FINDINGS if args.check and failed else EXIT_OK


def _merge(args: argparse.Namespace) -> int:
    import json

    from provable.reports.merge import MergeError, merge_runs, print_report

    try:
        report = merge_runs([Path(r) for r in args.runs], args.out, strict=args.strict)
    except MergeError as exc:
        return usage(str(exc))
    if args.json:
        print(json.dumps(report.to_json(), indent=2))
    else:
        print_report(report)
    return report.exit_code()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
