"""The ``pv`` subcommands beyond validate/status/new/check: scaffold, audit, coverage, graph,
diff, equations. ``provable.cli.main`` only registers them (``add_parsers``/``COMMANDS``), so this
file and that one change independently.

Exit codes, as for every ``pv`` command: 0 nothing wrong; 1 findings (errors, an unbumped
version, a cycle...), a contract ``pv validate`` refuses among them (each command reads
contracts through ``provable.contracts.loading.read_checked`` and prints validate's lines); 2 usage
(a name naming nothing, a folder or a binding registry where a contract file is wanted).
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from provable.cli.exits import EXIT_FINDINGS, EXIT_OK, usage

if TYPE_CHECKING:
    from provable.contracts.model import Contract


def add_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "scaffold",
        help="a pytest module with one failing test per falsifier of a contract",
        description="Write <out>/test_<id>.py: one test per falsifier, each bound with "
        "@pytest.mark.falsifies and failing 'not yet written' until you write it. Re-running "
        "adds tests only for falsifiers no test binds yet; written tests are never touched. "
        "CONTRACT is a file, or a contract id looked up in the project's contracts/ folder. "
        "Exit 0; 1 when pv validate refuses the contract, its id cannot name a file, the "
        "module would resolve outside --out or the existing module cannot be read; 2 when "
        "CONTRACT names nothing.",
    )
    p.add_argument("contract", metavar="CONTRACT", help="contract file or contract id")
    p.add_argument(
        "--out",
        type=Path,
        help="folder (falsifiers/; for a contract id, the project root's falsifiers/)",
    )
    p.add_argument("--json", action="store_true", help="what was written, as JSON")

    a = sub.add_parser(
        "audit",
        help="traceability: equation -> obligation -> falsifier -> bound test -> evidence",
        description="Check every contract's chain: each equation has a proof obligation, each "
        "obligation a falsifier, each falsifier a test bound by the plugin (collected with "
        "pytest --collect-only, nothing runs), each DISCHARGED falsifier current evidence "
        "(its commit an ancestor of HEAD, its test files unchanged since). With --binding, "
        "each binding.yaml entry must import and match its signature. Exit 0 with no "
        "errors, 1 with errors, 2 on usage errors.",
    )
    a.add_argument("paths", nargs="*", metavar="PATH", help="contracts (contracts/)")
    a.add_argument("--binding", type=Path, metavar="FILE", help="binding registry to check")
    a.add_argument(
        "--binding-timeout",
        type=float,
        default=30.0,
        metavar="SECONDS",
        help="seconds one bound module may take to import, or one function to resolve (the "
        "binding file's modules are imported in a child process, never in pv's own)",
    )
    a.add_argument(
        "--tests",
        action="append",
        default=[],
        metavar="PATH",
        help="where to collect bound tests (repeatable; default: pytest's testpaths)",
    )
    a.add_argument("--strict", action="store_true", help="treat warnings as errors")
    a.add_argument("--format", choices=("text", "json"), default="text", help="output format")
    a.add_argument("--json", action="store_true", help="same as --format json")

    c = sub.add_parser(
        "coverage",
        help="obligations covered, falsifiers bound and discharged, per contract",
        description="Per contract and in total: obligations covered by falsifiers, "
        "falsifiers bound to tests (collected, not run), falsifiers DISCHARGED. Exit 0; 1 "
        "when pv validate refuses a contract (left out of the table); 2 on usage errors or "
        "when pytest cannot collect.",
    )
    c.add_argument("paths", nargs="*", metavar="PATH", help="contracts (contracts/)")
    c.add_argument("--tests", action="append", default=[], metavar="PATH", help="test paths")
    c.add_argument("--json", action="store_true", help="one JSON document")

    g = sub.add_parser(
        "graph",
        help="the depends_on DAG in topological order, cycles, refuted dependencies",
        description="Contracts in dependency order; cycles with their members; a contract "
        "whose dependency is FALSIFIED flagged (an error when it claims DISCHARGED). Exit 0, "
        "1 on a cycle, a missing dependency, DISCHARGED over FALSIFIED or a contract pv "
        "validate refuses (left out of the graph), 2 on usage errors.",
    )
    g.add_argument("paths", nargs="*", metavar="PATH", help="contracts (contracts/)")
    g.add_argument(
        "--format", choices=("text", "dot", "mermaid", "json"), default="text", help="output"
    )
    g.add_argument("--json", action="store_true", help="same as --format json")

    d = sub.add_parser(
        "diff",
        help="what changed between two versions of a contract, and the semver bump it needs",
        description="Falsifiers, equations, obligations, invariants, tolerances and hosts "
        "added, removed, reworded, loosened or tightened. Removing or loosening a claim is "
        "major, adding or tightening one minor, rewording patch. Exit 0 when metadata.version "
        "was bumped enough, 1 when not or when pv validate refuses either file, 2 on usage "
        "errors.",
    )
    d.add_argument("old", metavar="OLD", help="the earlier contract file")
    d.add_argument("new", metavar="NEW", help="the later contract file")
    d.add_argument("--json", action="store_true", help="one JSON document")

    e = sub.add_parser(
        "equations",
        help="a contract's equations as text or LaTeX",
        description="Print the equations (formula, domain, codomain, invariants). Exit 0, 1 "
        "when pv validate refuses the contract, 2 on usage errors.",
    )
    e.add_argument("contract", metavar="CONTRACT", help="contract file")
    e.add_argument("--format", choices=("text", "latex", "json"), default="text", help="output")
    e.add_argument("--json", action="store_true", help="same as --format json")


def _one_contract(argument: str) -> Contract | int:
    """The contract a command line names, read as ``pv validate`` reads it; else the exit
    code, once the reason is printed: 2 (usage) for a name naming nothing, a folder or a
    binding registry; 1 when validate refuses the file (each refusal on its own line)."""
    from provable.contracts.loading import read_checked

    path = Path(argument)
    if not path.exists() and not path.is_symlink():
        return usage(f"{argument}: no such file")
    if path.is_dir():
        return usage(f"{argument}: is a folder, not a contract file")
    result = read_checked(path)
    if result.registry:
        return usage(f"{argument}: a binding registry, not a contract")
    if result.usable is None:
        for finding in result.refusals:
            print(finding.render(), file=sys.stderr)
        return EXIT_FINDINGS
    return result.usable


_CONTRACT_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*", re.ASCII)


def _looks_like_id(argument: str) -> bool:
    from provable.contracts.discovery import is_yaml_name

    return bool(_CONTRACT_ID.fullmatch(argument)) and not is_yaml_name(argument)


def _contract_by_id(argument: str) -> tuple[Path | None, str]:
    """The file of contract id ``argument``: ``contracts/<id>.yaml`` (or ``.yml``) under the
    project root found from the working directory, else the one file in that folder whose
    ``metadata.id`` it is; or a one-line reason naming both tries."""
    from provable.contracts.discovery import discover_all
    from provable.contracts.findings import display_path
    from provable.contracts.loading import read_checked
    from provable.contracts.paths import project_root

    # as for a file in ./contracts/: the nearest folder with a project marker, else here
    folder = project_root(Path.cwd() / "contracts" / "_") / "contracts"
    shown = display_path(folder).rstrip("/") + "/"
    for suffix in (".yaml", ".yml"):
        if (folder / f"{argument}{suffix}").is_file():
            return folder / f"{argument}{suffix}", ""
    matches = []
    if folder.is_dir():
        for path in discover_all([str(folder)]).files:
            # what could be read of a refused contract still names it: it is then refused
            # with validate's lines, not called missing; an unreadable one is no match
            contract = read_checked(path).contract
            if contract is not None and contract.id == argument:
                matches.append(path)
    if len(matches) == 1:
        return matches[0], ""
    if matches:
        names = ", ".join(display_path(m) for m in matches)
        return None, f"{argument}: {len(matches)} contracts in {shown} have that id: {names}"
    return None, f"{argument}: no such file, and no contract with that id in {shown}"


def _scaffold(args: argparse.Namespace) -> int:
    import json

    from provable.contracts.findings import display_path
    from provable.contracts.paths import project_root
    from provable.reports.skeleton import ScaffoldRefused, scaffold, unsafe_id

    path, out = Path(args.contract), args.out
    if not path.is_file() and _looks_like_id(args.contract):
        found, problem = _contract_by_id(args.contract)
        if found is not None:
            path = found
            if out is None:  # from a subfolder too: beside the project's other falsifiers
                out = project_root(found) / "falsifiers"
        elif not path.exists() and not path.is_symlink():
            return usage(problem)  # else the folder, the dangling link, says what it is
    args.out = Path("falsifiers") if out is None else out
    contract = _one_contract(str(path))
    if isinstance(contract, int):
        return contract
    unsafe = unsafe_id(contract)
    if unsafe is not None:
        print(unsafe.render(), file=sys.stderr)
        return EXIT_FINDINGS
    try:
        result = scaffold(contract, args.out)
    except ScaffoldRefused as exc:
        print(exc.finding.render(), file=sys.stderr)
        return EXIT_FINDINGS
    except OSError as exc:
        print(f"pv: cannot write in {args.out}: {exc}", file=sys.stderr)
        return EXIT_FINDINGS
    if args.json:
        print(
            json.dumps(
                {
                    "path": str(result.path),
                    "created": result.created,
                    "added": result.added,
                    "present": result.present,
                },
                indent=2,
            )
        )
    elif result.added:
        verb = "wrote" if result.created else "extended"
        added = ", ".join(result.added)
        shown = display_path(result.path)
        print(f"{verb} {shown}: {len(result.added)} failing test(s) for {added}")
    elif not contract.falsifiers:
        print(
            f"{contract.shown_path}: declares no falsifiers (falsification_tests is empty or "
            "absent); nothing written"
        )
    else:
        print(f"{display_path(result.path)}: every falsifier already has a test; nothing written")
    return EXIT_OK


def _audit(args: argparse.Namespace) -> int:
    from provable.contracts.validate import UsageError
    from provable.reports.audit import audit
    from provable.reports.bound import CollectionFailed

    if args.binding is not None and not args.binding.is_file():
        return usage(f"{args.binding}: no such binding file")
    if not args.binding_timeout > 0:
        return usage("--binding-timeout must be a positive number of seconds")
    try:
        report = audit(
            args.paths or ["contracts"],
            args.tests,
            args.binding,
            binding_timeout=args.binding_timeout,
        )
    except (UsageError, CollectionFailed) as exc:
        return usage(str(exc))
    if args.strict:
        report.findings = [f.strict() for f in report.findings]
    print(report.render_json() if args.json or args.format == "json" else report.render_text())
    return EXIT_FINDINGS if report.errors else EXIT_OK


def _coverage(args: argparse.Namespace) -> int:
    from provable.contracts.loading import read_arguments, refusals, usable
    from provable.contracts.paths import project_root
    from provable.contracts.validate import UsageError
    from provable.reports.bound import CollectionFailed, collect_bound_tests
    from provable.reports.coverage import coverage_rows, print_table, render_json

    try:
        results, problems = read_arguments(args.paths or ["contracts"])
        contracts = usable(results)
        bound = (
            collect_bound_tests(project_root(contracts[0].path), args.tests) if contracts else None
        )
    except (UsageError, CollectionFailed) as exc:
        return usage(str(exc))
    refused = [*problems, *refusals(results)]
    for f in refused:
        print(f.render(), file=sys.stderr)
    rows = coverage_rows(contracts, bound)
    if args.json:
        print(render_json(rows))
    else:
        print_table(rows)
    return EXIT_FINDINGS if refused else EXIT_OK


def _graph(args: argparse.Namespace) -> int:
    from provable.contracts.loading import read_arguments, refusals, usable
    from provable.contracts.validate import UsageError
    from provable.reports import graph as g

    try:
        results, problems = read_arguments(args.paths or ["contracts"])
    except UsageError as exc:
        return usage(str(exc))
    graph = g.build_graph(usable(results), refused=[*problems, *refusals(results)])
    fmt = "json" if args.json else args.format
    render: dict[str, Callable[[g.Graph], str]] = {
        "text": g.render_text,
        "dot": g.render_dot,
        "mermaid": g.render_mermaid,
        "json": g.render_json,
    }
    print(render[fmt](graph))
    findings = graph.findings()
    if fmt != "json":
        for f in findings:
            print(f.render(), file=sys.stderr if fmt != "text" else sys.stdout)
    return EXIT_FINDINGS if any(f.severity == "error" for f in findings) else EXIT_OK


def _diff(args: argparse.Namespace) -> int:
    from provable.reports.contract_diff import diff_contracts

    old, new = _one_contract(args.old), _one_contract(args.new)  # both say what is wrong
    if isinstance(old, int) or isinstance(new, int):
        return max(code for code in (old, new) if isinstance(code, int))
    result = diff_contracts(old, new)
    print(result.render_json() if args.json else result.render_text())
    return EXIT_OK if result.enough else EXIT_FINDINGS


def _equations(args: argparse.Namespace) -> int:
    from provable.reports import equations as eq

    contract = _one_contract(args.contract)
    if isinstance(contract, int):
        return contract
    found = eq.equations_of(contract)
    fmt = "json" if args.json else args.format
    render = {"text": eq.render_text, "latex": eq.render_latex, "json": eq.render_json}[fmt]
    print(render(contract, found))
    return EXIT_OK


COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "scaffold": _scaffold,
    "audit": _audit,
    "coverage": _coverage,
    "graph": _graph,
    "diff": _diff,
    "equations": _equations,
}
