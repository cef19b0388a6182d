"""Issue 9 cases 4-7: no YAML crashes or hangs ``pv``; memory is bounded by the document.

Each hostile input runs ``pv validate`` in a subprocess (a segfault or a hang must fail the
test, not kill the session), which must print one finding line naming the file and exit 1
within a time limit, with bounded peak RSS.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.contract_samples import CLEAN_CONTRACT

REPO = Path(__file__).resolve().parents[1]
MAX_RSS_MB = 300

#: runs pv validate and prints its exit code and peak RSS: VmHWM of this process, not
#: ru_maxrss, which Linux carries across fork+exec (a child of a 900 MB pytest reports 900 MB)
DRIVER = textwrap.dedent("""\
    import json, sys, io, contextlib
    from provable.cli.main import main
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        rc = main(["validate", *sys.argv[1:]])
    hwm = [ln for ln in open("/proc/self/status") if ln.startswith("VmHWM")]
    rss = int(hwm[0].split()[1]) / 1024
    print(json.dumps({"rc": rc, "rss_mb": rss, "out": out.getvalue()}))
""")


def pv_validate(*args: str, timeout: float = 60) -> dict:
    """Run ``pv validate`` in a child; a crash, traceback or hang is a failed assertion."""
    proc = subprocess.run(
        [sys.executable, "-c", DRIVER, *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert proc.returncode == 0, f"pv crashed (rc {proc.returncode}): {proc.stderr[-2000:]}"
    assert "Traceback" not in proc.stderr, proc.stderr
    return json.loads(proc.stdout.splitlines()[-1])


def assert_one_error_naming(result: dict, name: str) -> str:
    assert result["rc"] == 1, result["out"]
    errors = [ln for ln in result["out"].splitlines() if ": error [" in ln]
    assert len(errors) == 1, result["out"]
    assert name in errors[0], errors[0]
    return errors[0]


def _tagged(old: str, new: str) -> str:
    return CLEAN_CONTRACT.format(id="tagged").replace(old, new, 1)


HOSTILE = {
    "deep-flow-500": "a: " + "[" * 500 + "]" * 500 + "\n",
    "deep-block-300": "".join(" " * i + "- \n" for i in range(300)) + " " * 300 + "x\n",
    "deep-flow-100000": "a: " + "[" * 100_000 + "]" * 100_000 + "\n",
    "recursive-alias": "x: &r [*r]\n",
    "recursive-map-alias": "x: &r {a: *r}\n",
    "big-int": "x: " + "9" * 5000 + "\n",
    # tags inside an otherwise valid contract: nothing else to report
    "python-tag": _tagged("  add:\n", "  add: !!python/object/new:os.system\n"),
    "set-tag": _tagged("equations:\n", "equations: !!set\n"),
    "local-tag-map": _tagged("equations:\n", "equations: !Foo\n"),
    "local-tag-seq": _tagged("falsification_tests:\n", "falsification_tests: !Foo\n"),
    "undefined-alias": "x: *nope\n",
}


@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_hostile_file_gives_one_finding_and_exit_1(tmp_path, name):
    path = tmp_path / f"{name}.yaml"
    path.write_text(HOSTILE[name].replace("id: tagged\n", f"id: {name}\n"))
    result = pv_validate(str(path))
    assert_one_error_naming(result, f"{name}.yaml")
    assert result["rss_mb"] < MAX_RSS_MB


def test_hostile_file_does_not_stop_pv_status(tmp_path, capsys):
    from provable.cli.main import main

    (tmp_path / "deep.yaml").write_text(HOSTILE["deep-flow-500"])
    (tmp_path / "ok-v1.yaml").write_text(CLEAN_CONTRACT.format(id="ok-v1"))
    assert main(["status", "--format", "json", str(tmp_path)]) == 1
    rows = json.loads(capsys.readouterr().out)["contracts"]
    assert {r["id"]: r["status"] for r in rows}["deep"] == "INVALID"
    assert len(rows) == 2


def test_hostile_contract_does_not_abort_a_pytest_session(pytester):
    (pytester.path / "contracts").mkdir()
    (pytester.path / "contracts" / "deep.yaml").write_text(HOSTILE["deep-flow-500"])
    pytester.makepyfile(test_x="def test_x():\n    pass\n")
    pytester.runpytest_inprocess("-p", "no:cacheprovider").assert_outcomes(passed=1)


def test_a_two_million_item_list_is_refused_fast_and_small(tmp_path):
    path = tmp_path / "list.yaml"
    path.write_text("x:\n" + "- 1\n" * 2_000_000)  # 8 MB
    result = pv_validate(str(path), timeout=30)
    assert "nodes" in assert_one_error_naming(result, "list.yaml")
    assert result["rss_mb"] < MAX_RSS_MB


def test_comments_and_aliases_expand_to_a_refusal_not_gigabytes(tmp_path):
    anchor = "base: &b [" + ", ".join(["1"] * 1000) + "]\n"
    body = "".join(f"k{i}: *b\n# {'c' * 200}\n" for i in range(3000))
    path = tmp_path / "aliases.yaml"
    path.write_text(anchor + body)  # ~0.7 MB of text, 3M nodes if expanded
    result = pv_validate(str(path), timeout=30)
    assert "nodes" in assert_one_error_naming(result, "aliases.yaml")
    assert result["rss_mb"] < MAX_RSS_MB


def test_fifo_named_like_a_contract_does_not_hang(tmp_path):
    os.mkfifo(tmp_path / "x.yaml")
    assert_one_error_naming(pv_validate(str(tmp_path / "x.yaml"), timeout=20), "x.yaml")
    assert_one_error_naming(pv_validate(str(tmp_path), timeout=20), "x.yaml")


def test_symlink_loop_in_a_folder(tmp_path):
    (tmp_path / "loop.yaml").symlink_to(tmp_path / "loop.yaml")
    assert_one_error_naming(pv_validate(str(tmp_path)), "loop.yaml")


@pytest.mark.parametrize("kind", ["empty", "named-x.yaml", "unreadable"])
def test_folders_that_hold_no_contract_are_findings(tmp_path, kind):
    folder = tmp_path / ("x.yaml" if kind == "named-x.yaml" else "contracts")
    folder.mkdir()
    if kind == "unreadable":
        if os.geteuid() == 0:
            pytest.skip("root reads every folder")
        folder.chmod(0)
    try:
        assert_one_error_naming(pv_validate(str(folder)), folder.name)
    finally:
        folder.chmod(0o755)


def test_an_unreadable_folder_is_a_finding_even_as_root(tmp_path, monkeypatch, capsys):
    from provable.cli.main import main

    folder = tmp_path / "contracts"
    folder.mkdir()
    real = os.scandir

    def refuse(path):  # what a folder without read permission gives a non-root user
        if Path(path) == folder:
            raise PermissionError(13, "Permission denied", str(path))
        return real(path)

    monkeypatch.setattr(os, "scandir", refuse)
    assert main(["validate", str(folder)]) == 1
    out = capsys.readouterr().out
    assert "contracts:1: error [io] cannot read folder: Permission denied" in out


def test_one_bad_file_does_not_hide_the_others(tmp_path):
    (tmp_path / "a-deep.yaml").write_text(HOSTILE["deep-flow-500"])
    (tmp_path / "b-tagged.yaml").write_text(HOSTILE["python-tag"])
    (tmp_path / "c-ok-v1.yaml").write_text(CLEAN_CONTRACT.format(id="c-ok-v1"))
    result = pv_validate(str(tmp_path))
    assert result["rc"] == 1
    assert "a-deep.yaml" in result["out"] and "b-tagged.yaml" in result["out"]
    assert "in 3 files" in result["out"]


def test_an_internal_error_in_one_file_is_a_finding(tmp_path, monkeypatch, capsys):
    from provable.cli.main import main
    from provable.contracts import validate

    (tmp_path / "a-v1.yaml").write_text(CLEAN_CONTRACT.format(id="a-v1"))
    (tmp_path / "b-v1.yaml").write_text(CLEAN_CONTRACT.format(id="b-v1"))

    def explode(contract):
        if contract.id == "a-v1":
            raise RecursionError("maximum recursion depth exceeded")
        return []

    monkeypatch.setattr(validate, "check_contract", explode)
    assert main(["validate", str(tmp_path)]) == 1
    out = capsys.readouterr().out
    assert "a-v1.yaml:1: error [internal]" in out and "in 2 files" in out


def test_evidence_paths_stay_inside_the_evidence_folder(tmp_path):
    from provable.contracts.validate import discover, validate_paths

    (tmp_path / "pyproject.toml").write_text("")
    (tmp_path / "contracts").mkdir()
    outside = tmp_path / "big.json"
    outside.write_text(json.dumps({"outcome": "failed"}))
    for i, ref in enumerate(["/etc/passwd", "../big.json", "evidence/../big.json"]):
        text = CLEAN_CONTRACT.format(id=f"e{i}-v1").replace(
            "status: PARTIAL\n", f"status: FALSIFIED\n    evidence: {ref}\n"
        )
        (tmp_path / "contracts" / f"e{i}-v1.yaml").write_text(text)
    report = validate_paths(discover([str(tmp_path / "contracts")]))
    leaves = [f for f in report.findings if "leaves the project's evidence/" in f.message]
    assert len(leaves) == 3, report.render_text()


def test_non_ascii_digits_in_a_falsifier_id_are_refused(tmp_path):
    text = CLEAN_CONTRACT.format(id="u-v1").replace("FALSIFY-CLEAN-001", "FALSIFY-CLEAN-00１")
    (tmp_path / "u-v1.yaml").write_text(text, encoding="utf-8")
    from provable.contracts.validate import discover, validate_paths

    report = validate_paths(discover([str(tmp_path)]))
    assert any("FALSIFY-CLEAN-00１" in f.message for f in report.findings), report.render_text()


# --- fuzz: generated hostile YAML --------------------------------------------------------

_scalars = st.sampled_from(
    ["1", "x", "-1e400", "9" * 5000, "~", "true", "2026-01-01", "'q'", '"\\u0000"', "0x1F"]
)
_tags = st.sampled_from(
    ["", "!!python/object/apply:os.system ", "!!set ", "!Foo ", "!!str ", "!!binary ", "!!omap "]
)


@st.composite
def hostile_yaml(draw: st.DrawFn) -> str:
    """Flow YAML with random nesting, anchors, aliases (forward, backward, recursive), tags."""
    depth_limit = draw(st.sampled_from([3, 10, 70, 600]))
    anchors: list[str] = []

    def node(depth: int) -> str:
        choice = draw(st.integers(0, 5 if depth < depth_limit else 1))
        tag = draw(_tags)
        anchor = ""
        if draw(st.integers(0, 4)) == 0:
            name = f"a{len(anchors)}"
            anchors.append(name)
            anchor = f"&{name} "
        if choice == 0:
            return anchor + tag + draw(_scalars)
        if choice == 1:
            target = draw(st.sampled_from([*anchors, "nope"]))
            return f"*{target}"
        if choice in (2, 3):
            items = [node(depth + 1) for _ in range(draw(st.integers(0, 3)))]
            return anchor + tag + "[" + ", ".join(items) + "]"
        keys = [f"k{i}: {node(depth + 1)}" for i in range(draw(st.integers(0, 3)))]
        return anchor + tag + "{" + ", ".join(keys) + "}"

    body = "metadata: " + node(0) + "\n"
    repeat = draw(st.sampled_from([1, 1, 1, 2000]))
    return body + "".join(f"r{i}: *{anchors[-1]}\n" for i in range(repeat if anchors else 0))


@settings(
    max_examples=40,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.large_base_example],
)
@given(text=hostile_yaml())
def test_fuzz_pv_validate_never_crashes(tmp_path_factory, text):
    """In-process: zero tracebacks (any exception escaping ``main`` fails the example)."""
    from provable.cli.main import main

    folder = tmp_path_factory.mktemp("fuzz")
    (folder / "f.yaml").write_text(text)
    import contextlib
    import io

    with contextlib.redirect_stdout(io.StringIO()):
        assert main(["validate", str(folder / "f.yaml")]) in (0, 1)


def test_fuzz_worst_cases_stay_under_the_rss_bound(tmp_path):
    """The generator's extremes in a child process: deep, wide, alias-heavy, tagged."""
    worst = [
        "a: " + "[" * 100_000 + "]" * 100_000,
        "a: " + "{b: " * 5_000 + "1" + "}" * 5_000,
        "base: &b ["
        + ", ".join(["x"] * 5000)
        + "]\n"
        + "".join(f"k{i}: *b\n" for i in range(5000)),
        "x:\n" + "- !!python/object/apply:os.system ['true']\n" * 1000,
    ]
    for i, text in enumerate(worst):
        (tmp_path / f"w{i}.yaml").write_text(text)
    result = pv_validate(str(tmp_path), timeout=60)
    assert result["rc"] == 1
    assert result["rss_mb"] < MAX_RSS_MB, result["rss_mb"]
