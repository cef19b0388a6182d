"""The plugin writes nowhere but below the contracts and evidence folders, whatever the ids,
symlinks and journals of an untrusted contract say (issue: untrusted input, item 1)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from provable.contracts.paths import inside, is_safe_name
from provable.contracts.validate import discover, validate_paths
from provable.plugin.writer import JOURNAL_NAME, OutsideRoot, commit_files, recover


def contract(cid: str, fid: str) -> str:
    return (
        "metadata:\n"
        f"  id: {json.dumps(cid)}\n"
        '  version: "1.0.0"\n'
        "  description: d\n"
        "falsification_tests:\n"
        f"  - id: {json.dumps(fid)}\n"
        "    rule: r\n"
        "    prediction: p\n"
    )


def bound_test(fid: str) -> str:
    return f"import pytest\n\n@pytest.mark.falsifies({fid!r})\ndef test_t():\n    pass\n"


def tree(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*")}


@pytest.fixture
def project(tmp_path: Path) -> Path:
    root = tmp_path / "project"
    (root / "contracts").mkdir(parents=True)
    (root / "pyproject.toml").write_text("")
    return root


def run(pytester: pytest.Pytester, root: Path) -> pytest.RunResult:
    os.chdir(root)
    return pytester.runpytest_inprocess("-p", "no:cacheprovider", f"--rootdir={root}", str(root))


def test_a_falsifier_id_that_climbs_out_writes_nothing_there(pytester, project):
    outside = project.parent / "outside"
    outside.mkdir()
    fid = f"FALSIFY-TRAV-001/../../../../{outside.name}/TRAV_WRITTEN"
    (project / "contracts" / "trav-v1.yaml").write_text(contract("trav-v1", fid))
    (project / "test_trav.py").write_text(bound_test(fid))
    result = run(pytester, project)
    assert list(outside.iterdir()) == []
    assert "no evidence written: its id cannot name a file" in result.stdout.str()
    report = validate_paths(discover([str(project / "contracts")]))
    assert "falsifier-id-unsafe" in report.render_text()


def test_a_contract_id_that_climbs_out_writes_nothing_there(pytester, project):
    (project / "contracts" / "esc.yaml").write_text(
        contract("../../escaped_by_cid", "FALSIFY-ESC-001")
    )
    (project / "test_esc.py").write_text(bound_test("FALSIFY-ESC-001"))
    before = tree(project.parent)
    run(pytester, project)
    new = {p for p in tree(project.parent) - before if not p.startswith("project/")}
    assert new == set()


def test_an_evidence_folder_that_is_a_symlink_out_is_refused(pytester, project):
    outside = project.parent / "elsewhere"
    outside.mkdir()
    (project / "evidence").mkdir()
    (project / "evidence" / "demo-v1").symlink_to(outside, target_is_directory=True)
    (project / "contracts" / "demo-v1.yaml").write_text(contract("demo-v1", "FALSIFY-DEMO-001"))
    (project / "test_demo.py").write_text(bound_test("FALSIFY-DEMO-001"))
    result = run(pytester, project)
    assert list(outside.iterdir()) == []
    assert "refused to write" in result.stdout.str()


def test_commit_files_refuses_a_target_outside_its_folders(tmp_path):
    (tmp_path / "pyproject.toml").write_text("")
    folder = tmp_path / "contracts"
    folder.mkdir()
    with pytest.raises(OutsideRoot):
        commit_files(folder, [(tmp_path / "elsewhere" / "x.json", "{}")], [])
    assert not (tmp_path / "elsewhere").exists()


def test_a_planted_journal_renames_nothing_outside(tmp_path):
    (tmp_path / "pyproject.toml").write_text("")
    folder = tmp_path / "contracts"
    folder.mkdir()
    victim = tmp_path / "victim.txt"
    victim.write_text("keep me")
    planted = tmp_path / ".victim.txt.abcdefgh.tmp"
    planted.write_text("overwritten")
    (folder / JOURNAL_NAME).write_text(json.dumps({"renames": [[str(planted), str(victim)]]}))
    actions = recover(folder, tmp_path / "evidence")
    assert victim.read_text() == "keep me"
    assert any("ignored a journal" in a for a in actions)


LOOKALIKES = ["..", "/", "\\", "\x00", "\u2215", "\uff0e\uff0e", "\u2024\u2024", "~", ":"]


@settings(
    max_examples=12,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    parts=st.lists(
        st.sampled_from([*LOOKALIKES, "FALSIFY-X-001", "etc", "passwd", "/tmp", "a.b"]),
        min_size=1,
        max_size=5,
    )
)
def test_no_id_makes_the_plugin_write_outside_the_project(pytester, tmp_path, parts):
    root = tmp_path / f"p{abs(hash(tuple(parts)))}"
    (root / "contracts").mkdir(parents=True)
    (root / "pyproject.toml").write_text("")
    fid = "".join(parts).replace("\x00", "\\x00")
    (root / "contracts" / "x-v1.yaml").write_text(contract("x-v1", fid))
    (root / "test_x.py").write_text(bound_test(fid))
    before = tree(tmp_path)
    run(pytester, root)
    written = {p for p in tree(tmp_path) - before if not p.startswith(root.name + "/")}
    assert written == set()
    if not is_safe_name(fid):
        assert not (root / "evidence" / "x-v1").exists() or all(
            inside(p, root / "evidence") for p in (root / "evidence").rglob("*")
        )
