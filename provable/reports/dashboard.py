"""``pv dashboard``: every contract's state at a glance, as files a CI job can publish.

Writes into one folder: ``status.json`` (for machines), ``status.md`` (a job summary),
``index.html`` (one static page: no external assets, readable without JavaScript, sortable
and filterable with a little), ``badge.svg`` (discharged/total, coloured by the worst status)
and ``history.svg`` (the scoreboard over time, from the changelogs and ``history.jsonl``).
The counts come from the same rows as ``pv status``, so the two can never disagree.

Contracts and evidence are read as untrusted input, with the rules of ``pv merge``: no
symlink below the evidence folder is followed, nor one from the contracts folder to a file
outside it; evidence and history are read within bounds and typed. A contract that fails
validation, or evidence that cannot be read as it is, is a problem line (printed, on every
page, and ``--check`` fails). Every value from a file is escaped: ``html.escape`` in the
page and the chart, ``provable.reports.mdescape`` in ``status.md``.
"""

from __future__ import annotations

import html
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from provable.contracts import evidence as ev
from provable.contracts.atomic import write_atomic
from provable.contracts.findings import ERROR, Finding
from provable.contracts.model import Contract, read_contract
from provable.contracts.paths import inside, is_safe_name
from provable.contracts.validate import UsageError, check_together, discover
from provable.contracts.yamlsource import YamlSourceError
from provable.reports.lastrun import (
    MAX_BYTES,
    NOT_CHECKED,
    LastRun,
    error_summary,
    is_unchecked,
    one_line,
)
from provable.reports.mdescape import md_code, md_escape
from provable.reports.merge import check_record
from provable.reports.runfiles import (
    RefusedPath,
    RunFileError,
    json_object,
    read_json_below,
    tail_lines,
)
from provable.reports.status import (
    ORDER,
    ContractRow,
    collect,
    count_unchecked,
    falsifier_status,
    problem_row,
    scoreboard,
)

STATUSES = tuple(s.value for s in ORDER)  # DISCHARGED, PARTIAL, PROPOSED, FALSIFIED
COLOURS = {
    "DISCHARGED": "#2e7d32",
    "PARTIAL": "#b58900",
    "PARTIAL_ALGORITHM_LEVEL": "#b58900",
    "PROPOSED": "#757575",
    "FALSIFIED": "#c62828",
    "INVALID": "#c62828",
    "SUPERSEDED": "#757575",
    "RETIRED": "#757575",
    "NOT_CHECKED": "#e65100",  # the last run errored or was flaky: the claim was not tested
}
_TRANSITION = re.compile(r"(FALSIFY-[A-Za-z0-9_-]+)\s+([A-Z_]+)\s*->\s*([A-Z_]+)")


@dataclass
class FalsifierView:
    id: str
    status: str
    hosts: list[str]
    passed_on: list[str]
    last_observed: str | None
    evidence: str | None
    rule: str | None
    evidence_link: str | None = None  # relative to the dashboard folder
    last_outcome: str | None = None  # of its last run, from history.jsonl
    last_error: dict[str, str | None] | None = None  # when that run left it not checked

    @property
    def unchecked(self) -> bool:
        return self.last_outcome in (NOT_CHECKED, "flaky")


@dataclass
class ContractView:
    row: ContractRow
    description: str | None = None
    falsifiers: list[FalsifierView] = field(default_factory=list)


@dataclass
class Dashboard:
    contracts: list[ContractView]
    totals: dict[str, int]
    scoreboard: str
    history: list[tuple[str, dict[str, int]]]
    out: Path
    status_json: str = ""
    not_checked: int = 0  # falsifiers whose last run errored: their claims were not tested
    flaky: int = 0  # falsifiers whose last run failed, then passed on its re-run
    #: a contract that fails validation, evidence that cannot be read as it is (one line each)
    problems: list[str] = field(default_factory=list)

    @property
    def falsified(self) -> bool:
        """A contract, or any falsifier (its contract then derives FALSIFIED), is refuted."""
        return self.totals.get("FALSIFIED", 0) > 0 or any(
            c.row.status == "FALSIFIED" for c in self.contracts
        )

    @property
    def errors(self) -> bool:
        """A contract cannot be read or fails validation, or evidence cannot be read."""
        return bool(self.problems) or any(c.row.error for c in self.contracts)

    @property
    def unchecked(self) -> bool:
        """Some falsifier's last run left its claim untested (an error, or flaky)."""
        return self.not_checked + self.flaky > 0


# --- gathering ---------------------------------------------------------------------------


def _contract(path: Path) -> Contract | None:
    """The contract in ``path``; None for a binding registry or a file that is no contract."""
    try:
        contract = read_contract(path)
    except (YamlSourceError, ValueError, OSError):  # NotAMapping is a ValueError
        return None
    return contract if isinstance(contract, Contract) else None


def _evidence(evidence_dir: Path, cid: str, fid: str, problems: list[str]) -> dict[str, Any] | None:
    """A falsifier's evidence record as ``pv merge`` reads it: below ``evidence_dir``
    without following a symlink, bounded, typed; None (and a problem line) otherwise."""
    if not (is_safe_name(cid) and is_safe_name(fid)):
        return None  # names no file: validation says so
    where = Path(evidence_dir, cid, f"{fid}.json")
    try:
        data = read_json_below(Path(evidence_dir), [cid, f"{fid}.json"], ev.MAX_EVIDENCE_BYTES)
        if data is None:
            return None
    except RefusedPath as exc:
        problems.append(f"{exc}; not followed" if exc.link else f"{exc}; not read")
        return None
    except RunFileError as exc:
        problems.append(f"{where}: {exc}; not shown")
        return None
    record, findings = check_record(data, cid, fid)
    problems.extend(f"{where}: {finding}; not shown" for finding in findings)
    return record


def _falsifier_views(
    contract: Contract,
    evidence_dir: Path,
    out: Path,
    runs_by_id: dict[str, LastRun | None],
    problems: list[str],
) -> list[FalsifierView]:
    views = []
    for f in contract.falsifiers:
        last = runs_by_id.get(f.id)
        record = _evidence(evidence_dir, contract.id, f.id, problems) or {}
        runs = record.get("runs") or {}  # typed: host kind -> section
        times = [s["observed_at"] for s in runs.values() if isinstance(s.get("observed_at"), str)]
        link = f.evidence or (
            f"evidence/{contract.id}/{f.id}.json" if record else None
        )  # the path as the contract names it, relative to the project root
        views.append(
            FalsifierView(
                id=f.id,
                status=falsifier_status(f.status).value,
                hosts=list(f.hosts),
                passed_on=list(record.get("passed_on") or []),
                last_observed=max(times) if times else None,
                evidence=link,
                rule=f.rule,
                evidence_link=os.path.relpath(
                    Path(evidence_dir).resolve() / contract.id / f"{f.id}.json", out.resolve()
                )
                if record
                else None,
                last_outcome=last["outcome"] if last else None,
                last_error=last["error"] if last and is_unchecked(last) else None,
            )
        )
    return views


def _history_lines(evidence_dir: Path, cid: str, problems: list[str]) -> list[dict[str, Any]]:
    """The readable lines of the end of a contract's ``history.jsonl`` (as ``lastrun``)."""
    if not is_safe_name(cid):
        return []
    try:
        lines, _ = tail_lines(Path(evidence_dir), [cid, "history.jsonl"], MAX_BYTES)
    except RefusedPath as exc:
        problems.append(f"{exc}; not followed" if exc.link else f"{exc}; not read")
        return []
    except (RunFileError, OSError):
        return []
    return [item for line in lines if (item := json_object(line)) is not None]


def _history(
    contracts: list[Contract], evidence_dir: Path, problems: list[str] | None = None
) -> list[tuple[str, dict[str, int]]]:
    """The scoreboard after each moment something changed, ending with the current state.

    Events come from the changelogs (dated entries naming ``FALSIFY-X A -> B``) and from
    ``history.jsonl`` (timestamped lines); setting a falsifier to its new status is
    idempotent, so an event seen in both places counts once.
    """
    events: list[tuple[str, str, str]] = []  # (time, "cid:fid", status after)
    known = {f"{c.id}:{f.id}" for c in contracts for f in c.falsifiers}
    for c in contracts:
        for entry in c.changelog:
            if not entry.date or not entry.change:
                continue
            for fid, _before, after in _TRANSITION.findall(entry.change):
                events.append((f"{entry.date}T23:59:59", f"{c.id}:{fid}", after))
        for item in _history_lines(evidence_dir, c.id, [] if problems is None else problems):
            time, fid, after = item.get("time"), item.get("falsifier"), item.get("after")
            typed = isinstance(time, str) and isinstance(fid, str) and isinstance(after, str)
            if typed and time and after:
                events.append((time, f"{c.id}:{fid}", after))
    state = dict.fromkeys(known, "PROPOSED")
    counts = {s: sum(v == s for v in state.values()) for s in STATUSES}
    points: list[tuple[str, dict[str, int]]] = []
    for time, qid, after in sorted(events):
        if qid not in state:
            continue  # a falsifier since removed
        if not points:  # where it started: everything proposed
            points.append((time, dict(counts)))
        new = falsifier_status(after).value
        if new == state[qid]:
            continue  # only moments where the scoreboard moved
        counts[state[qid]] -= 1
        counts[new] += 1
        state[qid] = new
        if len(points) > 1 and points[-1][0] == time:
            points[-1] = (time, dict(counts))  # one run's events share one instant
        else:
            points.append((time, dict(counts)))
    return points


def gather(
    contracts_dir: Path, evidence_dir: Path, out: Path, problems: list[str] | None = None
) -> tuple[list[ContractView], list[Contract]]:
    views: list[ContractView] = []
    loaded: list[Contract] = []
    problems = [] if problems is None else problems
    for path in discover([str(contracts_dir)]):
        if not inside(path, contracts_dir):  # a symlink to a file elsewhere: not followed
            row = problem_row(path, f"a symbolic link to a file outside {contracts_dir}")
            views.append(ContractView(row=row))
            continue
        rows = collect([path], evidence_dir)  # the rows of `pv status`: they never disagree
        if not rows:
            continue  # a binding registry
        view = ContractView(row=rows[0])
        contract = None if rows[0].error else _contract(path)  # a refused file: its row says why
        if contract is not None:
            loaded.append(contract)
            view.description = contract.description
            view.falsifiers = _falsifier_views(
                contract, evidence_dir, out, rows[0].last_runs, problems
            )
        views.append(view)
    problems[:0] = validation_problems(loaded)
    return views, loaded


def validation_problems(contracts: list[Contract]) -> list[str]:
    """One line per contract that fails ``pv validate``: the file, its first error."""
    from provable.contracts.rules import check_contract

    found: list[Finding] = []
    for c in contracts:
        try:
            found.extend(check_contract(c))
        except Exception as exc:  # as in validate: one file's defect must not hide the others
            found.append(Finding(c.shown_path, 1, ERROR, "internal", f"could not check: {exc}"))
    found.extend(check_together(contracts))
    errors: dict[str, list[Finding]] = {}
    for finding in found:
        if finding.severity == ERROR:
            errors.setdefault(finding.path, []).append(finding)
    lines = []
    for c in contracts:
        mine = sorted(errors.pop(c.shown_path, []), key=lambda f: (f.line, f.rule))
        if mine:
            first, n = mine[0], len(mine)
            lines.append(
                f"{first.path}:{first.line}: fails validation ({n} error{'s' if n > 1 else ''}; "
                f"first: [{first.rule}] {first.message}); see pv validate"
            )
    return lines


def build_dashboard(contracts_dir: Path, evidence_dir: Path, out: Path) -> Dashboard:
    """Gather, render and write every file; raises ``UsageError`` for a missing folder or
    one that cannot be written."""
    if not Path(contracts_dir).is_dir():
        raise UsageError(f"{contracts_dir}: no such contracts folder")
    problems: list[str] = []
    views, loaded = gather(Path(contracts_dir), Path(evidence_dir), Path(out), problems)
    rows = [v.row for v in views]
    totals = {s: sum(r.counts.get(s, 0) for r in rows) for s in STATUSES}
    history = _history(loaded, Path(evidence_dir), problems)
    current = (ev.now(), dict(totals))
    if not history or history[-1][1] != totals:
        history.append(current)  # e.g. falsifiers added since the last recorded change
    not_checked, flaky = count_unchecked(rows)
    board = Dashboard(views, totals, scoreboard(rows), history, Path(out), "", not_checked, flaky)
    board.problems = list(dict.fromkeys(problems))
    board.status_json = render_json(board)
    files = {
        "status.json": board.status_json + "\n",
        "status.md": render_markdown(board) + "\n",
        "index.html": render_html(board),
        "badge.svg": render_badge(board),
        "history.svg": render_chart(board.history),
    }
    try:
        Path(out).mkdir(parents=True, exist_ok=True)
        for name, text in files.items():
            # a lone surrogate (a JSON \ud800 escape in evidence) stays an escape
            data = text.encode("utf-8", "backslashreplace")
            write_atomic(Path(out) / name, data, sync_dir=False)  # replaces a link, never follows
            os.chmod(Path(out) / name, 0o644)  # published pages: readable by a web server
        ev.sync_folder(Path(out))  # a failed fsync (a full disk, EIO) is a write error too
    except OSError as exc:
        raise UsageError(f"{exc.filename or out}: cannot write: {exc.strerror or exc}") from None
    return board


# --- rendering ---------------------------------------------------------------------------


def render_json(board: Dashboard) -> str:
    return json.dumps(
        {
            "scoreboard": board.scoreboard,
            "totals": board.totals,
            "not_checked": board.not_checked,
            "flaky": board.flaky,
            "contracts": [
                {
                    "id": c.row.id,
                    "path": c.row.path,
                    "version": c.row.version,
                    "status": c.row.status,
                    "status_derived": c.row.derived,
                    "counts": c.row.counts,
                    **({"error": c.row.error} if c.row.error else {}),
                    "not_checked": c.row.not_checked,
                    "flaky": c.row.flaky,
                    "falsifiers": [f.__dict__ for f in c.falsifiers],
                }
                for c in board.contracts
            ],
            "history": [{"time": t, **counts} for t, counts in board.history],
            "problems": board.problems,
        },
        indent=2,
        ensure_ascii=False,
    )


def _md(text: str | None) -> str:
    """A value from a file in ``status.md`` (``provable.reports.mdescape``); ``-`` for none."""
    return md_escape(text) if text else "-"


def _word(status: str) -> str:
    """A status word of ours as it is (``PARTIAL_ALGORITHM_LEVEL``), anything else escaped."""
    return status if status in COLOURS else _md(status)


#: a link status.md may write as it is; any other goes in ``<...>``, escaped
_PLAIN_LINK = re.compile(r"[A-Za-z0-9._/-]+")


def _md_link(target: str) -> str:
    if re.match(r"[A-Za-z][A-Za-z0-9+.-]*:", target):
        target = "./" + target  # relative, whatever its first folder is called
    return target if _PLAIN_LINK.fullmatch(target) else f"<{md_escape(target)}>"


def _unchecked_label(f: FalsifierView) -> str:
    return "not checked" if f.last_outcome == NOT_CHECKED else str(f.last_outcome)


def _error_text(f: FalsifierView) -> str:
    return error_summary(LastRun(outcome=f.last_outcome or "", error=f.last_error, time=None))


def render_markdown(board: Dashboard) -> str:
    """``status.md``: every value that came from a file goes through ``md_escape`` (or
    ``md_code``), so none can add a line, a column, a tag or a link to the job summary."""
    score = md_escape(board.scoreboard).strip() or "-"  # `** **` would be a rule
    lines = ["# Contract status", "", f"**{score}**", ""]
    if board.problems:
        lines += [
            "## Problems",
            "",
            "These contracts fail validation, or their evidence cannot be read as it is "
            "(`pv dashboard --check` fails):",
            "",
            "| problem |",
            "|---|",
            *(f"| {_md(p)} |" for p in board.problems),
            "",
        ]
    unchecked = [(c.row, f) for c in board.contracts for f in c.falsifiers if f.unchecked]
    if unchecked:
        lines += [
            "## Not checked",
            "",
            "The last run of these falsifiers errored or was flaky: their claims were not "
            "tested, and their status is the one an earlier run left.",
            "",
            "| falsifier | contract | status | last run | error |",
            "|---|---|---|---|---|",
        ]
        for r, f in unchecked:
            lines.append(
                f"| {md_code(f.id)} | {md_code(r.id)} | {_word(f.status)} | "
                f"{_md(_unchecked_label(f))} | {_md(_error_text(f))} |"
            )
        lines.append("")
    lines.append("![scoreboard over time](history.svg)")
    for c in board.contracts:
        r = c.row
        lines += ["", f"## {md_code(r.id)} {_md(r.version)} — {_word(r.status)}", ""]
        if r.error:
            lines += [f"error: {_md(r.error)}", ""]
            continue
        lines += [
            "| falsifier | status | hosts required | passed on | last observed | evidence |",
            "|---|---|---|---|---|---|",
        ]
        for f in c.falsifiers:
            link = f"[json]({_md_link(f.evidence_link)})" if f.evidence_link else "-"
            status = _word(f.status) + (f" ({_md(_unchecked_label(f))})" if f.unchecked else "")
            lines.append(
                f"| {md_code(f.id)} | {status} | {md_escape(', '.join(f.hosts))} | "
                f"{_md(', '.join(f.passed_on))} | {_md(f.last_observed)} | {link} |"
            )
    return "\n".join(lines)


_CSS = """
body{font:14px/1.4 system-ui,sans-serif;margin:1.5em;color:#212121}
h1{margin:0 0 .3em}.score{font-size:1.2em;margin:.4em 0 1em}
.tot{display:inline-block;margin-right:1.2em;font-weight:600}
table{border-collapse:collapse;margin:.5em 0 1.5em;width:100%}
th,td{border:1px solid #ddd;padding:.25em .5em;text-align:left;vertical-align:top}
th{background:#f5f5f5;cursor:pointer;user-select:none}
.s{font-weight:600;white-space:nowrap}
.DISCHARGED{color:#2e7d32}.PARTIAL,.PARTIAL_ALGORITHM_LEVEL{color:#b58900}
.PROPOSED,.SUPERSEDED,.RETIRED{color:#757575}.FALSIFIED,.INVALID{color:#c62828}
.NOT_CHECKED{color:#e65100}tr.NOT_CHECKED td:first-child{border-left:4px solid #e65100}
.err{color:#e65100;font-weight:400;white-space:normal;font-size:.9em}
.rule{color:#555;font-size:.9em}#filter{padding:.3em;width:24em;margin-bottom:.5em}
"""

_JS = """
(function(){
  var input=document.getElementById('filter');
  input.hidden=false;
  input.addEventListener('input',function(){
    var q=input.value.toLowerCase();
    document.querySelectorAll('tbody tr').forEach(function(tr){
      tr.style.display=tr.textContent.toLowerCase().indexOf(q)<0?'none':'';
    });
  });
  document.querySelectorAll('th').forEach(function(th){
    th.title='click to sort';
    th.addEventListener('click',function(){
      var table=th.closest('table'),body=table.tBodies[0],i=th.cellIndex;
      var asc=th.dataset.asc!=='1';th.dataset.asc=asc?'1':'0';
      var rows=Array.prototype.slice.call(body.rows);
      rows.sort(function(a,b){
        var x=a.cells[i].textContent,y=b.cells[i].textContent;
        var nx=parseFloat(x),ny=parseFloat(y);
        var c=(!isNaN(nx)&&!isNaN(ny))?nx-ny:x.localeCompare(y);
        return asc?c:-c;
      });
      rows.forEach(function(r){body.appendChild(r);});
    });
  });
})();
"""


def _e(text: Any) -> str:
    return html.escape(str(text), quote=True)


def render_html(board: Dashboard) -> str:
    t = board.totals
    totals = "".join(
        f'<span class="tot {s}">{s.lower()}: <span data-count="{s}">{t[s]}</span></span>'
        for s in STATUSES
    )
    # counts of their own, not statuses: data-not-checked, never data-count
    totals += (
        f'<span class="tot NOT_CHECKED">not checked: '
        f"<span data-not-checked>{board.not_checked}</span></span>"
    )
    if board.flaky:
        totals += (
            f'<span class="tot NOT_CHECKED">flaky: <span data-flaky>{board.flaky}</span></span>'
        )
    summary_rows = []
    for c in board.contracts:
        r = c.row
        cells = "".join(f'<td data-count="{s}">{r.counts.get(s, 0)}</td>' for s in STATUSES)
        unchecked = r.not_checked + r.flaky
        cls = ' class="NOT_CHECKED"' if unchecked else ""
        summary_rows.append(
            f'<tr data-contract="{_e(r.id)}"><td><a href="#{_e(r.id)}">{_e(r.id)}</a></td>'
            f"<td>{_e(r.version)}</td>"
            f'<td class="s {_e(r.status)}" data-status>{_e(r.status)}</td>{cells}'
            f"<td{cls} data-not-checked>{unchecked}</td></tr>"
        )
    heads = "".join(f"<th>{s.lower()}</th>" for s in STATUSES) + "<th>not checked</th>"
    problems = "".join(f'<li class="FALSIFIED">{_e(p)}</li>' for p in board.problems)
    problems = f'<ul id="problems">{problems}</ul>' if problems else ""
    sections = []
    for c in board.contracts:
        r = c.row
        body = []
        for f in c.falsifiers:
            link = f'<a href="{_e(f.evidence_link)}">json</a>' if f.evidence_link else "-"
            row, note = "<tr>", ""
            if f.unchecked:
                row = f'<tr class="NOT_CHECKED" data-last-outcome="{_e(f.last_outcome)}">'
                error = _error_text(f)
                note = _e(_unchecked_label(f)) + (f": {_e(error)}" if error else "")
                note = f'<div class="err">{note}</div>'
            body.append(
                f"{row}<td><code>{_e(f.id)}</code>"
                f'<div class="rule">{_e(f.rule or "")}</div></td>'
                f'<td class="s {_e(f.status)}">{_e(f.status)}{note}</td>'
                f"<td>{_e(', '.join(f.hosts))}</td><td>{_e(', '.join(f.passed_on) or '-')}</td>"
                f"<td>{_e(f.last_observed or '-')}</td><td>{link}</td></tr>"
            )
        error = f'<p class="FALSIFIED">{_e(r.error)}</p>' if r.error else ""
        sections.append(
            f'<h2 id="{_e(r.id)}">{_e(r.id)} <small>{_e(r.version)}</small> '
            f'<span class="s {_e(r.status)}">{_e(r.status)}</span></h2>'
            f"<p>{_e(c.description or '')}</p>{error}"
            "<table><thead><tr><th>falsifier</th><th>status</th><th>hosts required</th>"
            "<th>passed on</th><th>last observed</th><th>evidence</th></tr></thead>"
            f"<tbody>{''.join(body)}</tbody></table>"
        )
    return (
        '<!doctype html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width,initial-scale=1">'
        f"<title>provable: contract status</title><style>{_CSS}</style></head><body>"
        f"<h1>Contract status</h1>"
        f'<div class="score" id="scoreboard">{_e(board.scoreboard)}</div>'
        f'<div id="totals">{totals}</div>'
        f"{problems}"
        f'<p><img src="badge.svg" alt="badge"> </p>'
        f'<p><img src="history.svg" alt="scoreboard over time" width="720"></p>'
        '<input id="filter" type="search" placeholder="filter rows" hidden>'
        "<table><thead><tr><th>contract</th><th>version</th><th>status</th>"
        f"{heads}</tr></thead><tbody>{''.join(summary_rows)}</tbody></table>"
        f"{''.join(sections)}"
        f"<script>{_JS}</script></body></html>\n"
    )


def worst_status(totals: dict[str, int]) -> str:
    for s in ("FALSIFIED", "PROPOSED", "PARTIAL"):
        if totals.get(s):
            return s
    return "DISCHARGED"


def render_badge(board: Dashboard) -> str:
    total = sum(board.totals.values())
    label, value = "contracts", f"{board.totals['DISCHARGED']}/{total} discharged"
    worst = worst_status(board.totals)
    colour = COLOURS["NOT_CHECKED" if worst != "FALSIFIED" and board.unchecked else worst]
    if board.not_checked:
        value += f", {board.not_checked} not checked"
    if board.flaky:
        value += f", {board.flaky} flaky"
    lw, vw = 7 * len(label) + 12, 7 * len(value) + 12
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{lw + vw}" height="20" '
        f'role="img" aria-label="{label}: {value}"><title>{label}: {value}</title>'
        f'<rect width="{lw}" height="20" fill="#555"/>'
        f'<rect x="{lw}" width="{vw}" height="20" fill="{colour}"/>'
        '<g fill="#fff" font-family="Verdana,DejaVu Sans,sans-serif" font-size="11">'
        f'<text x="6" y="14">{label}</text><text x="{lw + 6}" y="14">{value}</text></g></svg>\n'
    )


def render_chart(history: list[tuple[str, dict[str, int]]]) -> str:
    """Falsifier counts by status over time: one line per status, written by hand."""
    width, height, left, right, top, bottom = 720, 260, 44, 130, 16, 40
    pw, ph = width - left - right, height - top - bottom
    ymax = max([sum(c.values()) for _, c in history] + [1])
    n = len(history)

    def x(i: int) -> float:
        return left + (pw * i / (n - 1) if n > 1 else pw / 2)

    def y(v: int) -> float:
        return top + ph - ph * v / ymax

    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="11">',
        "<title>falsifiers by status over time</title>",
        f'<rect width="{width}" height="{height}" fill="#fff"/>',
        f'<line x1="{left}" y1="{top + ph}" x2="{left + pw}" y2="{top + ph}" stroke="#999"/>',
        f'<line x1="{left}" y1="{top}" x2="{left}" y2="{top + ph}" stroke="#999"/>',
    ]
    for v in sorted({0, ymax // 2, ymax}):
        parts.append(f'<text x="{left - 6}" y="{y(v) + 4:.1f}" text-anchor="end">{v}</text>')
    for i in sorted({0, n - 1} | ({n // 2} if n > 2 else set())):
        parts.append(
            f'<text x="{x(i):.1f}" y="{top + ph + 16}" text-anchor="middle">'
            f"{_e(history[i][0][:10])}</text>"
        )
    for k, s in enumerate(STATUSES):
        points = " ".join(f"{x(i):.1f},{y(c.get(s, 0)):.1f}" for i, (_, c) in enumerate(history))
        parts.append(
            f'<polyline fill="none" stroke="{COLOURS[s]}" stroke-width="2" points="{points}"/>'
        )
        for i, (_, c) in enumerate(history):
            parts.append(
                f'<circle cx="{x(i):.1f}" cy="{y(c.get(s, 0)):.1f}" r="2.5" fill="{COLOURS[s]}"/>'
            )
        last = history[-1][1].get(s, 0) if history else 0
        ly = top + 14 + 18 * k
        parts.append(
            f'<rect x="{left + pw + 12}" y="{ly - 9}" width="10" height="10" '
            f'fill="{COLOURS[s]}"/><text x="{left + pw + 26}" y="{ly}">{s.lower()} {last}</text>'
        )
    parts.append("</svg>\n")
    return "\n".join(parts)


def print_summary(board: Dashboard) -> None:
    """What ``pv dashboard`` and ``pv check`` print: where the files are, the scoreboard,
    and a line per problem (a contract that fails validation, unreadable evidence)."""
    from rich.console import Console

    console = Console() if Console().is_terminal else Console(width=160)
    worst = worst_status(board.totals)
    colour = {"FALSIFIED": "bold red", "PROPOSED": "yellow", "PARTIAL": "yellow"}.get(
        worst, "green"
    )
    if worst != "FALSIFIED" and board.unchecked:
        colour = "dark_orange"
    console.print(
        f"dashboard: {board.out}/index.html (status.md, status.json, badge.svg, history.svg)",
        markup=False,
        highlight=False,
    )
    console.print(board.scoreboard, style=colour, markup=False, highlight=False)
    for line in board.problems:
        console.print(one_line(line), style="red", markup=False, highlight=False, soft_wrap=True)


def unchecked_lines(board: Dashboard) -> list[str]:
    """Why ``pv dashboard --check`` and ``pv check`` fail on a run that tested nothing."""
    where = Path(board.out) / "status.md"
    lines = []
    if board.not_checked:
        lines.append(f"not checked: {board.not_checked} (the claims were not tested; see {where})")
    if board.flaky:
        lines.append(f"flaky: {board.flaky} (failed, then passed on a re-run; see {where})")
    return lines
