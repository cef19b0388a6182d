"""``binding.yaml``: which Python function implements which contract equation.

Same shape as the public registry (``contract``, ``equation``, ``module_path``, ``function``,
``signature``, ``status``, ``notes``), with Python dotted paths: ``module_path`` is an
importable module (``aprlib.formats.layout``) and ``function`` a name in it, dotted for methods
(``Transformer.forward``). ``signature`` is written as Python
(``def rms_norm(x: Tensor, weight: Tensor, eps: float) -> Tensor`` or just ``(x, weight,
eps)``). ``pv audit --binding`` imports each and compares.

The imports run in a child process (``provable.reports.binding_child``), never in audit's own: a
bound module is code from whoever wrote it, and what it does at import (``sys.exit``,
``os._exit``, a signal, a print, a sleep, patching audit) must not decide audit's result.
The child reports each step on a dedicated channel (a file, not its stdout); a child that
exits, dies, hangs past the timeout or prints is a ``binding-import`` finding naming the
module and what it did, and the entries it did not reach run in a fresh child.
"""

from __future__ import annotations

import ast
import importlib
import inspect
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from provable.contracts.findings import ERROR, NOTE, WARNING, Finding, display_path
from provable.contracts.model import Contract
from provable.contracts.yamlsource import YamlSourceError, read_yaml

STATUSES = ("implemented", "partial", "not_implemented")


@dataclass
class Binding:
    index: int
    line: int
    contract: str | None
    equation: str | None
    module_path: str | None
    function: str | None
    signature: str | None
    status: str | None
    notes: str | None


@dataclass
class BindingFile:
    path: Path
    bindings: list[Binding]
    problems: list[Finding]


def load_binding_file(path: Path) -> BindingFile:
    shown = display_path(path)
    try:
        doc = read_yaml(Path(path))
    except YamlSourceError as exc:
        return BindingFile(path, [], [Finding(shown, exc.line, ERROR, exc.rule, exc.message)])
    data = doc.data
    raw = data.get("bindings") if isinstance(data, dict) else None
    if not isinstance(raw, list):
        return BindingFile(
            path, [], [Finding(shown, 1, ERROR, "binding-shape", "no top-level 'bindings' list")]
        )
    bindings: list[Binding] = []
    problems: list[Finding] = []

    def text(entry: dict[str, Any], key: str) -> str | None:
        value = entry.get(key)
        return None if value is None else str(value)

    for i, entry in enumerate(raw):
        line = doc.line_of(("bindings", i))
        if not isinstance(entry, dict):
            problems.append(Finding(shown, line, ERROR, "binding-shape", "entry is not a mapping"))
            continue
        bindings.append(
            Binding(
                index=i,
                line=line,
                contract=text(entry, "contract"),
                equation=text(entry, "equation"),
                module_path=text(entry, "module_path"),
                function=text(entry, "function"),
                signature=text(entry, "signature"),
                status=text(entry, "status"),
                notes=text(entry, "notes"),
            )
        )
    return BindingFile(path, bindings, problems)


def resolve(module_path: str, function: str) -> Any:
    """Import ``module_path`` and walk ``function``'s dotted name; raises ``LookupError``.

    In this process: for the child (``provable.reports.binding_child``), never for audit itself."""
    try:
        obj: Any = importlib.import_module(module_path)
    except Exception as exc:  # an import can fail in any way; say how, don't crash
        raise LookupError(f"cannot import {module_path}: {type(exc).__name__}: {exc}") from None
    return walk(obj, module_path, function)


def walk(obj: Any, module_path: str, function: str) -> Any:
    """``function``'s dotted name from the module ``obj``; raises ``LookupError``."""
    walked = module_path
    for part in function.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise LookupError(f"{walked} has no attribute {part!r}") from None
        walked += "." + part
    return obj


@dataclass(frozen=True)
class Param:
    name: str
    kind: str
    has_default: bool
    annotation: str | None


def declared_params(signature: str) -> tuple[list[Param], str | None]:
    """Parameters and return annotation of a signature written as Python; raises
    ``SyntaxError`` when it is not."""
    text = signature.strip()
    if not text.startswith(("def ", "async def ")):
        text = "def _" + (text if text.startswith("(") else f"({text})")
    tree = ast.parse(text.rstrip(":") + ": ...")
    fn = tree.body[0]
    assert isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef))
    a = fn.args
    params: list[Param] = []

    def ann(node: ast.expr | None) -> str | None:
        return ast.unparse(node) if node is not None else None

    positional = [*a.posonlyargs, *a.args]
    first_default = len(positional) - len(a.defaults)
    for i, arg in enumerate(positional):
        kind = "POSITIONAL_ONLY" if i < len(a.posonlyargs) else "POSITIONAL_OR_KEYWORD"
        params.append(Param(arg.arg, kind, i >= first_default, ann(arg.annotation)))
    if a.vararg:
        params.append(Param(a.vararg.arg, "VAR_POSITIONAL", False, ann(a.vararg.annotation)))
    for arg, default in zip(a.kwonlyargs, a.kw_defaults, strict=True):
        params.append(Param(arg.arg, "KEYWORD_ONLY", default is not None, ann(arg.annotation)))
    if a.kwarg:
        params.append(Param(a.kwarg.arg, "VAR_KEYWORD", False, ann(a.kwarg.annotation)))
    return params, ann(fn.returns)


def actual_params(obj: Any) -> tuple[list[Param], str | None]:
    sig = inspect.signature(obj)

    def ann(value: Any) -> str | None:
        if value is inspect.Parameter.empty:
            return None
        return value if isinstance(value, str) else inspect.formatannotation(value)

    params = [
        Param(p.name, p.kind.name, p.default is not inspect.Parameter.empty, ann(p.annotation))
        for p in sig.parameters.values()
    ]
    return params, ann(sig.return_annotation)


def _type_text(annotation: str | None) -> str | None:
    """Compare types by their names without module prefixes or spaces (torch.Tensor = Tensor)."""
    if annotation is None:
        return None
    return re.sub(r"\b[A-Za-z_][A-Za-z0-9_]*\.", "", annotation).replace(" ", "")


def signature_differences(declared: str, obj: Any) -> list[str]:
    want, want_ret = declared_params(declared)
    have, have_ret = actual_params(obj)
    return compare_params(want, want_ret, have, have_ret)


def compare_params(
    want: list[Param], want_ret: str | None, have: list[Param], have_ret: str | None
) -> list[str]:
    out: list[str] = []
    names_want = [p.name for p in want]
    names_have = [p.name for p in have]
    if names_want != names_have:
        out.append(f"parameters ({', '.join(names_have)}), declared ({', '.join(names_want)})")
        return out
    for w, h in zip(want, have, strict=True):
        if w.kind != h.kind:
            out.append(f"{w.name} is {h.kind.lower()}, declared {w.kind.lower()}")
        if w.has_default != h.has_default:
            out.append(f"{w.name} {'has' if h.has_default else 'has no'} default")
        tw, th = _type_text(w.annotation), _type_text(h.annotation)
        if tw is not None and th is not None and tw != th:
            out.append(f"{w.name}: {h.annotation}, declared {w.annotation}")
    tw, th = _type_text(want_ret), _type_text(have_ret)
    if tw is not None and th is not None and tw != th:
        out.append(f"returns {have_ret}, declared {want_ret}")
    return out


# --- the bound modules, imported in a child ----------------------------------------------

#: seconds one step in the child (importing one bound module, or walking to one function
#: and reading its signature) may go without progress before the child is killed
DEFAULT_TIMEOUT_S = 30.0
#: seconds the child has to start (an interpreter, provable) before its first step
STARTUP_S = 30.0
POLL_S = 0.02
#: what of a module's print is shown in its finding
SHOWN_PRINT = 80
REPORT_LIMIT = 16 * 1024 * 1024

#: how the child starts: ``-I`` (isolated: neither the folder audit runs in nor PYTHONPATH
#: comes first), then the checkout audit runs from, so that a ``provable/`` lying in the
#: audited folder is not the code that imports the bound modules and reports on them
BOOT = (
    "import sys; sys.path.insert(0, sys.argv[1]); "
    "from provable.reports.binding_child import main; main(sys.argv[2], sys.argv[3])"
)

#: (index in the binding file, module_path, function)
Entry = tuple[int, str, str]


@dataclass
class Outcome:
    """What became of one binding in the child."""

    #: it exited, died by a signal or hung: nothing checked (error)
    fatal: str | None = None
    #: it does not resolve: the import raised, or no such attribute (error)
    error: str | None = None
    params: list[Param] | None = None
    returns: str | None = None
    #: ``inspect.signature`` could not tell (warning)
    no_signature: str | None = None
    #: what it did besides (printed to stdout): a warning each
    conduct: list[str] = field(default_factory=list)


#: resolves entries within a per-step timeout; ``resolve_in_child`` unless a test hands another
Resolver = Callable[[Sequence[Entry], float], dict[int, Outcome]]


@dataclass
class _ChildRun:
    records: list[dict[str, Any]]
    #: the child's stdout, held open by audit (a module removing the file loses nothing)
    stdout: IO[bytes]
    stderr_tail: str
    #: None: killed after the timeout; negative: the signal that ended it
    returncode: int | None


def resolve_in_child(
    entries: Sequence[Entry], timeout: float = DEFAULT_TIMEOUT_S
) -> dict[int, Outcome]:
    """Each entry's outcome, the imports done in a child (``provable.reports.binding_child``).

    A child that ends or hangs in the middle names the step it was in; the entries it had
    not reached run in a fresh child, until every entry has an outcome."""
    outcomes: dict[int, Outcome] = {}
    conduct: dict[int, list[str]] = {}  # what each did besides, across children
    printed: set[str] = set()  # modules whose print at import is already a finding
    pending = list(entries)
    while pending:
        run = _run_child(pending, timeout)
        before = len(outcomes)
        try:
            _read_run(run, pending, timeout, outcomes, conduct, printed)
        finally:
            run.stdout.close()
        if len(outcomes) == before:  # no step finished: it cannot run here at all
            what = _fate(run.returncode, timeout, None)
            tail = f": {run.stderr_tail}" if run.stderr_tail else ""
            for index, module, function in pending:
                outcomes[index] = Outcome(
                    fatal=f"{module}.{function} not checked: the binding child {what}{tail}"
                )
        pending = [e for e in pending if e[0] not in outcomes]
    for index, texts in conduct.items():
        outcomes[index].conduct.extend(texts)
    return outcomes


def _run_child(entries: Sequence[Entry], timeout: float) -> _ChildRun:
    """One child over ``entries``, in a folder of its own; its stdout and stderr go to files,
    never to ours, and audit reads them and the report through handles it opened itself."""
    steps = len(entries) + len({module for _, module, _ in entries})
    own = str(Path(__file__).resolve().parents[2])  # the folder holding provable/
    child = [sys.executable or "python3", "-I", "-u", "-c", BOOT, own]
    sys_path = [p for p in sys.path if isinstance(p, str)]
    with tempfile.TemporaryDirectory(prefix="pv-binding-", ignore_cleanup_errors=True) as tmp:
        request, report_path = Path(tmp) / "request.json", Path(tmp) / "report.jsonl"
        request.write_text(
            json.dumps({"sys_path": sys_path, "entries": [list(e) for e in entries]})
        )
        out = open(Path(tmp) / "stdout", "w+b")  # noqa: SIM115 - the caller closes it
        try:
            with open(report_path, "w+b") as report, tempfile.TemporaryFile() as err:
                proc = subprocess.Popen(
                    [*child, str(request), str(report_path)],
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=err,
                    close_fds=True,
                    start_new_session=True,  # a timeout kills what the module started too
                )
                returncode = _wait(proc, report, timeout, steps)
                records = _records(report)
                err.seek(max(0, err.seek(0, os.SEEK_END) - 4096))
                lines = err.read().decode("utf-8", "replace").strip().splitlines()
        except BaseException:
            out.close()
            raise
    return _ChildRun(records, out, lines[-1] if lines else "", returncode)


def _wait(
    proc: subprocess.Popen[bytes], report: IO[bytes], timeout: float, steps: int
) -> int | None:
    """The child's exit status, or None when a step went ``timeout`` seconds without
    progress (the child's start has ``STARTUP_S``), or the whole run took longer than every
    step could: then it is killed."""
    start = time.monotonic()
    limit = start + STARTUP_S + timeout * (steps + 1)
    deadline, seen = start + max(timeout, STARTUP_S), 0
    while True:
        try:
            return proc.wait(timeout=POLL_S)
        except subprocess.TimeoutExpired:
            pass
        now = time.monotonic()
        size = os.fstat(report.fileno()).st_size
        if size != seen:
            seen, deadline = size, now + timeout
        if now > deadline or now > limit:
            _kill(proc)
            return None


def _kill(proc: subprocess.Popen[bytes]) -> None:
    """The child and its process group (its own session: nothing of ours is in it)."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (AttributeError, OSError):
        proc.kill()
    proc.wait()


_FIELDS: dict[str, dict[str, tuple[type, ...]]] = {
    "import": {"module": (str,), "out": (int, type(None))},
    "imported": {
        "module": (str,),
        "out": (int, type(None)),
        "error": (str, type(None)),
        "exit": (int, type(None)),
    },
    "resolve": {"index": (int,), "out": (int, type(None))},
    "resolved": {
        "index": (int,),
        "out": (int, type(None)),
        "error": (str, type(None)),
        "exit": (int, type(None)),
        "params": (list, type(None)),
        "returns": (str, type(None)),
        "no_signature": (str, type(None)),
    },
    "end": {},
}


def _records(report: IO[bytes]) -> list[dict[str, Any]]:
    """The report's records up to the first that is not of the protocol's shape (a line cut
    off by a kill, or anything else a module wrote there)."""
    report.seek(0)
    data = report.read(REPORT_LIMIT)
    out: list[dict[str, Any]] = []
    for raw in data.split(b"\n"):
        try:
            record = json.loads(raw)
        except (ValueError, RecursionError):
            break
        step = record.get("step") if isinstance(record, dict) else None
        fields = _FIELDS.get(step) if isinstance(step, str) else None
        if fields is None or any(not isinstance(record.get(k), t) for k, t in fields.items()):
            break
        if record["step"] == "resolved" and record["params"] is not None:
            try:
                record["params"] = [
                    Param(str(n), str(k), bool(d), None if a is None else str(a))
                    for n, k, d, a in record["params"]
                ]
            except (TypeError, ValueError):
                break
        out.append(record)
    return out


def _fate(returncode: int | None, timeout: float, phase: str | None) -> str:
    """How a child ended, as said of the module (``phase`` ``import``) or function
    (``resolve``) it was busy with, or of the child itself (None)."""
    if returncode is None:
        doing = {"import": "importing", "resolve": "resolving"}.get(phase or "", "")
        return f"did not finish {doing or 'its work'} within {timeout:g} s"
    if returncode < 0:
        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = str(-returncode)
        what = f"was killed by signal {name}"
    else:
        what = f"exited with status {returncode}"
    return what + {"import": " during import", "resolve": " while being resolved"}.get(
        phase or "", ""
    )


def _shown_print(stdout: IO[bytes], begin: int | None, end: int | None) -> str | None:
    """What was printed between two offsets of the child's stdout, shortened; None if
    nothing (or the module took fd 1 away, so no offset is known)."""
    if begin is None:
        return None
    size = SHOWN_PRINT * 4 if end is None else max(0, min(end - begin, SHOWN_PRINT * 4))
    try:
        stdout.seek(begin)
        data = stdout.read(size)
    except (OSError, ValueError):  # an offset that is not one
        return None
    if not data:
        return None
    text = data.decode("utf-8", "replace")
    return repr(text[:SHOWN_PRINT]) + ("…" if len(text) > SHOWN_PRINT else "")


def _read_run(
    run: _ChildRun,
    pending: Sequence[Entry],
    timeout: float,
    outcomes: dict[int, Outcome],
    conduct: dict[int, list[str]],
    printed: set[str],
) -> None:
    """Outcomes from one child's records; the step it was in when it ended, if it did not
    reach ``end``, is a fatal outcome for that module's entries or that function's."""
    entry = {index: (module, function) for index, module, function in pending}

    def first_of(module: str) -> int | None:
        return next((i for i, m, _ in pending if m == module and i not in outcomes), None)

    def module_outcome(module: str, outcome: Outcome) -> None:
        for i, m, _ in pending:
            if m == module and i not in outcomes:
                outcomes[i] = Outcome(outcome.fatal, outcome.error)

    def note_print(begin: int | None, end: int | None, module: str, index: int | None) -> None:
        shown = _shown_print(run.stdout, begin, end)
        if shown is None:
            return
        if index is None:  # at import: once per module, on its first binding
            if module in printed or (index := first_of(module)) is None:
                return
            printed.add(module)
            conduct.setdefault(index, []).append(
                f"bound module {module} printed to stdout during import: {shown}"
            )
        else:
            function = entry[index][1]
            conduct.setdefault(index, []).append(
                f"bound function {module}.{function} printed to stdout while being resolved: "
                + shown
            )

    current: dict[str, Any] | None = None
    ended = False
    for record in run.records:
        step = record["step"]
        if step in ("import", "resolve"):
            if step == "resolve" and record["index"] not in entry:
                break
            current = record
        elif step == "imported":
            module = record["module"]
            begin = current["out"] if current and current.get("module") == module else None
            note_print(begin, record["out"], module, None)
            if record["exit"] is not None:
                said = f" ({record['error']!r})" if record["error"] else ""
                fatal = f"bound module {module} exited with status {record['exit']}{said}"
                module_outcome(module, Outcome(fatal=fatal + " during import"))
            elif record["error"] is not None:
                module_outcome(module, Outcome(error=record["error"]))
            current = None
        elif step == "resolved":
            index = record["index"]
            if index not in entry:
                break
            module, function = entry[index]
            begin = current["out"] if current and current.get("index") == index else None
            note_print(begin, record["out"], module, index)
            if record["exit"] is not None:
                said = f" ({record['error']!r})" if record["error"] else ""
                outcomes[index] = Outcome(
                    fatal=f"bound function {module}.{function} exited with status "
                    f"{record['exit']}{said} while being resolved"
                )
            else:
                outcomes[index] = Outcome(
                    error=record["error"],
                    params=record["params"],
                    returns=record["returns"],
                    no_signature=record["no_signature"],
                )
            current = None
        else:
            ended = True
            break
    if not ended and current is not None:
        if current["step"] == "import":
            module = current["module"]
            note_print(current["out"], None, module, None)
            fate = _fate(run.returncode, timeout, "import")
            module_outcome(module, Outcome(fatal=f"bound module {module} {fate}"))
        else:
            index = current["index"]
            module, function = entry[index]
            note_print(current["out"], None, module, index)
            fate = _fate(run.returncode, timeout, "resolve")
            outcomes[index] = Outcome(fatal=f"bound function {module}.{function} {fate}")


def check_bindings(
    binding_file: BindingFile,
    contracts: dict[str, Contract],
    timeout: float = DEFAULT_TIMEOUT_S,
    resolver: Resolver | None = None,
) -> list[Finding]:
    """Every binding resolves to a contract equation and to a function of that signature.

    ``contracts`` maps ids to the contracts known to this run; a binding naming a contract
    outside them is an error (the registry must not drift from the contracts). The bound
    modules are imported in a child (``resolve_in_child``), ``timeout`` seconds a step."""
    shown = display_path(binding_file.path)
    findings = list(binding_file.problems)

    def resolvable(b: Binding) -> bool:
        return b.status != "not_implemented" and bool(b.module_path and b.function)

    wanted = [
        (b.index, b.module_path or "", b.function or "")
        for b in binding_file.bindings
        if resolvable(b)
    ]
    outcomes = (resolver or resolve_in_child)(wanted, timeout) if wanted else {}
    for b in binding_file.bindings:

        def emit(severity: str, rule: str, message: str, b: Binding = b) -> None:
            findings.append(Finding(shown, b.line, severity, rule, message))

        cid = (b.contract or "").removesuffix(".yaml").removesuffix(".yml")
        where = f"{cid or '?'}/{b.equation or '?'}"
        contract = contracts.get(cid)
        if contract is None:
            emit(ERROR, "binding-contract", f"{where}: no contract {cid!r} among those audited")
        else:
            equations = contract.data.get("equations")
            if b.equation not in (equations if isinstance(equations, dict) else {}):
                emit(ERROR, "binding-contract", f"{where}: {cid} has no equation {b.equation!r}")
        if b.status not in STATUSES:
            emit(WARNING, "binding-status", f"{where}: status {b.status!r}, not one of {STATUSES}")
        if not resolvable(b):
            if b.status != "not_implemented":
                emit(ERROR, "binding-unresolved", f"{where}: module_path and function required")
            else:
                emit(NOTE, "binding-not-implemented", f"{where}: not implemented")
            continue
        target = f"{b.module_path}.{b.function}"
        outcome = outcomes.get(b.index) or Outcome(fatal=f"{target} not checked: no outcome")
        for said in outcome.conduct:
            emit(WARNING, "binding-import", f"{where}: {said}")
        if outcome.fatal is not None:
            emit(ERROR, "binding-import", f"{where}: {outcome.fatal}")
            continue
        if outcome.error is not None:
            emit(
                ERROR, "binding-unresolved", f"{where}: {target} does not resolve: {outcome.error}"
            )
            continue
        if not b.signature:
            emit(WARNING, "binding-signature", f"{where}: {target}: no signature declared")
            continue
        try:
            want, want_ret = declared_params(b.signature)
        except (SyntaxError, ValueError, RecursionError, MemoryError) as exc:
            why = exc.msg if isinstance(exc, SyntaxError) else f"{type(exc).__name__}: {exc}"
            emit(ERROR, "binding-signature", f"{where}: signature is not Python: {why}")
            continue
        if outcome.params is None:
            emit(
                WARNING,
                "binding-signature",
                f"{where}: {target} has no signature: {outcome.no_signature}",
            )
            continue
        diffs = compare_params(want, want_ret, outcome.params, outcome.returns)
        if diffs:
            emit(ERROR, "binding-signature", f"{where}: {target}: " + "; ".join(diffs))
    return findings
