"""``pv merge`` and ``pv dashboard`` read runs as hostile input (issue 21: items 2, 3, 5, 8).

A run is a CI artifact a pull request controls: every id, string and symlink in it. Nothing
in it may make merge or the dashboard write outside ``--out``, read outside the run, end
in a traceback, or carry what merge does not know into the merged state.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from falsifiers.test_evidence_merge_v1 import write_run
from provable.cli.main import main
from provable.contracts.paths import is_safe_name
from provable.reports.merge import merge_runs

SECRET = "SECRET_TOKEN=hunter2-do-not-publish"
DEMO = """\
metadata:
  id: demo-v1
  version: "1.0.0"
falsification_tests:
  - id: FALSIFY-DEMO-001
    rule: "r"
    prediction: "p"
  - id: FALSIFY-DEMO-002
    rule: "r"
    prediction: "p"
    status: PARTIAL
    evidence: evidence/demo-v1/FALSIFY-DEMO-002.json
"""


def record(cid: str = "demo-v1", fid: str = "FALSIFY-DEMO-002", **changes: Any) -> dict:
    base = {
        "schema": "provable-evidence/1",
        "contract": cid,
        "falsifier": fid,
        "outcome": "passed",
        "status": "PARTIAL",
        "runs": {
            "cpu": {
                "tests": [{"nodeid": "t.py::t", "outcome": "passed"}],
                "commit": "c" * 40,
                "dirty": False,
                "observed_at": "2026-12-01T00:00:00+00:00",
            }
        },
        "passed_on": ["cpu"],
    }
    base.update(changes)
    return base


def demo_run(root: Path, contract: str = DEMO, **changes: Any) -> Path:
    (root / "contracts").mkdir(parents=True)
    (root / "contracts" / "demo-v1.yaml").write_text(contract)
    folder = root / "evidence" / "demo-v1"
    folder.mkdir(parents=True)
    (folder / "FALSIFY-DEMO-002.json").write_text(json.dumps(record(**changes)))
    return root


def pv(*args: str) -> tuple[int, str, str]:
    """``pv ARGS`` in this process: (exit code, stdout, stderr); any exception propagates."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main([str(a) for a in args])
    return code, out.getvalue(), err.getvalue()


def tree(root: Path, skip: Path | None = None) -> dict[str, str]:
    """Every entry below ``root`` (links as links, never followed), except below ``skip``."""
    found = {}
    for dirpath, dirnames, filenames in os.walk(root):
        here = Path(dirpath)
        if skip is not None and (here == skip or skip in here.parents):
            dirnames[:] = []
            continue
        for name in dirnames + filenames:
            path = here / name
            if skip is not None and path == skip:
                continue
            if path.is_symlink():
                found[str(path)] = "-> " + os.readlink(path)
            elif path.is_file():
                found[str(path)] = path.read_bytes().decode("utf-8", "replace")
            else:
                found[str(path)] = "dir"
    return found


def published(out: Path) -> str:
    """Everything merge or the dashboard wrote below ``out``."""
    return "\n".join(v for v in tree(out).values())


# --- item 2: ids that climb out of the run ------------------------------------------------


def test_a_contract_id_that_climbs_out_is_refused_before_anything_is_written(tmp_path):
    run = demo_run(tmp_path / "a" / "b" / "run")
    path = run / "contracts" / "demo-v1.yaml"
    path.write_text(DEMO.replace("id: demo-v1", "id: ../../../escaped_by_cid"))
    outside = tmp_path / "a" / "escaped_by_cid"  # where run/evidence/<that id> points
    outside.mkdir()
    (outside / "FALSIFY-DEMO-002.json").write_text(
        json.dumps(record(cid="../../../escaped_by_cid", note=SECRET))
    )
    before = tree(tmp_path)
    code, out, err = pv("merge", run, "--out", tmp_path / "o1" / "x" / "y")
    assert code == 2, out + err
    assert err.strip() == (
        f"pv: error: {path}: contract id '../../../escaped_by_cid' cannot name a folder (letters, "
        "digits, '.', '_' and '-' only, no '..'; pv validate rejects it too); nothing merged"
    )
    assert tree(tmp_path) == before  # not o1/escaped_by_cid, not anything


def test_a_falsifier_id_that_climbs_out_is_refused(tmp_path):
    run = demo_run(tmp_path / "run")
    path = run / "contracts" / "demo-v1.yaml"
    fid = "FALSIFY-DEMO-002/../../../../TRAV"
    path.write_text(DEMO.replace("id: FALSIFY-DEMO-002", f'id: "{fid}"'))
    before = tree(tmp_path)
    code, _, err = pv("merge", run, "--out", tmp_path / "o" / "x")
    assert code == 2 and f"falsifier id {fid!r} cannot name a file" in err
    assert "Traceback" not in err and tree(tmp_path) == before


# --- item 3 (Build 2): no symlink is followed -------------------------------------------------


def test_a_symlinked_history_is_refused_and_the_secret_stays_out(tmp_path):
    run = demo_run(tmp_path / "run")
    secret = tmp_path / "secret.env"
    secret.write_text(SECRET + "\n")
    link = run / "evidence" / "demo-v1" / "history.jsonl"
    link.symlink_to(secret)
    code, _, err = pv("merge", run, "--out", tmp_path / "out")
    assert code == 2
    assert err.strip() == (
        f"pv: error: {link}: is a symbolic link; a run is read without following links; "
        "nothing merged"
    )
    assert not (tmp_path / "out").exists()


def test_a_symlinked_evidence_file_is_not_copied_in(tmp_path):
    run = demo_run(tmp_path / "run")
    elsewhere = tmp_path / "elsewhere.json"
    elsewhere.write_text(json.dumps(record(note=SECRET)))
    link = run / "evidence" / "demo-v1" / "FALSIFY-DEMO-002.json"
    link.unlink()
    link.symlink_to(elsewhere)
    code, _, err = pv("merge", run, "--out", tmp_path / "out")
    assert code == 2 and f"{link}: is a symbolic link" in err
    assert not (tmp_path / "out").exists()


LEVELS = [
    "contracts",
    "contracts/demo-v1.yaml",
    "evidence",
    "evidence/demo-v1",
    "evidence/demo-v1/FALSIFY-DEMO-002.json",
    "evidence/demo-v1/history.jsonl",
    "evidence/demo-v1/FALSIFY-DEMO-009.json",  # a file no contract asks for
    "contracts/sub",  # a folder merge does not read
]


@pytest.mark.parametrize("level", LEVELS)
def test_a_symlink_at_any_level_of_a_run_is_refused(tmp_path, level):
    run = demo_run(tmp_path / "run")
    target = tmp_path / "outside"
    demo_run(target)  # a lookalike of the run, outside it
    (target / "evidence" / "demo-v1" / "history.jsonl").write_text(SECRET + "\n")
    path = run / level
    if path.is_dir():
        import shutil

        shutil.rmtree(path)
    elif path.exists():
        path.unlink()
    path.symlink_to(target / level if (target / level).exists() else target)
    before = tree(tmp_path)
    code, _, err = pv("merge", run, "--out", tmp_path / "out")
    assert code == 2 and "is a symbolic link" in err and "Traceback" not in err
    assert tree(tmp_path) == before


@pytest.mark.parametrize("level", ["evidence", "evidence/demo-v1", "contracts/demo-v1.yaml"])
def test_merge_never_writes_through_a_symlink_in_out(tmp_path, level):
    run = demo_run(tmp_path / "run")
    out = tmp_path / "out"
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (out / level).parent.mkdir(parents=True, exist_ok=True)
    (out / level).symlink_to(elsewhere)
    before = tree(tmp_path)
    code, _, err = pv("merge", run, "--out", out)
    assert code == 2 and f"{out / level}: is a symbolic link" in err
    assert tree(tmp_path) == before


# --- item 5: hostile evidence is a finding, never a traceback ------------------------------


def _warnings(run: Path, tmp_path: Path) -> tuple[int, list[str], Path]:
    out = tmp_path / "out"
    code, stdout, err = pv("merge", run, "--out", out, "--json")
    assert "Traceback" not in err
    return code, json.loads(stdout)["warnings"], out


def test_a_history_line_nested_100000_deep_is_skipped(tmp_path, capsys):
    run = demo_run(tmp_path / "run")
    good = json.dumps({"time": "2026-12-01T00:00:00+00:00", "falsifier": "FALSIFY-DEMO-002"})
    history = run / "evidence" / "demo-v1" / "history.jsonl"
    history.write_text(good + "\n" + "[" * 100_000 + "]" * 100_000 + "\n")
    code, warnings, out = _warnings(run, tmp_path)
    assert code == 0
    assert warnings == [
        f"{history}: 1 of 2 lines not merged (line 2: nested deeper than 64 levels)"
    ]
    assert (out / "evidence/demo-v1/history.jsonl").read_text() == good + "\n"
    code, _, err = pv(
        "dashboard",
        "--contracts",
        run / "contracts",
        "--evidence",
        run / "evidence",
        "--out",
        tmp_path / "d",
        "--check",
    )
    assert "Traceback" not in err
    assert json.loads((tmp_path / "d" / "status.json").read_text())["not_checked"] == 0


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        (
            {"runs": {"cpu": {"tests": 5, "observed_at": "2026-12-01T00:00:00+00:00"}}},
            "runs.cpu.tests: expected a list of test results, got int 5",
        ),
        ({"passed_on": math.nan}, "passed_on: expected a list of host kinds, got float nan"),
        ({"runs": []}, "runs: expected an object of host sections, got list"),
        (
            {"runs": {"cpu": {"tests": [], "observed_at": math.inf}}},
            "runs.cpu.observed_at: expected a time (text), got float inf",
        ),
        ({"status": {"x": 1}}, "status: expected text, got dict"),
        (
            {"runs": {"cpu": {"tests": [], "recorded": {"x": [1, math.nan]}}}},
            "runs.cpu.recorded.x[1]: NaN is not a JSON number",
        ),
        ({"falsifier": "FALSIFY-DEMO-001"}, "falsifier: names 'FALSIFY-DEMO-001', not"),
    ],
)
def test_wrongly_typed_evidence_is_a_finding_naming_file_and_field(tmp_path, changes, message):
    run = demo_run(tmp_path / "run", **changes)
    where = run / "evidence" / "demo-v1" / "FALSIFY-DEMO-002.json"
    code, warnings, out = _warnings(run, tmp_path)
    assert code == 0
    assert len(warnings) == 1 and warnings[0].startswith(f"{where}: {message}"), warnings
    assert warnings[0].endswith("; not merged")
    assert not (out / "evidence" / "demo-v1" / "FALSIFY-DEMO-002.json").exists()
    # the dashboard reads it with the same rules: a problem line, no traceback
    code, _, err = pv(
        "dashboard",
        "--contracts",
        run / "contracts",
        "--evidence",
        run / "evidence",
        "--out",
        tmp_path / "d",
        "--check",
    )
    assert "Traceback" not in err and code == 1
    board = json.loads((tmp_path / "d" / "status.json").read_text())
    assert any(p.startswith(f"{where}: {message}") for p in board["problems"]), board["problems"]


def test_oversized_evidence_is_a_finding(tmp_path):
    run = demo_run(tmp_path / "run", padding="x" * (4 * 2**20 + 1))
    code, warnings, _ = _warnings(run, tmp_path)
    assert code == 0 and len(warnings) == 1 and "over 4 MiB" in warnings[0]


# --- item 8: merge keeps only what it knows -----------------------------------------------------


def test_an_unknown_host_section_is_reported_and_left_out(tmp_path):
    section = record()["runs"]["cpu"]
    run = demo_run(tmp_path / "run", runs={"cpu": section, "tpu": section, "../../x": section})
    where = run / "evidence" / "demo-v1" / "FALSIFY-DEMO-002.json"
    code, warnings, out = _warnings(run, tmp_path)
    assert code == 0
    assert warnings == [
        f"{where}: runs.'../../x': unknown host kind (known: cpu, cuda); not merged",
        f"{where}: runs.'tpu': unknown host kind (known: cpu, cuda); not merged",
    ]
    merged = json.loads((out / "evidence/demo-v1/FALSIFY-DEMO-002.json").read_text())
    assert set(merged["runs"]) == {"cpu"}
    report = merge_runs([run], tmp_path / "out2", strict=True)
    assert report.exit_code() == 1 and len(report.warnings) == 2
    assert merge_runs([run], tmp_path / "out3").exit_code() == 0


def test_strict_cli_exits_1_on_what_merge_does_not_know(tmp_path):
    run = demo_run(tmp_path / "run", runs={"tpu": record()["runs"]["cpu"]})
    assert pv("merge", run, "--out", tmp_path / "a")[0] == 0
    code, out, _ = pv("merge", run, "--out", tmp_path / "b", "--strict")
    assert code == 1 and "unknown host kind" in out


def test_evidence_of_a_falsifier_no_contract_declares_is_reported_and_left_out(tmp_path):
    run = demo_run(tmp_path / "run")
    folder = run / "evidence" / "demo-v1"
    (folder / "FALSIFY-GHOST-001.json").write_text(json.dumps(record(fid="FALSIFY-GHOST-001")))
    (run / "evidence" / "ghost-v1").mkdir()
    lines = [
        {"time": "2026-12-01T00:00:00+00:00", "falsifier": "FALSIFY-DEMO-002"},
        {"time": "2026-12-01T00:00:01+00:00", "falsifier": "FALSIFY-GHOST-001"},
    ]
    (folder / "history.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    code, warnings, out = _warnings(run, tmp_path)
    assert code == 0
    assert warnings == [
        f"{run / 'evidence' / 'demo-v1' / 'FALSIFY-GHOST-001.json'}: no contract declares "
        "falsifier 'FALSIFY-GHOST-001' in demo-v1; not merged",
        f"{folder / 'history.jsonl'}: 1 of 2 lines not merged (line 2: no contract declares "
        "falsifier 'FALSIFY-GHOST-001' in demo-v1)",
        f"{run / 'evidence' / 'ghost-v1'}: no contract has the id 'ghost-v1'; not merged",
    ]
    assert sorted(p.name for p in (out / "evidence" / "demo-v1").iterdir()) == [
        "FALSIFY-DEMO-002.json",
        "history.jsonl",
    ]
    assert not (out / "evidence" / "ghost-v1").exists()


def test_the_project_merges_with_itself_without_a_warning(tmp_path):
    root = Path(__file__).resolve().parents[1]
    report = merge_runs([root], tmp_path / "out")
    assert report.warnings == [] and report.conflicts == []


# --- properties: ids and paths, symlinks at every level --------------------------------------

#: "{ABS}" becomes the absolute path of a folder outside every root
HOSTILE_IDS = [
    "..",
    ".",
    "../outside",
    "../../outside",
    "../../../outside",
    "{ABS}",
    "{ABS}/x",
    "a/b",
    "a\\b",
    "..\\..\\outside",
    "a\x00b",
    "x\u2215..\u2215outside",  # division slash
    "\uff0e\uff0e",  # fullwidth dots
    "\uff0e\uff0e/outside",
    "\u2024\u2024",  # one dot leader, twice
    ".hidden",
    "a" * 300,
    "",
    " ",
    "demo-v1\n",
    "ok-v1",
]
#: as often safe as not: each hostile id is tried, and so is the merge that goes ahead
contract_ids = st.sampled_from(HOSTILE_IDS + ["demo-v1"] * len(HOSTILE_IDS))
falsifier_ids = st.sampled_from(
    ["FALSIFY-DEMO-002" + s for s in HOSTILE_IDS]
    + HOSTILE_IDS
    + ["FALSIFY-DEMO-002"] * (2 * len(HOSTILE_IDS))
)
#: half the examples without a link, so that the ids alone are tried too
RUN_LINKS = st.one_of(st.none(), st.sampled_from(LEVELS))
OUT_LINKS = st.one_of(st.none(), st.sampled_from(["evidence", "evidence/demo-v1", "contracts"]))
PROPERTY = settings(
    max_examples=100,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)


class Reads:
    """Every path the process opens or lists while watched (an audit hook stays installed)."""

    watching: list[Any] | None = None

    @classmethod
    def hook(cls, event: str, args: tuple) -> None:
        if cls.watching is not None and event in ("open", "os.listdir", "os.scandir"):
            cls.watching.append(args[0] if args else None)

    @classmethod
    def outside(cls, forbidden: Path) -> list[str]:
        bad = []
        for path in cls.watching or []:
            if not isinstance(path, (str, bytes, os.PathLike)):
                continue  # a file descriptor
            p = Path(os.fsdecode(path))
            if not p.is_absolute():
                if ".." in p.parts:
                    bad.append(str(p))
                continue  # one name below a folder opened by descriptor
            if p.resolve() == forbidden.resolve() or forbidden.resolve() in p.resolve().parents:
                bad.append(str(p))
        return bad


sys.addaudithook(Reads.hook)


def _yaml_str(text: str) -> str:
    return json.dumps(text)  # a JSON string is a YAML double-quoted scalar


def _plant(base: Path, parts: list[str], text: str, run: Path) -> None:
    """Write ``text`` where a naive join of ``parts`` would land, if that is below ``base``
    and outside ``run``: a secret a merge that follows the ids would read."""
    try:
        where = Path(os.path.normpath(os.path.join(*parts)))
        if base.resolve() not in where.resolve().parents:
            return
        if run.resolve() in where.resolve().parents:
            return
        where.parent.mkdir(parents=True, exist_ok=True)
        where.write_text(text)
    except (OSError, ValueError):
        pass


def _hostile_run(work: Path, cid: str, fid: str, link: str | None) -> Path:
    outside = work / "outside"
    cid, fid = (x.replace("{ABS}", str(outside)) for x in (cid, fid))
    contract = DEMO.replace("id: demo-v1", f"id: {_yaml_str(cid)}").replace(
        "id: FALSIFY-DEMO-002", f"id: {_yaml_str(fid)}"
    )
    run = demo_run(work / "runs" / "run", contract)
    demo_run(outside / "lookalike")
    secret = json.dumps(record(cid=cid, fid=fid, note=SECRET))
    for base in (run / "evidence", outside):  # where a naive merge would read the ids
        _plant(work, [str(base), cid, f"{fid}.json"], secret, run)
        _plant(work, [str(base), cid, "history.jsonl"], SECRET + "\n", run)
    if link is not None:
        path = run / link
        if path.is_dir():
            import shutil

            shutil.rmtree(path)
        elif path.exists():
            path.unlink()
        path.parent.mkdir(parents=True, exist_ok=True)
        target = outside / "lookalike" / link
        path.symlink_to(target if target.exists() else outside)
    return run


@PROPERTY
@given(
    st.one_of(
        st.tuples(contract_ids, falsifier_ids, st.none(), st.none()),  # the ids alone
        st.tuples(contract_ids, falsifier_ids, RUN_LINKS, OUT_LINKS),
    )
)
def test_merge_never_reads_or_writes_outside_its_roots(case):
    cid, fid, run_link, out_link = case
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        run = _hostile_run(work, cid, fid, run_link)
        out = work / "o" / "x" / "merged"
        out.parent.mkdir(parents=True)
        if out_link is not None:
            (out / out_link).parent.mkdir(parents=True, exist_ok=True)
            (out / out_link).symlink_to(work / "outside")
        before = tree(work, skip=out)
        Reads.watching = []
        try:
            code, _, err = pv("merge", run, "--out", out)
            read_outside = Reads.outside(work / "outside")
        finally:
            Reads.watching = None
        event(f"merge exit {code}{', links' if run_link or out_link else ''}")
        assert code in (0, 1, 2) and "Traceback" not in err
        assert read_outside == [], read_outside
        assert tree(work, skip=out) == before, "merge wrote outside --out"
        assert SECRET not in published(out)
        if out_link is None and run_link is None:  # refused exactly when an id is unsafe
            ids = [x.replace("{ABS}", str(work / "outside")) for x in (cid or "demo-v1", fid)]
            assert (code == 0) == all(map(is_safe_name, ids)), (code, err)


@PROPERTY
@given(
    contract_ids,
    falsifier_ids,
    st.one_of(st.none(), st.sampled_from([*LEVELS[1:2], *LEVELS[3:6]])),  # below its roots
    st.one_of(st.none(), st.sampled_from(["status.md", "index.html", "status.json"])),
)
def test_dashboard_never_reads_or_writes_outside_its_roots(cid, fid, run_link, out_link):
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        run = _hostile_run(work, cid, fid, run_link)
        out = work / "o" / "dash"
        out.parent.mkdir(parents=True)
        if out_link is not None:
            out.mkdir(parents=True)
            (out / out_link).symlink_to(
                work / "outside" / "lookalike" / "contracts" / "demo-v1.yaml"
            )
        before = tree(work, skip=out)
        Reads.watching = []
        try:
            code, _, err = pv(
                "dashboard",
                "--contracts",
                run / "contracts",
                "--evidence",
                run / "evidence",
                "--out",
                out,
                "--check",
            )
            read_outside = Reads.outside(work / "outside")
        finally:
            Reads.watching = None
        event(f"dashboard exit {code}")
        assert code in (0, 1, 2) and "Traceback" not in err
        assert read_outside == [], read_outside
        assert tree(work, skip=out) == before, "the dashboard wrote outside --out"
        assert SECRET not in published(out)


# --- fuzz: structure-aware evidence and history through merge and dashboard ------------------

leaf = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(),
    st.text(max_size=12),
    st.sampled_from(["cpu", "cuda", "tpu", "passed", "failed", "<img src=x>", "\ud800"]),
    st.sampled_from([64, 400]).map(lambda n: -(10**n)),  # beyond any int64, or float
    st.integers(2, 5).map(lambda n: "x" * 10**n),  # up to 100 kB in one string
    st.sampled_from([1e308, 5e-324]),
)
json_values = st.recursive(
    leaf,
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(
            st.sampled_from(["tests", "outcome", "cpu", "x", "failure"]) | st.text(max_size=6),
            inner,
            max_size=4,
        )
    ),
    max_leaves=16,
)
#: nesting as text: json.dumps itself would recurse on it
DEEP = "{DEEP}"
deep_text = st.sampled_from([60, 65, 999, 100_000]).map(lambda n: "[" * n + "]" * n)
FIELDS = [
    (),
    ("runs",),
    ("passed_on",),
    ("status",),
    ("outcome",),
    ("contract",),
    ("falsifier",),
    ("runs", "cpu"),
    ("runs", "cuda"),
    ("runs", "cpu", "tests"),
    ("runs", "cpu", "tests", 0),
    ("runs", "cpu", "tests", 0, "outcome"),
    ("runs", "cpu", "failure"),
    ("runs", "cpu", "observed_at"),
    ("runs", "cpu", "commit"),
    ("runs", "cpu", "host"),
    ("runs", "cpu", "recorded"),
]


def _set(doc: Any, path: tuple, value: Any) -> Any:
    if not path:
        return value
    node = doc
    for key in path[:-1]:
        try:
            node = node[key]
        except (KeyError, IndexError, TypeError):
            return doc
    with contextlib.suppress(IndexError, TypeError):
        node[path[-1]] = value
    return doc


mutation = st.tuples(st.sampled_from(FIELDS), st.one_of(json_values, st.just(DEEP)))
history_line = st.one_of(
    json_values.map(lambda v: json.dumps(v)),
    st.just(DEEP),
    st.binary(max_size=20).map(lambda b: b.decode("latin-1")),
    st.fixed_dictionaries(
        {
            "time": leaf,
            "falsifier": st.sampled_from(["FALSIFY-DEMO-002", "FALSIFY-X-001"]) | leaf,
            "after": leaf,
            "outcome": leaf,
            "error": json_values,
        }
    ).map(json.dumps),
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(mutation, min_size=1, max_size=3), deep_text, st.lists(history_line, max_size=5))
def test_fuzzed_evidence_never_ends_in_a_traceback(mutations, deep, lines):
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        doc: Any = record()
        for path, value in mutations:
            doc = _set(doc, path, value)
        text = json.dumps(doc).replace(json.dumps(DEEP), deep)
        run = demo_run(work / "run")
        folder = run / "evidence" / "demo-v1"
        (folder / "FALSIFY-DEMO-002.json").write_text(text, errors="surrogatepass")
        history = "\n".join(line.replace(DEEP, deep) for line in lines)
        (folder / "history.jsonl").write_text(history, errors="surrogatepass")
        other = write_run(
            work / "other", {"FALSIFY-SYNTH-001": {"cpu": ("passed", 1)}, "FALSIFY-SYNTH-002": {}}
        )
        code, stdout, err = pv("merge", run, other, "--out", work / "out", "--json")
        assert code in (0, 1) and "Traceback" not in err, err
        warned = any("FALSIFY-DEMO-002.json" in w for w in json.loads(stdout)["warnings"])
        event(f"merge exit {code}, evidence {'left out' if warned else 'merged'}")
        for path in (work / "out" / "evidence").rglob("*.json"):
            json.loads(path.read_bytes().decode("utf-8"), parse_constant=_no_constant)
        for base in (run, work / "out"):
            code, _, err = pv(
                "dashboard",
                "--contracts",
                base / "contracts",
                "--evidence",
                base / "evidence",
                "--out",
                work / "d",
                "--check",
            )
            assert code in (0, 1) and "Traceback" not in err, err
            json.loads((work / "d" / "status.json").read_bytes().decode("utf-8"))


def _no_constant(name: str) -> None:
    raise AssertionError(f"merged evidence holds {name}: not JSON")
