"""``binding.yaml``: which Python function implements which contract equation.

Same shape as the public registry (``contract``, ``equation``, ``module_path``, ``function``,
``signature``, ``status``, ``notes``), with Python dotted paths: ``module_path`` is an
importable module (``aprlib.layout``) and ``function`` a name in it, dotted for methods
(``Transformer.forward``). ``signature`` is written as Python
(``def rms_norm(x: Tensor, weight: Tensor, eps: float) -> Tensor`` or just ``(x, weight,
eps)``). ``pv audit --binding`` imports each and compares.
"""

from __future__ import annotations

import ast
import importlib
import inspect
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from provable.findings import ERROR, NOTE, WARNING, Finding, display_path
from provable.model import Contract
from provable.yamlsource import YamlSourceError, read_yaml

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
    """Import ``module_path`` and walk ``function``'s dotted name; raises ``LookupError``."""
    try:
        obj: Any = importlib.import_module(module_path)
    except Exception as exc:  # an import can fail in any way; say how, don't crash
        raise LookupError(f"cannot import {module_path}: {type(exc).__name__}: {exc}") from None
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


def check_bindings(binding_file: BindingFile, contracts: dict[str, Contract]) -> list[Finding]:
    """Every binding resolves to a contract equation and to a function of that signature.

    ``contracts`` maps ids to the contracts known to this run; a binding naming a contract
    outside them is an error (the registry must not drift from the contracts)."""
    shown = display_path(binding_file.path)
    findings = list(binding_file.problems)
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
        if b.status == "not_implemented" or not (b.module_path and b.function):
            if b.status != "not_implemented":
                emit(ERROR, "binding-unresolved", f"{where}: module_path and function required")
            else:
                emit(NOTE, "binding-not-implemented", f"{where}: not implemented")
            continue
        target = f"{b.module_path}.{b.function}"
        try:
            obj = resolve(b.module_path, b.function)
        except LookupError as exc:
            emit(ERROR, "binding-unresolved", f"{where}: {target} does not resolve: {exc}")
            continue
        if not b.signature:
            emit(WARNING, "binding-signature", f"{where}: {target}: no signature declared")
            continue
        try:
            diffs = signature_differences(b.signature, obj)
        except SyntaxError as exc:
            emit(ERROR, "binding-signature", f"{where}: signature is not Python: {exc.msg}")
            continue
        except (TypeError, ValueError) as exc:
            emit(WARNING, "binding-signature", f"{where}: {target} has no signature: {exc}")
            continue
        if diffs:
            emit(ERROR, "binding-signature", f"{where}: {target}: " + "; ".join(diffs))
    return findings
