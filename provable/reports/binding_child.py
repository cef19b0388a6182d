"""The child side of ``pv audit --binding``: bound modules are imported here, never in audit.

``python -I -u -c BOOT OWN REQUEST REPORT`` (``provable.reports.binding.BOOT``: audit's own
checkout ``OWN`` first on the path, never the folder audit runs in; ``python -m
provable.reports.binding_child REQUEST REPORT`` does the same work). REQUEST is a JSON file, read in
full before anything is imported: ``{"sys_path": [...], "entries": [[index, module, function],
...]}``. REPORT is the dedicated channel: the child appends one JSON line per step to it,
written whole and flushed, never to its stdout (a bound module may print there)::

    {"step": "import", "module": M, "out": OFFSET}             before importing M
    {"step": "imported", "module": M, "out": OFFSET, "error": TEXT|null, "exit": CODE|null}
    {"step": "resolve", "index": I, "out": OFFSET}             before walking to the function
    {"step": "resolved", "index": I, "out": OFFSET, "error": TEXT|null, "exit": CODE|null,
     "params": [[name, kind, has_default, annotation], ...]|null, "returns": TEXT|null,
     "no_signature": TEXT|null}
    {"step": "end"}

``OFFSET`` is where the child's stdout (a regular file the parent opened; ``-u``, so nothing
waits in a buffer) stood at that moment, or null when a module took fd 1 away: the parent
reads what each step printed from it. A step begun and never finished names the module that
ended the child (``os._exit``, a signal) or hung it. ``sys.exit`` at import is caught and
reported as ``exit``. After ``end`` the child leaves by ``os._exit(0)``: no ``atexit``
handler or non-daemon thread a module left behind runs after the verdicts are written.
"""

from __future__ import annotations

import importlib
import json
import os
import sys
from typing import IO, Any

from provable.reports.binding import actual_params, walk


def _stdout_offset() -> int | None:
    for stream in (sys.stdout, sys.__stdout__):
        try:
            if stream is not None:
                stream.flush()
        except Exception:  # a module may have replaced or closed it
            pass
    try:
        return os.lseek(1, 0, os.SEEK_CUR)
    except OSError:
        return None


def _exit_code(exc: SystemExit) -> tuple[int, str | None]:
    """The status a ``sys.exit(code)`` gives, and the message when ``code`` is not an int."""
    if exc.code is None:
        return 0, None
    if isinstance(exc.code, int):
        return exc.code, None
    return 1, str(exc.code)


def _describe(exc: BaseException) -> str:
    try:
        text = str(exc)
    except Exception:
        text = "(unprintable)"
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


class Channel:
    def __init__(self, stream: IO[str]) -> None:
        self.stream = stream

    def send(self, step: str, **fields: Any) -> None:
        self.stream.write(json.dumps({"step": step, **fields}) + "\n")
        self.stream.flush()


def _import(channel: Channel, module: str) -> Any:
    """The module, or None when it raised or exited (the report says which)."""
    channel.send("import", module=module, out=_stdout_offset())
    error: str | None = None
    code: int | None = None
    obj: Any = None
    try:
        obj = importlib.import_module(module)
    except SystemExit as exc:
        code, message = _exit_code(exc)
        error = message
    except BaseException as exc:  # a bound module can raise anything; say what
        error = f"cannot import {module}: {_describe(exc)}"
    channel.send("imported", module=module, out=_stdout_offset(), error=error, exit=code)
    return obj if error is None and code is None else None


def _resolve(channel: Channel, index: int, module_obj: Any, module: str, function: str) -> None:
    channel.send("resolve", index=index, out=_stdout_offset())
    result: dict[str, Any] = {
        "error": None,
        "exit": None,
        "params": None,
        "returns": None,
        "no_signature": None,
    }
    try:
        obj = walk(module_obj, module, function)
        try:
            params, returns = actual_params(obj)
        except (TypeError, ValueError) as exc:
            result["no_signature"] = str(exc)
        else:
            result["params"] = [[p.name, p.kind, p.has_default, p.annotation] for p in params]
            result["returns"] = returns
    except SystemExit as exc:
        result["exit"], result["error"] = _exit_code(exc)
    except LookupError as exc:
        result["error"] = str(exc)
    except BaseException as exc:  # a property or module __getattr__ can raise anything
        result["error"] = f"{module}.{function}: {_describe(exc)}"
    channel.send("resolved", index=index, out=_stdout_offset(), **result)


def main(request_path: str, report_path: str) -> None:
    with open(request_path, encoding="utf-8") as f:
        request = json.load(f)
    report = open(report_path, "a", encoding="utf-8")  # noqa: SIM115 - held to os._exit
    del sys.argv[1:]
    sys.path[:] = [str(p) for p in request["sys_path"]]
    channel = Channel(report)
    modules: dict[str, Any] = {}
    for index, module, function in request["entries"]:
        if module not in modules:
            modules[module] = _import(channel, module)
        if modules[module] is not None:
            _resolve(channel, index, modules[module], module, function)
    channel.send("end")
    os._exit(0)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
