"""``binding.yaml``: dotted paths that must import and match their declared signatures."""

from __future__ import annotations

import textwrap
from pathlib import Path

from provable.cli.main import main
from provable.contracts.loading import load_contracts
from provable.reports.binding import check_bindings, load_binding_file, signature_differences

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path("/work/shared/compat/provable-contracts/aprender/binding.yaml")


def contracts_by_id():
    contracts, _ = load_contracts([str(ROOT / "contracts")])
    return {c.id: c for c in contracts}


def test_project_binding_registry_resolves():
    bindings = load_binding_file(ROOT / "binding.yaml")
    assert len(bindings.bindings) >= 10
    assert check_bindings(bindings, contracts_by_id()) == []


def test_public_registry_shape_loads():
    """The public registry (Rust paths) has our shape; its paths do not import in Python."""
    if not SHARED.exists():
        return
    bindings = load_binding_file(SHARED)
    assert bindings.problems == [] and len(bindings.bindings) > 100
    b = bindings.bindings[0]
    assert (b.contract, b.equation, b.function) == ("softmax-kernel-v1.yaml", "softmax", "softmax")


def write(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "binding.yaml"
    path.write_text('version: "1.0.0"\nbindings:\n' + textwrap.indent(textwrap.dedent(body), "  "))
    return path


def test_unresolved_paths_and_signature_mismatches(tmp_path):
    path = write(
        tmp_path,
        """\
        - {contract: tensor-layout-v1.yaml, equation: layout, module_path: aprlib.formats.layout,
           function: gguf_shape_to_logical, status: implemented,
           signature: "def gguf_shape_to_logical(ne: tuple[int, ...]) -> tuple[int, ...]"}
        - {contract: tensor-layout-v1.yaml, equation: layout, module_path: aprlib.no_such_module,
           function: f, signature: "(x)", status: implemented}
        - {contract: tensor-layout-v1.yaml, equation: layout, module_path: aprlib.formats.layout,
           function: no_such_function, signature: "(x)", status: implemented}
        - {contract: tensor-layout-v1.yaml, equation: layout, module_path: aprlib.formats.layout,
           function: gguf_shape_to_logical, signature: "(shape)", status: implemented}
        - {contract: contract-lifecycle-v1.yaml, module_path: provable.contracts.lifecycle,
           function: derive_contract_status, equation: derive, status: implemented,
           signature: "def derive_contract_status(falsifier_statuses, current) -> ContractStatus"}
        - {contract: tensor-layout-v1.yaml, equation: layout, module_path: aprlib.formats.layout,
           function: gguf_shape_to_logical, signature: "def f(ne: list[int]) -> tuple[int, ...]",
           status: implemented}
        - {contract: ghost-v1.yaml, equation: layout, module_path: aprlib.formats.layout,
           function: gguf_shape_to_logical, signature: "(ne)", status: implemented}
        - {contract: tensor-layout-v1.yaml, equation: nope, module_path: ~, function: ~,
           signature: ~, status: not_implemented}
        - {contract: tensor-layout-v1.yaml, equation: layout, module_path: aprlib.formats.io,
           function: Model.get, signature: "(self, name: str) -> Tensor", status: implemented}
        - {contract: tensor-layout-v1.yaml, equation: layout, module_path: aprlib.formats.layout,
           function: gguf_shape_to_logical, signature: "def (", status: implemented}
        """,
    )
    findings = check_bindings(load_binding_file(path), contracts_by_id())
    lines = {f.line: (f.severity, f.rule, f.message) for f in findings}
    assert 3 not in lines  # the good one
    assert (
        lines[6][1] == "binding-unresolved" and "cannot import aprlib.no_such_module" in lines[6][2]
    )
    assert lines[8][1] == "binding-unresolved" and "no attribute 'no_such_function'" in lines[8][2]
    assert (
        lines[10][1] == "binding-signature" and "parameters (ne), declared (shape)" in lines[10][2]
    )
    assert lines[12][1] == "binding-signature" and "current has default" in lines[12][2]
    assert (
        lines[15][1] == "binding-signature"
        and "ne: tuple[int, ...], declared list[int]" in lines[15][2]
    )
    assert lines[18][1] == "binding-contract" and "no contract 'ghost-v1'" in lines[18][2]
    assert any(f.rule == "binding-contract" and "no equation 'nope'" in f.message for f in findings)
    assert any(f.rule == "binding-not-implemented" for f in findings)
    assert 22 not in lines  # a method by Class.method
    assert lines[24][1] == "binding-signature" and "not Python" in lines[24][2]


def test_signature_differences_of_kinds():
    def f(a, /, b, *args, c=1, **kw):
        return a

    assert signature_differences("def f(a, /, b, *args, c=1, **kw)", f) == []
    assert signature_differences("(a, b, *args, c=1, **kw)", f) == [
        "a is positional_only, declared positional_or_keyword"
    ]
    assert signature_differences("(a, /, b, *args, c, **kw)", f) == ["c has default"]


def test_audit_cli_with_binding(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(ROOT)
    assert main(["audit", "contracts", "--binding", str(tmp_path / "missing.yaml")]) == 2
    assert "no such binding file" in capsys.readouterr().err
