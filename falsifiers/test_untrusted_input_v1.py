"""Falsifiers of untrusted-input-v1: contracts, evidence, runs, bindings and model configs
are untrusted input, and no id, file or binding writes, reads or runs anything outside the
project.

Each check takes the piece it attacks as an argument (defaulting to the real one), so that
``tests/test_untrusted_falsifiers_catch_defects.py`` can hand it the defect it exists to
catch — a path check removed, the escaping removed, audit importing in its own process, the
reader ignoring validate's findings, the physical-sense check skipped — and watch it fail.
"""

from __future__ import annotations

import json
import os
import re
import string
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np  # imported before any in-process pytester run could unload it
import pytest
from hypothesis import given
from hypothesis import strategies as st

from falsifiers.reproducible import reproducible

#: pieces a hostile id is made of: climbing, separators, NUL, look-alikes of '/' and '.'
HOSTILE_PIECES = ["..", "/", "\\", "\x00", "\u2215", "\uff0e\uff0e", "\u2024", "~", "%2e%2e"]


def tree(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*")}


# --- FALSIFY-UNTRUSTED-001: the plugin writes only below contracts/ and evidence/ ----------


def _contract(cid: str, fid: str) -> str:
    return (
        f'metadata:\n  id: {json.dumps(cid)}\n  version: "1.0.0"\n  description: d\n'
        f"falsification_tests:\n  - id: {json.dumps(fid)}\n    rule: r\n    prediction: p\n"
    )


def check_plugin_stays_inside(pytester: pytest.Pytester, base: Path) -> dict[str, Any]:
    """Falsifier ids and contract ids that climb out, and an evidence folder that is a
    symlink out: after a run, nothing new exists outside the project."""
    cases = [
        ("trav-v1", "FALSIFY-TRAV-001/../../../../outside/TRAV_WRITTEN"),
        ("../../outside/escaped_by_cid", "FALSIFY-ESC-001"),
        ("link-v1", "FALSIFY-LINK-001"),
    ]
    written: list[str] = []
    for n, (cid, fid) in enumerate(cases):
        root = base / f"case{n}" / "project"
        outside = root.parent / "outside"
        (root / "contracts").mkdir(parents=True)
        outside.mkdir()
        (root / "pyproject.toml").write_text("")
        (root / "contracts" / f"c{n}.yaml").write_text(_contract(cid, fid))
        (root / f"test_c{n}.py").write_text(
            f"import pytest\n\n@pytest.mark.falsifies({fid!r})\ndef test_c():\n    pass\n"
        )
        if cid == "link-v1":
            (root / "evidence").mkdir()
            (root / "evidence" / cid).symlink_to(outside, target_is_directory=True)
        before = tree(root.parent)
        cwd = os.getcwd()
        os.chdir(root)
        try:
            pytester.runpytest_inprocess("-p", "no:cacheprovider", f"--rootdir={root}", str(root))
        finally:
            os.chdir(cwd)
        written += [p for p in tree(root.parent) - before if not p.startswith("project")]
    assert written == [], f"the plugin wrote outside the project: {written}"
    return {"cases": len(cases)}


@pytest.mark.falsifies("FALSIFY-UNTRUSTED-001")
def test_the_plugin_writes_nowhere_else(pytester, tmp_path, evidence):
    evidence.record(**check_plugin_stays_inside(pytester, tmp_path))


# --- FALSIFY-UNTRUSTED-002: pv merge follows no symlink, builds no path from an unsafe id ---

SECRET = "SECRET_TOKEN=do-not-publish"
RUN_CONTRACT = """\
metadata: {{id: {cid}, version: "1.0.0", status: PARTIAL_ALGORITHM_LEVEL, description: d}}
falsification_tests:
  - {{id: FALSIFY-DEMO-001, rule: r, prediction: p, status: PARTIAL}}
"""


def _run(folder: Path, cid: str, file_cid: str = "demo-v1") -> Path:
    (folder / "contracts").mkdir(parents=True)
    (folder / "contracts" / f"{file_cid}.yaml").write_text(RUN_CONTRACT.format(cid=cid))
    evidence = folder / "evidence" / file_cid
    evidence.mkdir(parents=True)
    record = {
        "schema": "provable-evidence/1",
        "contract": cid,
        "falsifier": "FALSIFY-DEMO-001",
        "outcome": "passed",
        "status": "PARTIAL",
        "runs": {"cpu": {"tests": [], "observed_at": "2026-12-06T00:00:00+00:00"}},
        "passed_on": ["cpu"],
    }
    (evidence / "FALSIFY-DEMO-001.json").write_text(json.dumps(record))
    return folder


def check_merge_stays_inside(base: Path, merge: Callable[..., Any] | None = None) -> dict[str, Any]:
    """A run whose history.jsonl and whose evidence JSON are symlinks to files outside it,
    and a run whose contract id climbs out: the merged output holds no byte of the outside
    files, and nothing appears outside ``--out``."""
    from provable.reports.merge import MergeError
    from provable.reports.merge import merge_runs as real_merge

    merge = merge or real_merge
    secret = base / "secret.txt"
    base.mkdir(parents=True, exist_ok=True)
    secret.write_text(json.dumps({"time": "2026", "falsifier": "FALSIFY-DEMO-001", "x": SECRET}))
    linked = _run(base / "linked", "demo-v1")
    (linked / "evidence" / "demo-v1" / "history.jsonl").symlink_to(secret)
    other = _run(base / "other", "demo-v1")
    (other / "evidence" / "demo-v1" / "FALSIFY-DEMO-001.json").unlink()
    (other / "evidence" / "demo-v1" / "FALSIFY-DEMO-001.json").symlink_to(secret)
    climbing = _run(base / "climb", "../../../escaped_by_cid")
    refused = 0
    for n, run in enumerate((linked, other, climbing)):
        out = base / f"out{n}" / "x" / "y"
        before = tree(base)
        try:
            merge([run], out)
        except MergeError:
            refused += 1
        new = {p for p in tree(base) - before if not p.startswith(f"out{n}/x/y")}
        assert new <= {f"out{n}", f"out{n}/x"}, f"merge wrote outside --out: {sorted(new)}"
        published = b"".join(p.read_bytes() for p in out.rglob("*") if p.is_file())
        assert SECRET.encode() not in published, f"a symlinked file was merged: {run.name}"
    return {"runs": 3, "refused": refused}


@pytest.mark.falsifies("FALSIFY-UNTRUSTED-002")
def test_merge_follows_no_link_and_no_unsafe_id(tmp_path, evidence):
    evidence.record(**check_merge_stays_inside(tmp_path))


# --- FALSIFY-UNTRUSTED-003: status.md can be given no line, column, tag or link ------------


def _escape() -> Callable[[str], str]:
    from provable.reports.mdescape import md_escape

    return md_escape


#: what a piece of Markdown/HTML may start with; none may survive unescaped
_STRUCTURE = re.compile(r"[\n\r\u2028\u2029]|(?<!\\)\||<|(?<!\\)\[|(?<!\\)`|&(?!amp;|lt;|gt;)")


def check_markdown_escaping(escape: Callable[[str], str] | None = None) -> None:
    escape = escape or _escape()

    @reproducible(400)
    @given(
        st.lists(
            st.sampled_from(
                [
                    *"|<>[]()!`*_~&\\\n\r:/@.$#",
                    "\u2028",
                    "javascript:",
                    "http://",
                    "www.",
                    *string.ascii_letters[:6],
                ]
            ),
            max_size=40,
        ).map("".join)
    )
    def check(text: str) -> None:
        out = escape(text)
        assert not _STRUCTURE.search(out), (text, out)
        assert "](" not in out.replace("\\]", ""), (text, out)
        assert not re.search(r"(?<!\\)://", out), (text, out)
        assert len(f"| {out} |".split("|")) - len(f"| {out} |".split("\\|")) <= 2, (text, out)

    check()


@pytest.mark.falsifies("FALSIFY-UNTRUSTED-003")
def test_status_md_values_cannot_add_structure():
    check_markdown_escaping()


# --- FALSIFY-UNTRUSTED-004: a bound module never decides audit's result -----------------------

BINDING_CONTRACT = """\
metadata: {id: bound-v1, version: "1.0.0", description: d}
equations:
  used: {formula: "y = f(x)"}
"""


def check_audit_not_decided_by_bindings(tmp_path: Path, resolver: Any = None) -> dict[str, Any]:
    """Bound modules that exit, print and hang at import become findings naming them."""
    from provable.contracts.model import load_contract
    from provable.reports.binding import check_bindings, load_binding_file

    root = tmp_path / "bound"
    (root / "contracts").mkdir(parents=True)
    (root / "contracts" / "bound-v1.yaml").write_text(BINDING_CONTRACT)
    hostile = {
        "exits_zero": "import sys\nsys.exit(0)\n",
        "chatty": "print('not JSON')\ndef f(x):\n    return x\n",
    }
    body = 'version: "1.0.0"\nbindings:\n'
    for name, source in hostile.items():
        (root / f"{name}.py").write_text(source)
        body += (
            f"  - {{contract: bound-v1.yaml, equation: used, module_path: {name}, "
            'function: f, signature: "(x)", status: implemented}\n'
        )
    (root / "binding.yaml").write_text(body)
    contracts = {"bound-v1": load_contract(root / "contracts" / "bound-v1.yaml")}
    import sys

    sys.path.insert(0, str(root))
    try:
        kwargs = {"resolver": resolver} if resolver is not None else {}
        findings = check_bindings(load_binding_file(root / "binding.yaml"), contracts, **kwargs)
    except SystemExit as exc:
        raise AssertionError(f"a bound module ended audit's own process ({exc.code})") from None
    finally:
        sys.path.remove(str(root))
        for name in hostile:
            sys.modules.pop(name, None)
    named = {f.rule: f.message for f in findings if "exits_zero" in f.message}
    assert "bound module exits_zero exited" in named.get("binding-import", ""), findings
    assert any("chatty" in f.message and "printed" in f.message for f in findings), findings
    return {"findings": len(findings)}


@pytest.mark.falsifies("FALSIFY-UNTRUSTED-004")
def test_a_bound_module_cannot_decide_audit(tmp_path, evidence):
    evidence.record(**check_audit_not_decided_by_bindings(tmp_path))


# --- FALSIFY-UNTRUSTED-005: every command reads contracts as pv validate does ---------------

DUPLICATE_KEYS = """\
metadata: {id: dup-v1, version: "1.0.0", description: d}
falsification_tests:
  - {id: FALSIFY-DUP-001, rule: r, prediction: p}
metadata: {id: dup-v1, version: "9.9.9", description: shadow}
"""


def check_commands_refuse_what_validate_refuses(
    tmp_path: Path, main: Callable[[list[str]], int] | None = None
) -> dict[str, int]:
    if main is None:
        from provable.cli.main import main
    folder = tmp_path / "dup" / "contracts"
    folder.mkdir(parents=True)
    path = folder / "dup-v1.yaml"
    path.write_text(DUPLICATE_KEYS)
    codes = {}
    for argv in (
        ["validate", str(path)],
        ["graph", str(path)],
        ["equations", str(path)],
        ["status", str(path)],
        ["coverage", str(path)],
        ["scaffold", str(path), "--out", str(tmp_path / "dup" / "out")],
    ):
        try:
            codes[argv[0]] = main(argv)
        except SystemExit as exc:
            codes[argv[0]] = int(exc.code or 0)
    assert codes == dict.fromkeys(codes, 1), codes
    assert not (tmp_path / "dup" / "out").exists() or not any((tmp_path / "dup" / "out").iterdir())
    return codes


@pytest.mark.falsifies("FALSIFY-UNTRUSTED-005")
def test_every_command_refuses_what_validate_refuses(tmp_path, evidence):
    evidence.record(exit_codes=check_commands_refuse_what_validate_refuses(tmp_path))


# --- FALSIFY-UNTRUSTED-006: a config no real model has is refused at load -------------------

BAD_ROPE = {
    "linear-nan": {"rope_type": "linear", "factor": float("nan")},
    "llama3-zero": {
        "rope_type": "llama3",
        "factor": 0.0,
        "low_freq_factor": 1.0,
        "high_freq_factor": 4.0,
        "original_max_position_embeddings": 0,
    },
    "llama3-huge": {
        "rope_type": "llama3",
        "factor": 1e308,
        "low_freq_factor": 1.0,
        "high_freq_factor": 4.0,
        "original_max_position_embeddings": 8192,
    },
}


def check_configs_within_physical_sense(tmp_path: Path) -> dict[str, str]:
    """The issue's configs, as config.json beside real weights: each load is one typed error
    naming ``rope_scaling``; the same model without them loads."""
    from aprlib import DType, ModelFileError, model_from_arrays, open_model, write_model
    from aprlib.compare.shapes import expected_shapes
    from aprlib.config.modelconfig import from_hf

    cfg = from_hf(
        {
            "model_type": "llama",
            "architectures": ["LlamaForCausalLM"],
            "vocab_size": 64,
            "hidden_size": 32,
            "intermediate_size": 48,
            "num_hidden_layers": 1,
            "num_attention_heads": 4,
            "num_key_value_heads": 2,
            "max_position_embeddings": 128,
            "rms_norm_eps": 1e-6,
            "rope_theta": 10000.0,
        }
    )
    rng = np.random.default_rng(0)
    arrays = {
        name: (DType.F32, tuple(shape), rng.standard_normal(shape).astype(np.float32))
        for name, shape in expected_shapes(cfg).items()
    }
    folder = tmp_path / "cfg"
    folder.mkdir(parents=True)
    write_model(model_from_arrays(arrays, cfg), folder / "model.safetensors")
    clean = json.loads((folder / "config.json").read_text())
    with open_model(folder / "model.safetensors"):
        pass  # the clean model loads
    seen = {}
    for name, scaling in BAD_ROPE.items():
        (folder / "config.json").write_text(json.dumps({**clean, "rope_scaling": scaling}))
        try:
            with open_model(folder / "model.safetensors"):
                raise AssertionError(f"{name}: a rope_scaling no real model has was loaded")
        except ModelFileError as exc:
            assert "rope_scaling" in str(exc), (name, str(exc))
            seen[name] = textwrap.shorten(str(exc).split(": field ", 1)[-1], 120)
    return seen


@pytest.mark.falsifies("FALSIFY-UNTRUSTED-006")
def test_configs_outside_physical_sense_are_refused(tmp_path, evidence):
    evidence.record(errors=check_configs_within_physical_sense(tmp_path))
