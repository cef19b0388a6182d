"""``pv audit``: the traceability chain of every contract, checked end to end.

equation → proof obligation → falsifier → bound test → current evidence. Each link is
checked against what exists, not what a file says: bound tests are the plugin's own binding
table from ``pytest --collect-only`` (a falsifier's free-text ``test:`` field binds nothing),
and evidence is current only if git says it was observed on this history with these tests.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from provable.contracts.evidence import read_evidence
from provable.contracts.findings import ERROR, NOTE, WARNING, Finding, Tally
from provable.contracts.loading import load_contracts
from provable.contracts.model import Contract
from provable.contracts.paths import project_root
from provable.plugin.staleness import in_git, stale_reasons
from provable.reports.binding import DEFAULT_TIMEOUT_S, check_bindings, load_binding_file
from provable.reports.bound import BoundTests, collect_bound_tests
from provable.reports.chain import Chain, build_chain

PYTEST_CONFIGS = ("pyproject.toml", "pytest.ini", "setup.cfg", "tox.ini")


@dataclass
class AuditReport(Tally):
    findings: list[Finding] = field(default_factory=list)
    contracts: list[Contract] = field(default_factory=list)
    chains: list[Chain] = field(default_factory=list)
    bound: BoundTests | None = None
    files: int = 0
    stale: int = 0

    def totals(self) -> dict[str, int]:
        falsifiers = [(c.id, f) for c in self.contracts for f in c.falsifiers]
        bound = self.bound
        return {
            "contracts": len(self.contracts),
            "equations": sum(len(ch.equations) for ch in self.chains),
            "obligations": sum(len(ch.obligations) for ch in self.chains),
            "falsifiers": len(falsifiers),
            "bound": sum(bool(bound and bound.tests_of(cid, f.id)) for cid, f in falsifiers),
            "discharged": sum(f.status == "DISCHARGED" for _, f in falsifiers),
            "stale": self.stale,
        }

    def summary(self) -> str:
        t = self.totals()
        return (
            f"{self.errors} error{'s' * (self.errors != 1)}, "
            f"{self.warnings} warning{'s' * (self.warnings != 1)} in {t['contracts']} contracts: "
            f"{t['equations']} equations, {t['obligations']} obligations, "
            f"{t['falsifiers']} falsifiers ({t['bound']} bound to tests, "
            f"{t['discharged']} discharged, {t['stale']} with stale evidence)"
        )

    def render_text(self) -> str:
        lines = [f.render() for f in self.findings]
        lines.append(self.summary())
        if not self.errors:
            lines.append("Traceability chain is complete.")
        return "\n".join(lines)

    def render_json(self) -> str:
        return json.dumps(
            {
                "findings": [f.as_dict() for f in self.findings],
                "summary": {**self.totals(), "errors": self.errors, "warnings": self.warnings},
            },
            indent=2,
        )


def audit(
    arguments: Sequence[str],
    test_paths: Sequence[str] = (),
    binding: Path | None = None,
    root: Path | None = None,
    binding_timeout: float = DEFAULT_TIMEOUT_S,
) -> AuditReport:
    """Raises ``UsageError`` for an argument naming nothing, ``CollectionFailed`` when pytest
    cannot collect at all. The bound modules of ``binding`` are imported in a child process,
    never here (``binding_timeout``: seconds one import may take)."""
    contracts, validation = load_contracts(arguments)
    report = AuditReport(findings=list(validation.findings), contracts=contracts)
    report.files = validation.files
    report.chains = [build_chain(c) for c in contracts]
    for chain in report.chains:
        report.findings.extend(chain_findings(chain))
    if contracts:
        root = Path(root) if root else project_root(contracts[0].path)
        if is_pytest_project(root):
            report.bound = collect_bound_tests(root, test_paths)
            report.findings.extend(_collection_findings(report.bound))
            for c in contracts:
                report.findings.extend(_binding_findings(c, report.bound))
        else:
            report.findings.append(
                Finding(
                    contracts[0].shown_path,
                    1,
                    WARNING,
                    "trace-unbound",
                    f"no pytest project (pyproject.toml, pytest.ini, setup.cfg, tox.ini) at "
                    f"{root}: bound tests not collected",
                )
            )
        report.findings.extend(_evidence_findings(report, contracts))
    if binding is not None:
        report.findings.extend(
            check_bindings(
                load_binding_file(binding), {c.id: c for c in contracts}, binding_timeout
            )
        )
    report.findings.sort(key=lambda f: (f.path, f.line, f.rule))
    return report


def is_pytest_project(root: Path) -> bool:
    """Collecting outside a project would import whatever test files lie around."""
    return any((root / name).is_file() for name in PYTEST_CONFIGS)


def chain_findings(chain: Chain) -> list[Finding]:
    c = chain.contract
    out: list[Finding] = []
    for name, line in chain.equations.items():
        if not chain.obligations_of(name):
            out.append(
                Finding(
                    c.shown_path,
                    line,
                    ERROR,
                    "trace-equation",
                    f"equation {name} has no proof obligation (give one `equation: {name}`)",
                )
            )
    for o in chain.obligations:
        for name in o.unknown_equations:
            out.append(
                Finding(
                    c.shown_path,
                    o.line,
                    ERROR,
                    "trace-link",
                    f"obligation {o.label} names equation {name!r}, which {c.id} does not have",
                )
            )
        if chain.equations and not o.equations and not o.unknown_equations:
            out.append(
                Finding(
                    c.shown_path,
                    o.line,
                    WARNING,
                    "trace-link",
                    f"obligation {o.label} names no equation and {c.id} has "
                    f"{len(chain.equations)}: add `equation: NAME`",
                )
            )
        if not o.falsifiers:
            out.append(
                Finding(
                    c.shown_path,
                    o.line,
                    ERROR,
                    "trace-obligation",
                    f"obligation {o.label} has no falsifier "
                    "(name it in a falsifier's `obligation:`)",
                )
            )
    linked = {fid for o in chain.obligations for fid in o.falsifiers}
    for f in c.falsifiers:
        for ref in chain.dangling.get(f.id, []):
            out.append(
                Finding(
                    c.shown_path,
                    f.line,
                    ERROR,
                    "trace-link",
                    f"{f.id} names obligation {ref!r}, which {c.id} does not have "
                    "(an obligation's id or property)",
                )
            )
        if f.id not in linked and f.id not in chain.dangling and chain.obligations:
            out.append(
                Finding(
                    c.shown_path,
                    f.line,
                    WARNING,
                    "trace-link",
                    f"{f.id} attacks no obligation: add `obligation: ID-OR-PROPERTY`",
                )
            )
    return out


_LOCATION = re.compile(r"^(?P<path>[^:\s]+\.py):(?P<line>\d+):")


def _collection_findings(bound: BoundTests) -> list[Finding]:
    out = []
    for nodeid, message in sorted(bound.errors.items()):
        m = _LOCATION.match(message)
        path = m["path"] if m else nodeid.split("::", 1)[0]
        line = int(m["line"]) if m else 1
        out.append(
            Finding(path, line, ERROR, "trace-collect", f"{nodeid}: {message} (pytest collection)")
        )
    return out


def _binding_findings(c: Contract, bound: BoundTests) -> list[Finding]:
    out = []
    for f in c.falsifiers:
        if bound.tests_of(c.id, f.id):
            continue
        said = f" (its test: field, {f.test!r}, binds nothing)" if f.test else ""
        out.append(
            Finding(
                c.shown_path,
                f.line,
                ERROR,
                "trace-unbound",
                f"{f.id} has no test bound with @pytest.mark.falsifies{said}",
            )
        )
    return out


def _evidence_findings(report: AuditReport, contracts: list[Contract]) -> list[Finding]:
    out: list[Finding] = []
    git_checked: dict[Path, bool] = {}
    for c in contracts:
        root = project_root(c.path)
        if root not in git_checked:
            git_checked[root] = in_git(root)
            if not git_checked[root]:
                out.append(
                    Finding(
                        c.shown_path,
                        1,
                        NOTE,
                        "evidence-stale",
                        f"{root} is not a git repository: evidence currency not checked",
                    )
                )
        if not git_checked[root]:
            continue
        for f in c.falsifiers:
            if f.status != "DISCHARGED" or not f.evidence:
                continue
            record = read_evidence(root / f.evidence)
            if record is None:
                continue  # pv validate's evidence rule reports it
            reasons = stale_reasons(root, record)
            reasons += _unbound_evidence(record, report.bound, c.id, f.id)
            if reasons:
                report.stale += 1
                out.append(
                    Finding(
                        c.shown_path,
                        f.line,
                        ERROR,
                        "evidence-stale",
                        f"{f.id} is DISCHARGED on stale evidence ({f.evidence}): "
                        + "; ".join(reasons)
                        + " (re-run: pytest --falsifier "
                        + f.id
                        + ")",
                    )
                )
    return out


def _unbound_evidence(
    record: dict[str, object], bound: BoundTests | None, cid: str, fid: str
) -> list[str]:
    """Tests the evidence ran that are no longer bound to the falsifier (renamed, removed)."""
    if bound is None:
        return []
    now = set(bound.tests_of(cid, fid))
    ran: set[str] = set()
    runs = record.get("runs")
    for section in (runs if isinstance(runs, dict) else {}).values():
        for t in section.get("tests", []) if isinstance(section, dict) else []:
            if isinstance(t, dict) and isinstance(t.get("nodeid"), str):
                ran.add(t["nodeid"])
    gone = sorted(ran - now)
    if not gone:
        return []
    more = f" and {len(gone) - 3} more" if len(gone) > 3 else ""
    return [f"evidence names tests no longer bound: {', '.join(gone[:3])}{more}"]
