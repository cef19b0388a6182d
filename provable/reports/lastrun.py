"""What the last run of each falsifier did, from ``evidence/<contract>/history.jsonl``.

A falsifier whose last run errored (``not_checked``) or failed and then passed on its re-run
(``flaky``) keeps its status, version and committed evidence: only the uncommitted history
says so. ``pv status`` and ``pv dashboard`` read it here, so they can never disagree.

The history is written by the plugin but read as untrusted: a missing file, garbage lines,
huge lines or another writer's half line give no record, never a traceback, and at most the
last ``MAX_BYTES`` of the file are read.

The file is read with ``provable.reports.runfiles``' readers (no symlink followed, bounded JSON).
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any, TypedDict

from provable.reports.runfiles import RunFileError, json_object, tail_lines

#: how much of the end of a history file is read (one line per falsifier per run)
MAX_BYTES = 4 * 2**20
#: the last-run outcomes that leave a claim unchecked (an error; a failure that did not repeat)
NOT_CHECKED, FLAKY = "not_checked", "flaky"
UNCHECKED = frozenset({NOT_CHECKED, FLAKY})
_ERROR_KEYS = {"type": 200, "message": 500, "when": 50, "frame": 500}  # key: most characters


class LastRun(TypedDict):
    outcome: str
    error: dict[str, str | None] | None
    time: str | None


def last_runs(
    evidence_dir: Path, contract_id: str, falsifier_ids: Iterable[str]
) -> dict[str, LastRun | None]:
    """The last history record of each falsifier (by file order), None where there is none."""
    wanted = list(dict.fromkeys(falsifier_ids))
    found: dict[str, LastRun | None] = dict.fromkeys(wanted)
    missing = set(wanted)
    for line in reversed(_tail_lines(evidence_dir, contract_id)):
        if not missing:
            break
        item = json_object(line)
        if item is None:
            continue
        if "contract" in item and item["contract"] != contract_id:
            continue
        fid = item.get("falsifier")
        if not isinstance(fid, str) or fid not in missing:
            continue
        outcome = item.get("outcome")
        if not isinstance(outcome, str):
            continue  # not a record we can read: an older, readable one may be below
        missing.discard(fid)
        time = item.get("time")
        found[fid] = LastRun(
            outcome=outcome[:50],
            error=_error(item.get("error")) if outcome in UNCHECKED else None,
            time=str(time)[:50] if time is not None else None,
        )
    return found


def is_unchecked(record: LastRun | None) -> bool:
    return record is not None and record["outcome"] in UNCHECKED


def one_line(text: str | None) -> str:
    """Control characters (newlines, escape sequences) as spaces: safe in a table or a log."""
    return "".join(c if c.isprintable() else " " for c in text or "").strip()


def error_summary(record: LastRun | None) -> str:
    """``Type: message (when, frame)`` on one line; empty when the record carries no error."""
    error = (record["error"] if record else None) or {}
    head = ": ".join(one_line(error.get(k)) for k in ("type", "message") if error.get(k))
    where = ", ".join(one_line(error.get(k)) for k in ("when", "frame") if error.get(k))
    return f"{head} ({where})" if where else head


def _tail_lines(evidence_dir: Path, contract_id: str) -> list[bytes]:
    """The lines of the last ``MAX_BYTES`` of ``evidence/<contract>/history.jsonl``; none
    for a contract id that names no folder of its own, a symlink on the way, or a FIFO."""
    try:
        return tail_lines(evidence_dir, [contract_id, "history.jsonl"], MAX_BYTES)[0]
    except (RunFileError, OSError):
        return []


def _error(raw: Any) -> dict[str, str | None] | None:
    if not isinstance(raw, dict):
        return None
    error: dict[str, str | None] = {}
    for key, most in _ERROR_KEYS.items():
        value = raw.get(key)
        text = None if value is None else value if isinstance(value, str) else str(value)
        if text is not None and len(text) > most:
            text = text[: most - 1] + "…"
        error[key] = text
    return error
