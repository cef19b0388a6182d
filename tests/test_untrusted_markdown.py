"""status.md is published as the CI job summary: nothing that came from a file may add a
line, a column, a tag, a link or an image to it (issue 21, item 6), and ``pv dashboard``
says so when a contract fails validation."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from markdown_it import MarkdownIt

from provable.cli.main import main
from provable.reports import dashboard, status
from provable.reports.lastrun import LastRun
from provable.reports.mdescape import md_code, md_escape

#: GitHub's Markdown as far as a parser here can say: CommonMark, raw HTML, tables, ~~
MD = MarkdownIt("commonmark", {"html": True}).enable("table").enable("strikethrough")
PAYLOADS = [
    "<img src=x onerror=alert(1)>",
    "<script>alert(1)</script>",
    "[x](javascript:alert(1))",
    "![i](http://e.example/i.png)",
    "a\n# heading",
    "a\r\n\r\n## heading",
    "a | b | c",
    "`code` ``x`` `",
    "&lt;b&gt; &#60;i&#62; &amp;",
    "<http://e.example> <a@b.example>",
    "www.e.example http://e.example x@y.example",
    "**b** _i_ ~~s~~ $m$",
    "\\| \\` \\\\",
    "a\u2028b\u2029c\x85d\x0be\x0cf\x00g\x1ch",
    "\ud800 lone surrogate",
    "   ",
    "",
]
SPECIALS = list("|<>[]()!`*_~&#\\:/@.wW \n\r\t\x00\u2028\u2029\x85\x0b\x0c-=+$^{}\"';") + list(
    "ab1"
)
hostile_text = st.one_of(
    st.sampled_from(PAYLOADS),
    st.text(alphabet=st.sampled_from(SPECIALS), max_size=40),
    st.text(max_size=40),
    st.lists(st.sampled_from(PAYLOADS), max_size=3).map("".join),
)
FAST = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _shown(text: str) -> str:
    """What a reader must see: the text, its control characters as spaces."""
    return "".join(c if c.isprintable() else " " for c in text)


def _walk(tokens):
    for t in tokens:
        yield t
        yield from _walk(t.children or [])


def _cells(page: str) -> list[list]:
    """The inline token of every cell, row by row."""
    rows, row = [], None
    tokens = MD.parse(page)
    for i, t in enumerate(tokens):
        if t.type == "tr_open":
            row = []
        elif t.type in ("td_open", "th_open"):
            row.append(tokens[i + 1])
        elif t.type == "tr_close":
            rows.append(row)
    return rows


@FAST
@given(hostile_text)
def test_escaped_text_in_a_table_cell_is_one_cell_of_plain_text(text):
    escaped = md_escape(text)
    assert len(escaped.splitlines()) <= 1 and "\n" not in escaped and "\r" not in escaped
    page = f"| a | b |\n|---|---|\n| {escaped} | z |\n"
    rows = _cells(page)
    assert [len(r) for r in rows] == [2, 2], page  # no column added, no row added
    cell = rows[1][0]
    assert {c.type for c in cell.children} <= {"text"}, [c.type for c in cell.children]
    assert "".join(c.content for c in cell.children) == _shown(text).strip(" ")
    # no GitHub autolink: those need `www.`, `://` or a bare `@`, all escaped
    assert not re.search(r"(?i)www\.", escaped) and not re.search(r"(?<!\\)://", escaped)
    assert not re.search(r"(?<!\\)@", escaped)


@FAST
@given(hostile_text)
def test_escaped_text_in_a_paragraph_renders_as_itself(text):
    page = f"x {md_escape(text)} y\n"
    tokens = MD.parse(page)
    assert [t.type for t in tokens] == ["paragraph_open", "inline", "paragraph_close"], page
    children = tokens[1].children
    assert {c.type for c in children} <= {"text"}, [c.type for c in children]
    assert "".join(c.content for c in children) == f"x {_shown(text)} y".rstrip(" ")


@FAST
@given(hostile_text)
def test_md_code_is_code_only_for_what_needs_no_escaping(text):
    page = f"| a |\n|---|\n| {md_code(text)} |\n"
    rows = _cells(page)
    assert [len(r) for r in rows] == [1, 1], page
    children = rows[1][0].children
    types = {c.type for c in children}
    assert types <= {"text"} or types == {"code_inline"}, types
    assert "".join(c.content for c in children) == _shown(text).strip(" ")


# --- whole pages -----------------------------------------------------------------------------


def check_page(page: str, headings: int) -> None:
    """The structure of a status.md: its headings, equal columns, no tag, only our links."""
    tokens = list(_walk(MD.parse(page)))
    kinds = {t.type for t in tokens}
    assert not kinds & {"html_inline", "html_block", "code_block", "fence", "hr"}, kinds
    assert sum(t.type == "heading_open" for t in tokens) == headings, page
    for t in tokens:
        if t.type == "link_open":
            href = t.attrGet("href") or ""
            assert not re.match(r"[A-Za-z][A-Za-z0-9+.-]*:", href), href  # ours: relative
        if t.type == "image":
            assert t.attrGet("src") == "history.svg"
    width = None
    for t in MD.parse(page):
        if t.type == "table_open":
            width = None
        if t.type == "tr_open":
            count = 0
        if t.type in ("td_open", "th_open"):
            count += 1
        if t.type == "tr_close":
            width = count if width is None else width
            assert count == width, page


def _view(text: str, i: int) -> dashboard.FalsifierView:
    return dashboard.FalsifierView(
        id=text,
        status="PARTIAL",
        hosts=["cpu", text],
        passed_on=[text],
        last_observed=text,
        evidence=text,
        rule=text,
        evidence_link=text if i % 2 else None,
        last_outcome="not_checked" if i % 3 == 0 else None,
        last_error={"type": text, "message": text, "when": text, "frame": text},
    )


@settings(max_examples=150, deadline=None)
@given(st.lists(hostile_text, min_size=1, max_size=4), st.booleans())
def test_a_dashboard_page_of_hostile_values_keeps_its_shape(texts, problems):
    contracts = []
    for i, text in enumerate(texts):
        row = status.ContractRow(text, text, text, "PROPOSED", False, {}, text if i == 1 else None)
        contracts.append(
            dashboard.ContractView(row, text, [_view(t, j) for j, t in enumerate(texts)])
        )
    board = dashboard.Dashboard(contracts, {"DISCHARGED": 0}, texts[0], [], Path("d"))
    if problems:
        board.problems = list(texts)
    page = dashboard.render_markdown(board)
    unchecked = any(f.unchecked for c in contracts for f in c.falsifiers)
    check_page(page, 1 + len(contracts) + unchecked + problems)


@settings(max_examples=150, deadline=None)
@given(st.lists(hostile_text, min_size=1, max_size=4))
def test_a_status_table_of_hostile_values_keeps_its_shape(texts):
    rows = []
    for i, text in enumerate(texts):
        row = status.ContractRow(text, text, text, text, i % 2 == 0, {}, text if i == 1 else None)
        row.last_runs = {
            t: LastRun(outcome="not_checked", error={"type": t, "message": t}, time=t)
            for t in texts
        }
        rows.append(row)
    check_page(status.render_markdown(rows), 0)


# --- the cases, through the commands --------------------------------------------------

INJECT = "<img src=x onerror=alert(1)>"
CONTRACT = """\
metadata:
  id: inj-v1
  version: "1.0.0"
  description: "injection"
falsification_tests:
  - id: FALSIFY-INJ-001
    rule: "r"
    prediction: "p"
    status: PARTIAL
    evidence: evidence/inj-v1/FALSIFY-INJ-001.json
"""
#: contract values that no reader accepts: shown only in the message saying so, escaped
HOSTILE = """\
metadata:
  id: bad-v1
  version: "1.0.0"
falsification_tests:
  - id: "FALSIFY-BAD-001\\n# heading | col <script>alert(4)</script>"
    rule: "r"
    prediction: "p"
    hosts: [cpu, "<script>alert(2)</script>", "[x](javascript:alert(3))"]
"""


@pytest.fixture
def hostile_project(tmp_path: Path) -> Path:
    (tmp_path / "contracts").mkdir()
    (tmp_path / "contracts" / "inj-v1.yaml").write_text(CONTRACT)
    (tmp_path / "contracts" / "bad-v1.yaml").write_text(HOSTILE)
    folder = tmp_path / "evidence" / "inj-v1"
    folder.mkdir(parents=True)
    record = {
        "schema": "provable-evidence/1",
        "contract": "inj-v1",
        "falsifier": "FALSIFY-INJ-001",
        "outcome": "passed",
        "status": "PARTIAL",
        "runs": {
            "cpu": {
                "tests": [{"nodeid": "t", "outcome": "passed"}],
                "observed_at": f"{INJECT}\n## injected heading | x | y [l](javascript:x)",
            }
        },
        "passed_on": ["cpu", "<script>alert(5)</script>"],
    }
    (folder / "FALSIFY-INJ-001.json").write_text(json.dumps(record))
    return tmp_path


def _dashboard(project: Path, *extra: str) -> int:
    return main(
        [
            "dashboard",
            "--contracts",
            str(project / "contracts"),
            "--evidence",
            str(project / "evidence"),
            "--out",
            str(project / "d"),
            *extra,
        ]
    )


def test_status_md_shows_hostile_contract_and_evidence_values_as_text(hostile_project):
    p = hostile_project
    board = dashboard.build_dashboard(p / "contracts", p / "evidence", p / "d")
    page = (p / "d" / "status.md").read_text()
    for raw in (INJECT, "<script>", "[x](javascript:", "[l](javascript:", "\n## injected"):
        assert raw not in page, raw
    unchecked = any(f.unchecked for c in board.contracts for f in c.falsifiers)
    check_page(page, 1 + len(board.contracts) + bool(board.problems) + unchecked)
    tokens = list(_walk(MD.parse(page)))
    text = "".join(t.content for t in tokens if t.type in ("text", "code_inline"))
    assert INJECT in text and "<script>alert(" in text  # shown, as text
    assert board.errors  # the hostile contract is refused or fails validation: said
    # the HTML page and the chart escaped everything already: they still do
    html = (p / "d" / "index.html").read_text()
    assert INJECT not in html and "<script>alert(" not in html and "&lt;img src=x" in html


def test_pv_status_markdown_escapes_what_came_from_the_file(tmp_path, capsys):
    (tmp_path / "c").mkdir()
    text = CONTRACT.replace('version: "1.0.0"', f'version: "1.0.0 {INJECT} | x"')
    (tmp_path / "c" / "inj-v1.yaml").write_text(text)
    (tmp_path / "c" / "bad-v1.yaml").write_text(f"metadata: [{INJECT}\n")
    main(["status", "--format", "markdown", str(tmp_path / "c")])
    page = capsys.readouterr().out
    assert INJECT not in page and "<img" not in page
    check_page(page, 0)


def test_dashboard_says_when_a_contract_fails_validation_and_check_exits_1(tmp_path, capsys):
    (tmp_path / "contracts").mkdir()
    (tmp_path / "contracts" / "mini-v1.yaml").write_text(
        "metadata:\n  version: '1.0.0'\nfalsification_tests:\n"
        "  - {id: FALSIFY-MINI-001, rule: r, prediction: p}\n"
    )
    bad = tmp_path / "contracts" / "bad-v1.yaml"
    bad.write_text(
        'metadata:\n  version: "one"\nfalsification_tests:\n'
        "  - {id: FALSIFY-BAD-001, rule: r, prediction: p}\n"
    )
    assert _dashboard(tmp_path) == 0  # without --check it only says so
    out = capsys.readouterr().out
    assert f"{bad}:2: " in out and "semver" in out and "fails validation" in out
    assert _dashboard(tmp_path, "--check") == 1
    board = json.loads((tmp_path / "d" / "status.json").read_text())
    [line] = board["problems"]
    assert line.startswith(f"{bad}:2: ") and "metadata.version 'one'" in line
    assert "fails validation" in (tmp_path / "d" / "status.md").read_text()
    bad.unlink()
    assert _dashboard(tmp_path, "--check") == 0, capsys.readouterr()
