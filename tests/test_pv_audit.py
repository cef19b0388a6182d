"""``pv audit``: the chain equation → obligation → falsifier → bound test → current evidence."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from falsifiers.mini_project import (
    BROKEN_CHAIN,
    BROKEN_TESTS,
    MINI_CONTRACT,
    MINI_TEST,
    git,
    make_project,
    run_pv,
    run_pytest,
)
from provable.contracts.loading import load_contracts
from provable.reports.audit import audit, chain_findings
from provable.reports.chain import build_chain

ROOT = Path(__file__).resolve().parents[1]


def rules(findings, severity="error"):
    return sorted({f.rule for f in findings if f.severity == severity})


def test_every_project_contract_has_a_complete_chain():
    contracts, _ = load_contracts([str(ROOT / "contracts")])
    assert contracts
    for c in contracts:
        chain = build_chain(c)
        # errors only: a falsifier added by another branch without its `obligation:` link is
        # a warning to fix, not a broken chain
        assert [f.render() for f in chain_findings(chain) if f.severity == "error"] == []
        assert chain.covered_obligations == len(chain.obligations)


def test_audit_of_this_project_binds_every_falsifier_and_every_binding(monkeypatch):
    """`pv audit contracts/ --binding binding.yaml` on the project itself.

    Evidence staleness is left out of this assertion: which evidence is current depends on
    when `pv check` last ran, not on this branch's code (see test_stale_* below)."""
    monkeypatch.chdir(ROOT)
    report = audit(["contracts"], binding=ROOT / "binding.yaml")
    other = [
        f.render() for f in report.findings if f.rule != "evidence-stale" and f.severity == "error"
    ]
    assert other == []
    totals = report.totals()
    assert totals["falsifiers"] >= 37 and totals["bound"] == totals["falsifiers"]


def test_hand_made_broken_chain_reports_every_gap(tmp_path, monkeypatch):
    root = make_project(tmp_path, BROKEN_CHAIN, BROKEN_TESTS, name="broken-v1", with_git=False)
    monkeypatch.chdir(root)
    report = audit(["contracts"])
    text = report.render_text()
    by_rule = {f.rule: [] for f in report.findings}
    for f in report.findings:
        by_rule[f.rule].append(f.message)
    assert any("equation orphan has no proof obligation" in m for m in by_rule["trace-equation"])
    assert any("'nobody attacks me' has no falsifier" in m for m in by_rule["trace-obligation"])
    assert any("'names a ghost'" in m and "ghost" in m for m in by_rule["trace-link"])
    assert any(
        "FALSIFY-BROKEN-002 names obligation 'no such obligation'" in m
        for m in by_rule["trace-link"]
    )
    # a free-text test: field binds nothing
    assert any(
        "FALSIFY-BROKEN-003 has no test bound" in m and "proptest over everything" in m
        for m in by_rule["trace-unbound"]
    )
    # a marker naming an unknown falsifier is a dangling binding, found by collection
    assert any("FALSIFY-BROKEN-099" in m for m in by_rule["trace-collect"])
    assert "FALSIFY-BROKEN-001" not in " ".join(by_rule["trace-unbound"])
    assert report.errors >= 6
    for line in text.splitlines()[:-1]:  # pv validate's format: path:line: severity [rule] msg
        assert line.split(":", 2)[1].isdigit(), line
    assert report.totals()["bound"] == 2


def test_cli_exit_codes_and_json(tmp_path):
    root = make_project(tmp_path, BROKEN_CHAIN, BROKEN_TESTS, name="broken-v1", with_git=False)
    result = run_pv(root, "audit", "contracts", "--json")
    assert result.returncode == 1, result.stderr
    doc = json.loads(result.stdout)
    assert doc["summary"]["errors"] >= 6 and doc["summary"]["falsifiers"] == 3
    assert run_pv(root, "audit", "nowhere/").returncode == 2
    assert run_pv(root, "audit", "contracts", "--binding", "missing.yaml").returncode == 2


def _discharge(root: Path) -> None:
    result = run_pytest(root)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "status: DISCHARGED" in (root / "contracts" / "mini-v1.yaml").read_text()
    git(root, "add", "-A")
    git(root, "commit", "-q", "-m", "discharge")


@pytest.fixture(scope="module")
def discharged_template(tmp_path_factory) -> Path:
    """A git project whose falsifier a real pytest run discharged (built once: it is slow)."""
    root = make_project(tmp_path_factory.mktemp("discharged"))
    _discharge(root)
    return root


@pytest.fixture
def discharged(discharged_template, tmp_path, monkeypatch) -> Path:
    root = tmp_path / "project"
    shutil.copytree(discharged_template, root, symlinks=True)
    monkeypatch.chdir(root)
    return root


EVIDENCE = Path("evidence") / "mini-v1" / "FALSIFY-MINI-001.json"


# The main demonstration (discharge, edit the bound test, stale; re-run, clean) is the
# falsifier FALSIFY-AUDIT-001 in falsifiers/test_traceability_v1.py.


def test_stale_evidence_without_sources_uses_git_diff(discharged):
    """Evidence written before sources were recorded: git diff against its commit decides."""
    root = discharged
    record = json.loads((root / EVIDENCE).read_text())
    for section in record["runs"].values():
        section.pop("sources")
    (root / EVIDENCE).write_text(json.dumps(record, indent=2))
    git(root, "commit", "-qam", "old-style evidence")
    assert audit(["contracts"]).errors == 0
    (root / "falsifiers" / "test_mini_v1.py").write_text(MINI_TEST + "\n# edited\n")
    assert rules(audit(["contracts"]).findings) == ["evidence-stale"]


def test_evidence_from_a_commit_off_this_history_is_stale(discharged):
    root = discharged
    git(root, "checkout", "-q", "-b", "side")
    (root / "SIDE").write_text("a commit only this branch has\n")
    git(root, "add", "-A")
    git(root, "commit", "-q", "-m", "side")
    side = git(root, "rev-parse", "HEAD")
    git(root, "checkout", "-q", "main")
    record = json.loads((root / EVIDENCE).read_text())
    record["runs"]["cpu"]["commit"] = side  # as if observed on the side branch
    (root / EVIDENCE).write_text(json.dumps(record))
    stale = [f.message for f in audit(["contracts"]).findings if f.rule == "evidence-stale"]
    assert len(stale) == 1 and "not an ancestor of HEAD" in stale[0]
    record["runs"]["cpu"]["commit"] = "f" * 40
    (root / EVIDENCE).write_text(json.dumps(record))
    stale = [f.message for f in audit(["contracts"]).findings if f.rule == "evidence-stale"]
    assert len(stale) == 1 and "not in this repository" in stale[0]


def test_evidence_naming_tests_no_longer_bound_is_stale(discharged):
    root = discharged
    record = json.loads((root / EVIDENCE).read_text())
    record["runs"]["cpu"]["tests"].append(
        {"nodeid": "falsifiers/test_mini_v1.py::test_renamed_away", "outcome": "passed"}
    )
    (root / EVIDENCE).write_text(json.dumps(record))
    stale = [f.message for f in audit(["contracts"]).findings if f.rule == "evidence-stale"]
    assert len(stale) == 1 and "test_renamed_away" in stale[0]


@pytest.mark.parametrize("mutation", ["drop-obligation", "drop-equation-link"])
def test_chain_gaps_are_caught_on_a_real_contract(tmp_path, mutation):
    """Injected defects on a real project contract: each turns the chain red."""
    text = (ROOT / "contracts" / "tied-embeddings-v1.yaml").read_text()
    if mutation == "drop-obligation":
        text = text.replace('    obligation: "untied head is its own"\n', "")
        text = text.replace(
            '    obligations: ["tied head is explicit", "untied head is its own"]\n', ""
        )
        expected = "trace-obligation"
    else:
        text = text.replace("  tied_head:", "  tied_head:\n    formula: x\n  other:", 1)
        expected = "trace-equation"
    folder = tmp_path / "contracts"
    folder.mkdir()
    (folder / "tied-embeddings-v1.yaml").write_text(text)
    contracts, _ = load_contracts([str(folder)])
    assert expected in rules(chain_findings(build_chain(contracts[0])))


def test_single_equation_and_single_obligation_need_no_links(tmp_path):
    root = make_project(tmp_path, MINI_CONTRACT, None, with_git=False)
    contracts, _ = load_contracts([str(root / "contracts")])
    chain = build_chain(contracts[0])
    assert chain_findings(chain) == []
    assert chain.obligations[0].equations == ["add"]
    assert chain.obligations[0].falsifiers == ["FALSIFY-MINI-001"]


def test_no_collection_outside_a_pytest_project(tmp_path, monkeypatch):
    folder = tmp_path / "loose"
    folder.mkdir()
    (folder / "mini-v1.yaml").write_text(MINI_CONTRACT)
    (folder / "test_should_not_be_imported.py").write_text("raise SystemExit('imported')\n")
    monkeypatch.chdir(tmp_path)
    report = audit([str(folder)])
    assert report.bound is None
    assert [f.rule for f in report.findings if f.severity != "note"] == ["trace-unbound"]
    assert any("bound tests not collected" in f.message for f in report.findings)
