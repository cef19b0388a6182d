"""``pv coverage``: obligations covered, falsifiers bound and discharged."""

from __future__ import annotations

import json
from pathlib import Path

from falsifiers.mini_project import BROKEN_CHAIN, BROKEN_TESTS, make_project, run_pv
from provable.contracts.loading import load_contracts
from provable.reports.bound import BoundTests
from provable.reports.coverage import coverage_rows, total_row

ROOT = Path(__file__).resolve().parents[1]


def test_rows_of_the_project_contracts():
    contracts, _ = load_contracts([str(ROOT / "contracts")])
    bound = BoundTests(
        bound={f"{c.id}:{f.id}": ["x::t"] for c in contracts for f in c.falsifiers[:1]}
    )
    rows = coverage_rows(contracts, bound)
    assert [r.contract for r in rows] == [c.id for c in contracts]
    for r, c in zip(rows, contracts, strict=True):
        assert r.obligations_covered == r.obligations  # every obligation is attacked
        assert r.falsifiers == len(c.falsifiers) and r.falsifiers_bound == 1
    total = total_row(rows)
    assert total.falsifiers_bound == len(contracts)
    assert total.falsifiers == sum(len(c.falsifiers) for c in contracts)


def test_cli_json_and_table_on_a_broken_project(tmp_path):
    root = make_project(tmp_path, BROKEN_CHAIN, BROKEN_TESTS, name="broken-v1", with_git=False)
    result = run_pv(root, "coverage", "--json")
    assert result.returncode == 0, result.stderr
    doc = json.loads(result.stdout)
    (row,) = doc["contracts"]
    assert row["obligations"] == 3 and row["obligations_covered"] == 1
    assert row["falsifiers"] == 3 and row["falsifiers_bound"] == 2
    assert row["falsifiers_discharged"] == 0 and row["falsifiers_bound_pct"] == 66.7
    assert doc["total"]["falsifiers_bound"] == 2
    table = run_pv(root, "coverage")
    assert "broken-v1" in table.stdout and "2/3 (66.7%)" in table.stdout
    assert run_pv(root, "coverage", "missing/").returncode == 2
