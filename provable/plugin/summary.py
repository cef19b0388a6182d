"""The "contract status" section of pytest's terminal summary (the plugin's output)."""

from __future__ import annotations

from typing import Any

from provable.contracts.findings import display_path
from provable.contracts.lifecycle import FalsifierStatus, Outcome
from provable.plugin.update import SessionOutcome

#: outcomes that change nothing yet must be seen: the heading each gets, and its colour
_UNSETTLED = {
    Outcome.NOT_CHECKED: ("not checked", "the claim was not tested; nothing changed", "red"),
    Outcome.FLAKY: ("flaky", "failed, then passed when re-run: not a refutation", "yellow"),
    Outcome.NOT_WRITTEN: ("not yet written", "a scaffold placeholder; nothing changed", "yellow"),
}


def write_summary(tr: Any, outcome: SessionOutcome) -> None:
    """Regressions first, in red; a pass that did not promote says why."""
    if not (outcome.contracts or outcome.unbound or outcome.stale or outcome.interrupted):
        return
    tr.write_sep("=", "contract status")
    if outcome.interrupted and outcome.written and outcome.contracts:
        tr.write_line("run interrupted: only its refutations were written", yellow=True)
    elif outcome.interrupted:
        tr.write_line("run interrupted: no contract or evidence file was written", yellow=True)
    elif not outcome.written:
        tr.write_line("--no-status-write: nothing written; this is what would change", yellow=True)
    rows = sorted(outcome.contracts, key=lambda c: (not c.regression, c.cid))
    for c in rows:
        version = c.version_before or "-"
        if c.version_after != c.version_before:
            version += f" → {c.version_after}"
        arrow = f"{c.before} → {c.after}" if c.before != c.after else f"{c.after} (unchanged)"
        label = "REGRESSION " if c.regression else ("REFUTED " if c.after == "FALSIFIED" else "")
        tr.write_line(
            f"{label}{c.cid} {version}: {arrow}",
            red=c.regression or c.after == "FALSIFIED",
            green=not c.regression and c.after == "DISCHARGED",
            bold=c.regression,
        )
        if c.problem:
            tr.write_line(f"    {c.problem}", red=True)
        for f in sorted(c.falsifiers, key=lambda f: (not f.regression, f.fid)):
            if f.outcome in _UNSETTLED:
                continue  # listed below, under their own heading
            if f.note:
                tr.write_line(f"    {f.fid}: {f.after.value} ({f.note})", yellow=True)
                continue
            if f.before is f.after and f.after is not FalsifierStatus.FALSIFIED:
                continue
            line = f"    {f.fid}: {f.before.value} → {f.after.value}"
            if f.after is FalsifierStatus.FALSIFIED and f.message:
                first = next((ln for ln in f.message.splitlines() if ln.startswith("E ")), "")
                line += f"  {first.strip()}" if first else ""
            tr.write_line(line, red=f.after is FalsifierStatus.FALSIFIED)
            if f.moved:
                tr.write_line(
                    f"      versions differ from the run that recorded {f.before.value}: "
                    + ", ".join(f.moved),
                    yellow=True,
                )
        kept = [
            f
            for f in c.falsifiers
            if f.before is f.after
            and f.after is not FalsifierStatus.FALSIFIED
            and not f.note
            and f.outcome not in _UNSETTLED
        ]
        if kept:
            counts: dict[str, int] = {}
            for f in kept:
                counts[f.after.value] = counts.get(f.after.value, 0) + 1
            tally = ", ".join(f"{n} {s}" for s, n in sorted(counts.items()))
            tr.write_line(f"    unchanged: {tally}")
    for kind, (heading, meaning, colour) in _UNSETTLED.items():
        hits = [(c.cid, f) for c in outcome.contracts for f in c.falsifiers if f.outcome is kind]
        if not hits:
            continue
        tr.write_line(f"{heading}: {len(hits)} ({meaning})", **{colour: True, "bold": True})
        for cid, f in sorted(hits, key=lambda h: (h[0], h[1].fid)):
            tr.write_line(
                f"    {cid}:{f.fid} ({f.after.value}): {_error_line(f)}", **{colour: True}
            )
    if outcome.unbound:
        tr.write_line(
            f"unbound (stay PROPOSED, no test carries them): {', '.join(outcome.unbound)}",
            yellow=True,
        )
    for line in outcome.stale:
        tr.write_line(line, yellow=True)
    paths = sorted({display_path(c.path) for c in outcome.contracts if c.written})
    if paths:
        tr.write_line(f"rewrote: {', '.join(paths)}")


def _error_line(f: object) -> str:
    """``ModuleNotFoundError: No module named 'x' (in setup, tests/test_a.py:12 in fixture)``."""
    error = getattr(f, "error", None)
    if not isinstance(error, dict):
        message = getattr(f, "message", None) or ""
        return next((ln.strip() for ln in message.splitlines() if ln.strip()), "")[:200]
    where = ", ".join(str(x) for x in (f"in {error.get('when')}", error.get("frame")) if x)
    message = next((ln.strip() for ln in str(error.get("message")).splitlines() if ln.strip()), "")
    line = f"{error.get('type')}: {message}" if message else str(error.get("type"))
    if error.get("rerun"):
        line += f"; re-run: {error['rerun']}"
    return f"{line} ({where})" if where else line
