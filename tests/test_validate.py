"""`pv validate`: every rule fires on its defect, and a clean contract passes."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from provable.cli.main import main
from provable.contracts.validate import discover, validate_paths
from tests.contract_samples import CLEAN_CONTRACT


def findings_for(paths, strict=False):
    return validate_paths(discover([str(p) for p in paths]), strict=strict).findings


def clean(name="clean-v1"):
    return CLEAN_CONTRACT.format(id=name)


def test_clean_contract_has_no_findings(write_contract):
    assert findings_for([write_contract()]) == []


def test_clean_contract_passes_strict_and_prints_valid(write_contract, capsys):
    path = write_contract()
    assert main(["validate", "--strict", str(path)]) == 0
    out = capsys.readouterr().out
    assert "0 errors, 0 warnings in 1 file" in out
    assert out.strip().endswith("Contract is valid.")


RULE_CASES = [
    # (description, replace-this, with-this, rule, severity, the text the finding points at)
    (
        "id differs from file",
        "id: clean-v1",
        "id: other-v1",
        "id-matches-file",
        "error",
        "id: other-v1",
    ),
    ("version not semver", 'version: "1.1"\n', 'version: "1.1"\n', "semver", "error", None),
    (
        "bad host",
        "status: PARTIAL\n",
        "status: PARTIAL\n    hosts: [tpu]\n",
        "schema",
        "error",
        "hosts: [tpu]",
    ),
    (
        "section near miss",
        "enforcement:",
        "falsification_test: []\nenforcement:",
        "unknown-section",
        "warning",
        "falsification_test:",
    ),
    (
        "duplicate ID",
        "FALSIFY-CLEAN-002",
        "FALSIFY-CLEAN-001",
        "falsifier-id-unique",
        "error",
        '  - id: FALSIFY-CLEAN-001\n    rule: "zero',
    ),
    (
        "ID shape",
        "id: FALSIFY-CLEAN-002",
        "id: PARITY-002",
        "falsifier-id-shape",
        "warning",
        "PARITY-002",
    ),
    (
        "wild status",
        "status: PARTIAL_ALGORITHM_LEVEL",
        "status: IMPLEMENTED",
        "status-vocabulary",
        "warning",
        "IMPLEMENTED",
    ),
    (
        "unknown status",
        "status: PROPOSED",
        "status: PROPOSD",
        "status-vocabulary",
        "error",
        "PROPOSD",
    ),
    (
        "status not derived",
        "status: PARTIAL_ALGORITHM_LEVEL",
        "status: DISCHARGED",
        "status-derived",
        "error",
        "status: DISCHARGED",
    ),
    (
        "summary tally drift",
        "enforcement:",
        "verification_summary:\n  total_obligations: 3\nenforcement:",
        "verification-summary",
        "error",
        "total_obligations: 3",
    ),
    (
        "missing prediction",
        '    prediction: "a + 0 == a"\n',
        "",
        "falsifier-fields",
        "error",
        "id: FALSIFY-CLEAN-002",
    ),
    (
        "alias and canonical",
        '    if_fails: "broken adder"\n',
        '    if_fails: "broken adder"\n    fails_if: "x"\n',
        "falsifier-alias",
        "warning",
        'fails_if: "x"',
    ),
    (
        "changelog not increasing",
        'version: "1.1.0", date: "2026-01-02"',
        'version: "0.9.0", date: "2026-01-02"',
        "changelog",
        "error",
        '"0.9.0"',
    ),
    (
        "enforcement names unknown ID",
        'check: "FALSIFY-CLEAN-001"',
        'check: "FALSIFY-CLEAN-009"',
        "falsifier-ref",
        "error",
        "FALSIFY-CLEAN-009",
    ),
    (
        "depends on a missing contract",
        "depends_on: []",
        "depends_on: [nowhere-v1]",
        "depends-on",
        "error",
        "nowhere-v1",
    ),
    (
        "duplicate key",
        '  description: "a clean contract"\n',
        '  description: "a clean contract"\n  description: "again"\n',
        "duplicate-key",
        "error",
        '"again"',
    ),
    (
        "DISCHARGED without evidence",
        "status: PARTIAL\n",
        "status: DISCHARGED\n",
        "evidence",
        "error",
        "status: DISCHARGED",
    ),
]


def line_of(text: str, needle: str) -> int:
    return text[: text.index(needle)].count("\n") + 1


@pytest.mark.parametrize(
    ("old", "new", "rule", "severity", "at"),
    [c[1:] for c in RULE_CASES],
    ids=[c[0] for c in RULE_CASES],
)
def test_each_rule_fires_on_its_defect(write_contract, old, new, rule, severity, at):
    text = clean()
    if old == 'version: "1.1"\n':  # semver: the one case that edits two places
        text = text.replace('version: "1.1.0"\n', old, 1)
        at = 'version: "1.1"'
    assert old in text
    text = text.replace(old, new, 1)
    path = write_contract(text)
    hits = [f for f in findings_for([path]) if f.rule == rule]
    assert hits, f"{rule} did not fire"
    assert {f.severity for f in hits} == {severity}
    assert line_of(text, at) in {f.line for f in hits}, [f.render() for f in hits]


def test_aliases_of_the_newer_dialect_are_accepted(write_contract):
    text = clean().replace("    rule:", "    description:")
    text = text.replace("    prediction:", "    expected:")
    text = text.replace("    test:", "    command:").replace("    if_fails:", "    fails_if:")
    assert findings_for([write_contract(text)]) == []


def test_near_miss_section_suggests_the_right_name(write_contract):
    path = write_contract(clean() + "proof_obligation: []\n")
    [hit] = findings_for([path])
    assert "did you mean 'proof_obligations'" in hit.message


def test_schema_message_names_the_field(write_contract):
    path = write_contract(clean().replace('version: "1.1.0"\n', "version: 1.1\n", 1))
    hits = [f for f in findings_for([path]) if f.rule == "schema"]
    assert "metadata.version" in hits[0].message and hits[0].line == 4


def test_evidence_must_exist_and_agree(write_contract, tmp_path):
    text = clean().replace(
        "status: PARTIAL\n", "status: FALSIFIED\n    evidence: evidence/x.json\n"
    )
    text = text.replace("status: PARTIAL_ALGORITHM_LEVEL", "status: FALSIFIED")
    path = write_contract(text)
    (tmp_path / "pyproject.toml").write_text("")
    hits = [f for f in findings_for([path]) if f.rule == "evidence"]
    assert "not found" in hits[0].message
    (tmp_path / "evidence").mkdir()
    (tmp_path / "evidence" / "x.json").write_text(json.dumps({"outcome": "passed"}))
    hits = [f for f in findings_for([path]) if f.rule == "evidence"]
    assert "records outcome 'passed', not 'failed'" in hits[0].message
    (tmp_path / "evidence" / "x.json").write_text(json.dumps({"outcome": "failed"}))
    assert findings_for([path]) == []


def test_shared_falsifier_id_warns_in_both_files(write_contract):
    a = write_contract(name="a-v1")
    b = write_contract(name="b-v1")
    shared = [f for f in findings_for([a, b]) if f.rule == "falsifier-id-shared"]
    assert {f.path.split("/")[-1] for f in shared} == {"a-v1.yaml", "b-v1.yaml"}
    assert "'a-v1:FALSIFY-CLEAN-001'" in " ".join(f.message for f in shared)
    assert all(f.severity == "warning" for f in shared)
    assert all(f.severity == "error" for f in findings_for([a, b], strict=True))


def test_dependency_cycle_is_printed(write_contract):
    a = write_contract(clean("a-v1").replace("depends_on: []", "depends_on: [b-v1]"), "a-v1")
    b = write_contract(
        clean("b-v1").replace("depends_on: []", "depends_on: [c-v1]").replace("CLEAN", "BEE"),
        "b-v1",
    )
    c = write_contract(
        clean("c-v1").replace("depends_on: []", "depends_on: [a-v1]").replace("CLEAN", "SEA"),
        "c-v1",
    )
    cycles = [f for f in findings_for([a, b, c]) if f.rule == "dependency-cycle"]
    assert [f.message for f in cycles] == ["dependency cycle: a-v1 -> b-v1 -> c-v1 -> a-v1"]


def test_dependency_beside_the_file_is_found(write_contract):
    write_contract(name="base-v1")
    user = write_contract(
        clean("user-v1")
        .replace("depends_on: []", "depends_on: [base-v1]")
        .replace("CLEAN", "USER"),
        "user-v1",
    )
    assert findings_for([user]) == []


@pytest.mark.parametrize(
    ("body", "rule"),
    [
        ("- just\n- a list\n", "top-level"),
        ("metadata: {version: '1.0.0'}\n  bad: [\n", "yaml-syntax"),
        ("metadata:\n\tversion: 1\n", "yaml-syntax"),
    ],
)
def test_bad_files_give_one_finding_and_exit_1(write_contract, capsys, body, rule):
    path = write_contract(body, name="bad-v1")
    assert main(["validate", str(path)]) == 1
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 2 and f"error [{rule}]" in out[0]
    assert out[0].startswith(f"{path.name}:") or ":" in out[0].split(" ")[0]


def test_non_utf8_and_folder_named_yaml(tmp_path, capsys):
    folder = tmp_path / "contracts"
    folder.mkdir()
    (folder / "latin-v1.yaml").write_bytes(b"metadata:\n  description: caf\xe9\n")
    (folder / "dir-v1.yaml").mkdir()
    assert main(["validate", str(folder)]) == 1
    out = capsys.readouterr().out
    assert "latin-v1.yaml:2: error [encoding] not valid UTF-8: byte 0xe9" in out
    assert "dir-v1.yaml:1: error [io] is a directory" in out


def test_usage_errors_exit_2(tmp_path, capsys):
    assert main(["validate", str(tmp_path / "missing.yaml")]) == 2
    assert main(["validate", str(tmp_path / "*.yaml")]) == 2
    assert "no such file" in capsys.readouterr().err
    with pytest.raises(SystemExit) as info:
        main(["validate"])
    assert info.value.code == 2


def test_glob_and_json_output(write_contract, capsys):
    path = write_contract(clean().replace("status: PROPOSED", "status: BOGUS"))
    assert main(["validate", "--format", "json", str(path.parent / "*.yaml")]) == 1
    doc = json.loads(capsys.readouterr().out)
    assert doc["summary"] == {
        "files": 1,
        "contracts": 1,
        "errors": 1,
        "warnings": 0,
        "valid": False,
    }
    [finding] = doc["findings"]
    assert set(finding) == {"path", "line", "severity", "rule", "message"}


def test_binding_registry_is_recognised_not_an_error(tmp_path):
    (tmp_path / "binding.yaml").write_text("version: '1'\nbindings:\n  - contract: x.yaml\n")
    [note] = findings_for([tmp_path])
    assert note.severity == "note" and note.rule == "binding-registry"


def test_provable_never_imports_torch_or_aprlib(write_contract):
    path = write_contract()
    code = (
        "import sys; from provable.cli.main import main; rc = main(['validate', sys.argv[1]]);"
        "import provable.plugin.hooks, provable.plugin.update, provable.reports.status;"
        "bad = [m for m in ('torch', 'triton', 'aprlib', 'numpy') if m in sys.modules];"
        "assert not bad, bad; sys.exit(rc)"
    )
    result = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
