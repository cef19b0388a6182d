"""Issue 21, items 7 and 10: every ``pv`` command reads a contract as ``pv validate`` does.

A contract that validate refuses (duplicate keys, wrong types, an id not of the dialect's
shape, YAML it cannot read) is refused by every command, with validate's own
``path:line: error [rule] message`` lines and one exit code: 1 (the file was read and found
wanting, as validate says it), while 2 stays for a command line naming nothing. ``pv
scaffold`` builds a file name from a contract id only when the id is of the safe shape, and
writes only below ``--out``; its messages say what is wrong, naming file and field.
"""

from __future__ import annotations

import ast
import json
import os
from pathlib import Path
from types import SimpleNamespace

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from provable.cli.main import main
from provable.contracts.loading import read_checked
from provable.contracts.model import load_contract
from provable.reports.skeleton import ScaffoldRefused, module_path, scaffold
from tests.conftest import SHARED_CONTRACTS

GOOD = """\
metadata:
  id: good-v1
  version: "1.0.0"
  status: PROPOSED
  description: "a readable contract"
equations:
  add: {formula: "a + b = b + a"}
falsification_tests:
  - {id: FALSIFY-GOOD-001, rule: r, prediction: p}
"""

#: the second ``metadata`` is the one a YAML reader that keeps the last would use
DUPLICATE = """\
metadata:
  id: dup-v1
  version: "1.0.0"
  status: PROPOSED
  description: "first"
equations:
  add: {formula: "a + b = b + a"}
falsification_tests:
  - {id: FALSIFY-DUP-001, rule: r, prediction: p}
metadata:
  id: dup-v1
  version: "9.0.0"
"""

#: falsifier ids of the wrong type: the old reader dropped them without a word
WRONG_TYPES = """\
metadata:
  id: types-v1
  version: "1.0.0"
  status: PROPOSED
falsification_tests:
  - id: 5
    rule: r
    prediction: p
  - id: null
    rule: r
    prediction: p
  - id: [a, b]
    rule: r
    prediction: p
"""

#: a contract id of the wrong shape (a path)
BAD_ID = """\
metadata:
  id: ../../escaped_by_cid
  version: "1.0.0"
  status: PROPOSED
falsification_tests:
  - {id: FALSIFY-ESC-001, rule: r, prediction: p}
"""

UNREADABLE = "metadata: [unclosed\n"


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A project (no pytest config: nothing is collected) with the working directory in
    it, so findings name ``contracts/<file>``."""
    (tmp_path / "contracts").mkdir()
    (tmp_path / "contracts" / "good-v1.yaml").write_text(GOOD, encoding="utf-8")
    monkeypatch.chdir(tmp_path)
    return tmp_path


def put(root: Path, name: str, text: str) -> str:
    path = root / "contracts" / f"{name}.yaml"
    path.write_text(text, encoding="utf-8")
    return f"contracts/{name}.yaml"


def argv_for(command: str, path: str) -> list[str]:
    """The command run on one contract file (``diff`` with a good contract beside it)."""
    return {
        "validate": ["validate", path],
        "audit": ["audit", path],
        "graph": ["graph", path],
        "status": ["status", path],
        "coverage": ["coverage", path],
        "diff": ["diff", "contracts/good-v1.yaml", path],
        "equations": ["equations", path],
        "scaffold": ["scaffold", path, "--out", "out"],
    }[command]


COMMANDS = ["validate", "audit", "graph", "status", "coverage", "diff", "equations", "scaffold"]
#: the five that read what validate refuses (item 7), and diff, which read it too
READERS = ["graph", "equations", "scaffold", "status", "coverage", "diff"]


def run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    rc = main(argv)
    captured = capsys.readouterr()
    return rc, captured.out + captured.err


# --- item 7: what validate refuses, every command refuses -------------------------------


@pytest.mark.parametrize("command", READERS)
def test_duplicate_top_level_key_is_refused_as_validate_refuses_it(project, capsys, command):
    path = put(project, "dup-v1", DUPLICATE)
    rc, _ = run(["validate", path], capsys)
    assert rc == 1
    rc, out = run(argv_for(command, path), capsys)
    assert rc == 1, out
    # validate's line, validate's format: path:line: error [rule] message
    assert f"{path}:10: error [duplicate-key] duplicate key 'metadata'" in out
    assert not (project / "out").exists()


@pytest.mark.parametrize("command", READERS)
def test_wrong_types_are_refused_naming_file_line_and_field(project, capsys, command):
    path = put(project, "types-v1", WRONG_TYPES)
    rc, out = run(argv_for(command, path), capsys)
    assert rc == 1, out
    for line, field, value in ((6, 0, "5"), (9, 1, "None"), (12, 2, "['a', 'b']")):
        assert (
            f"{path}:{line}: error [schema] falsification_tests[{field}].id: {value} is not of "
            "type 'string'" in out
        )
    assert "every falsifier already has a test" not in out
    assert not (project / "out").exists()


@pytest.mark.parametrize("command", READERS)
def test_an_id_not_of_the_dialects_shape_is_refused(project, capsys, command):
    path = put(project, "esc-v1", BAD_ID)
    rc, out = run(argv_for(command, path), capsys)
    assert rc == 1, out
    assert f"{path}:2: error [schema] metadata.id: '../../escaped_by_cid' does not match" in out
    assert not (project / "out").exists() and not (project.parent / "escaped_by_cid").exists()


@pytest.mark.parametrize("command", COMMANDS)
def test_an_unreadable_contract_exits_1_everywhere(project, capsys, command):
    path = put(project, "broken-v1", UNREADABLE)
    rc, out = run(argv_for(command, path), capsys)
    assert rc == 1, out
    assert f"{path}:2: error [yaml-syntax]" in out or f"{path}: line 2" in out, out


@pytest.mark.parametrize("command", COMMANDS)
def test_a_name_that_names_nothing_is_usage_everywhere(project, capsys, command):
    rc, out = run(argv_for(command, "contracts/none-v1.yaml"), capsys)
    assert rc == 2, out


def test_status_shows_the_refused_contract_as_a_row_with_its_error(project, capsys):
    path = put(project, "dup-v1", DUPLICATE)
    rc = main(["status", "--json", "contracts"])
    captured = capsys.readouterr()
    assert rc == 1
    rows = {r["id"]: r for r in json.loads(captured.out)["contracts"]}
    assert rows["good-v1"]["status"] == "PROPOSED" and "error" not in rows["good-v1"]
    assert rows["dup-v1"]["status"] == "INVALID"
    assert "error [duplicate-key] duplicate key 'metadata'" in rows["dup-v1"]["error"]
    assert f"{path}:10: error [duplicate-key]" in captured.err


def test_graph_json_lists_the_refusal_among_its_findings(project, capsys):
    path = put(project, "dup-v1", DUPLICATE)
    assert main(["graph", "--json", "contracts"]) == 1
    doc = json.loads(capsys.readouterr().out)
    assert doc["order"] == ["good-v1"]
    assert any(f["rule"] == "duplicate-key" and f["path"] == path for f in doc["findings"])


def test_location_findings_do_not_refuse_a_copy(project, capsys):
    """A contract copied out of its project (``git show HEAD~:contracts/x.yaml > old.yaml``)
    has another file name and no evidence beside it: those findings are about where the
    file lies, not what it says, and do not stop ``pv diff`` or ``pv equations``."""
    text = GOOD.replace(
        "rule: r, prediction: p}",
        "rule: r, prediction: p, status: DISCHARGED,\n"
        "     evidence: evidence/good-v1/FALSIFY-GOOD-001.json}",
    ).replace("status: PROPOSED", "status: DISCHARGED")
    (project / "old.yaml").write_text(text, encoding="utf-8")
    rc, out = run(["validate", "old.yaml"], capsys)
    assert rc == 1 and "[id-matches-file]" in out and "[evidence]" in out
    assert read_checked(project / "old.yaml").refusals == []
    assert run(["equations", "old.yaml"], capsys)[0] == 0
    assert run(["diff", "old.yaml", "old.yaml"], capsys)[0] == 0


def test_diff_names_what_is_wrong_with_both_files(project, capsys):
    old, new = put(project, "dup-v1", DUPLICATE), put(project, "types-v1", WRONG_TYPES)
    rc, out = run(["diff", old, new], capsys)
    assert rc == 1
    assert f"{old}:10: error [duplicate-key]" in out and f"{new}:6: error [schema]" in out
    rc, out = run(["diff", "contracts/none-v1.yaml", new], capsys)
    assert rc == 2 and "no such file" in out and f"{new}:6: error [schema]" in out


def test_what_a_contract_claims_is_validates_business_not_a_refusal(project, capsys):
    """A status that disagrees with its falsifiers, a changelog behind the version: validate
    says error, while status and diff still show and compare the contract (a draft)."""
    text = (
        GOOD.replace('version: "1.0.0"', 'version: "1.1.0"').replace(
            "status: PROPOSED", "status: DISCHARGED"
        )
        + 'changelog:\n  - {version: "1.0.0", date: "2026-01-01", change: created}\n'
    )
    path = put(project, "good-v1", text)
    rc, out = run(["validate", path], capsys)
    assert rc == 1 and "[status-derived]" in out and "[changelog]" in out
    assert run(["status", path], capsys)[0] == 0
    assert run(["diff", path, path], capsys)[0] == 0


@pytest.mark.skipif(not SHARED_CONTRACTS.is_dir(), reason="public contracts not present")
def test_the_public_contracts_are_read_by_every_command(tmp_path, monkeypatch, capsys):
    files = sorted(SHARED_CONTRACTS.rglob("*.yaml"))
    assert len(files) == 92
    for path in files:
        assert read_checked(path).refusals == [], path
    assert main(["status", str(SHARED_CONTRACTS)]) == 0
    assert main(["graph", str(SHARED_CONTRACTS)]) == 0
    monkeypatch.chdir(tmp_path)
    for path in files:
        if path.name == "binding.yaml":
            continue
        assert main(["equations", str(path)]) == 0, path
        assert main(["scaffold", str(path), "--out", "out"]) == 0, path
    capsys.readouterr()


# --- pv scaffold: safe names, output below --out, messages that say what is wrong -------


def test_a_nul_in_a_rule_is_scaffolded_not_called_an_unparsable_module(project, capsys):
    text = GOOD.replace("good-v1", "nul-v1").replace("rule: r", 'rule: "a\\0b"')
    path = put(project, "nul-v1", text)
    rc, out = run(["scaffold", path, "--out", "out"], capsys)
    assert rc == 0, out
    assert "does not parse" not in out and "wrote out/test_nul_v1.py" in out
    module = ast.parse((project / "out" / "test_nul_v1.py").read_text(encoding="utf-8"))
    (test,) = [n for n in module.body if isinstance(n, ast.FunctionDef)]
    assert "a\x00b" in (ast.get_docstring(test) or "")


def test_an_unparsable_existing_module_is_named(project, capsys):
    path = put(project, "good-v1", GOOD)
    (project / "out").mkdir()
    (project / "out" / "test_good_v1.py").write_text("def broken(:\n", encoding="utf-8")
    rc, out = run(["scaffold", path, "--out", "out"], capsys)
    assert rc == 1
    assert "out/test_good_v1.py:1: error [module-syntax] existing module does not parse" in out
    assert (project / "out" / "test_good_v1.py").read_text() == "def broken(:\n"


def test_a_contract_without_falsifiers_is_said_so_and_nothing_is_written(project, capsys):
    path = put(project, "bare-v1", 'metadata:\n  id: bare-v1\n  version: "1.0.0"\n')
    rc, out = run(["scaffold", path, "--out", "out"], capsys)
    assert rc == 0, out
    assert "every falsifier already has a test" not in out
    assert f"{path}: declares no falsifiers (falsification_tests is empty or absent)" in out
    assert not (project / "out").exists()


@pytest.mark.parametrize("stem", ["-lead", "a b", "a..b", "ａbc", "a\\b"])
def test_an_id_from_a_file_name_not_of_the_safe_shape_is_refused(project, capsys, stem):
    """No ``metadata.id``: the id is the file name, which the schema does not see."""
    path = project / "contracts" / f"{stem}.yaml"
    path.write_text('metadata:\n  version: "1.0.0"\n', encoding="utf-8")
    shown = f"contracts/{stem}.yaml"
    rc, out = run(["scaffold", shown, "--out", "out"], capsys)
    assert rc == 1, out
    assert f"error [contract-id-unsafe] contract id {stem!r} (the file name" in out
    assert not (project / "out").exists()


def test_a_module_path_that_resolves_outside_out_is_refused(project, capsys):
    path = put(project, "good-v1", GOOD)
    outside = project / "outside.py"
    outside.write_text("SECRET = 1\n", encoding="utf-8")
    (project / "out").mkdir()
    (project / "out" / "test_good_v1.py").symlink_to(outside)
    rc, out = run(["scaffold", path, "--out", "out"], capsys)
    assert rc == 1, out
    assert "out/test_good_v1.py:1: error [output-path] resolves to" in out
    assert f"{outside}, outside out" in out
    assert outside.read_text() == "SECRET = 1\n"
    assert (project / "out" / "test_good_v1.py").is_symlink()


_PIECES = st.sampled_from(
    [
        "..",
        ".",
        "/",
        "\\",
        "\x00",
        "a",
        "x-v1",
        "．．",  # fullwidth full stops
        "∕",  # division slash
        "⁄",  # fraction slash
        "＼",  # fullwidth reverse solidus
        "․",  # one dot leader
        "\u202e",  # right-to-left override
        "ABSOLUTE",  # replaced by the sandbox's own absolute path
    ]
)
HOSTILE_IDS = st.lists(_PIECES, min_size=1, max_size=8).map("".join)


def _files(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


def _sandbox(factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    base = factory.mktemp("sandbox")
    out = base / "a" / "b" / "out"
    (base / "a" / "b").mkdir(parents=True)
    return base, out


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(raw=HOSTILE_IDS, by_file_name=st.booleans(), plant_link=st.booleans())
def test_pv_scaffold_never_writes_outside_out(tmp_path_factory, raw, by_file_name, plant_link):
    """Any id, given as metadata.id or as the file name, with or without a symlink waiting
    at the module's name: nothing is written, created or changed outside ``--out``."""
    base, out = _sandbox(tmp_path_factory)
    contract_id = raw.replace("ABSOLUTE", str(base) + "/")
    victim = base / "victim.py"
    victim.write_text("KEEP = 1\n", encoding="utf-8")
    if plant_link:
        link = module_path(SimpleNamespace(id=contract_id), out)  # type: ignore[arg-type]
        out.mkdir()
        link.symlink_to(victim)
    body = "falsification_tests:\n  - {id: FALSIFY-X-001, rule: r, prediction: p}\n"
    if by_file_name:
        name = contract_id + ".yaml"
        if "/" in name or "\x00" in name or len(name.encode()) > 200:
            return  # not a file name this system can hold
        path = base / "a" / "b" / name
        path.write_text('metadata:\n  version: "1.0.0"\n' + body, encoding="utf-8")
    else:
        path = base / "a" / "b" / "c.yaml"
        path.write_text(
            f'metadata:\n  id: {json.dumps(contract_id)}\n  version: "1.0.0"\n' + body,
            encoding="utf-8",
        )
    before = _files(base)
    rc = main(["scaffold", str(path), "--out", str(out)])
    assert rc in (0, 1)
    written = _files(base) - before
    assert all((base / w).resolve().is_relative_to(out.resolve()) for w in written), written
    assert victim.read_text(encoding="utf-8") == "KEEP = 1\n"
    if plant_link:
        assert rc == 1 and link.is_symlink()
    else:
        assert rc == 1 or written


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(contract_id=HOSTILE_IDS, text=st.text(max_size=40))
def test_scaffold_itself_writes_only_below_out_and_always_compiles(
    tmp_path_factory, contract_id, text
):
    """Below the command: any id and any text in a falsifier give a module below ``out``
    that compiles and keeps the text, or a refusal; nothing else is touched."""
    base, out = _sandbox(tmp_path_factory)
    path = base / "c.yaml"
    path.write_text(GOOD, encoding="utf-8")
    contract = load_contract(path)
    contract.falsifiers[0].rule = text
    contract.id = contract_id.replace("ABSOLUTE", str(base) + "/")
    before = _files(base)
    try:
        result = scaffold(contract, out)
    except ScaffoldRefused:
        assert _files(base) == before
        return
    assert result.path.resolve().is_relative_to(out.resolve())
    assert _files(base) - before <= {
        str(p.relative_to(base)) for p in (out.parent, out, result.path)
    }
    module = ast.parse(result.path.read_text(encoding="utf-8"))
    (test,) = [n for n in module.body if isinstance(n, ast.FunctionDef)]
    assert text in (ast.get_docstring(test, clean=False) or "")


def test_out_itself_may_be_a_symlink(tmp_path, capsys):
    """``--out`` is the user's choice: a link there is followed; only what is below it is
    checked."""
    (tmp_path / "real").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "real")
    (tmp_path / "good-v1.yaml").write_text(GOOD, encoding="utf-8")
    rc = main(["scaffold", str(tmp_path / "good-v1.yaml"), "--out", str(tmp_path / "link")])
    assert rc == 0, capsys.readouterr()
    assert (tmp_path / "real" / "test_good_v1.py").is_file()
    assert os.listdir(tmp_path / "real") == ["test_good_v1.py"]
