"""``pv scaffold CONTRACT``: a pytest module with one failing test per falsifier.

Each test carries its ``@pytest.mark.falsifies`` marker (so the plugin binds it at once), a
docstring from the falsifier's rule, prediction and if_fails, and a body that calls
``provable.plugin.outcomes.not_yet_written``: pytest reports it failed ("not yet written") and the
plugin keeps the falsifier PROPOSED. A scaffold must never pass, or an empty test would
discharge a claim; nor may it refute one, for it observed nothing.
Re-running appends tests for falsifiers that no test in the file binds yet and never
touches what is there.

Contracts are untrusted input: the module's name is built from the contract id (``pv
scaffold`` takes only an id of the safe shape, ``unsafe_id``), it must resolve below the
output folder (a symlink there is refused, not followed), and contract text is escaped so
that it stays text in a module that always compiles.
"""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass
from pathlib import Path

from provable.contracts.atomic import write_atomic
from provable.contracts.findings import ERROR, Finding, display_path
from provable.contracts.model import Contract, Falsifier
from provable.contracts.paths import inside, is_safe_name
from provable.plugin.markers import bound_ids

NOT_YET_WRITTEN = "not yet written"
#: the first line of a placeholder body. Imported there, not in the module's header: a test
#: appended to a module written before (or by hand) needs no header, and once every test is
#: written no unused import is left behind.
PLACEHOLDER_IMPORT = "from provable.plugin.outcomes import not_yet_written"


class ScaffoldRefused(Exception):
    """Nothing was written; ``finding`` says why, as ``pv validate`` prints a finding."""

    def __init__(self, finding: Finding) -> None:
        super().__init__(finding.render())
        self.finding = finding


@dataclass
class ScaffoldResult:
    path: Path
    added: list[str]  # falsifier ids that got a test now
    present: list[str]  # falsifier ids some test in the file already binds
    created: bool


def module_path(contract: Contract, out: Path) -> Path:
    """``falsifiers/test_<contract id, '-' and '.' as '_'>.py``, the layout of DESIGN §2."""
    return Path(out) / f"test_{re.sub(r'[^A-Za-z0-9_]', '_', contract.id)}.py"


def unsafe_id(contract: Contract) -> Finding | None:
    """A finding when the contract id is not of the safe shape for a file name
    (``provable.contracts.paths.is_safe_name``): ``pv scaffold`` builds no path from it."""
    if is_safe_name(contract.id):
        return None
    meta = contract.data.get("metadata")
    declared = isinstance(meta, dict) and meta.get("id") == contract.id
    where = "metadata.id" if declared else "the file name; no metadata.id"
    return Finding(
        contract.shown_path,
        contract.line_of("metadata", "id") if declared else 1,
        ERROR,
        "contract-id-unsafe",
        f"contract id {contract.id!r} ({where}) cannot name a test module: letters, digits, "
        "'.', '_' and '-' only, starting with a letter or digit, no '..'; nothing written",
    )


#: a file name holds 255 bytes on the file systems users have, and the atomic write's temp
#: file beside the module adds 14 (``.NAME.xxxxxxxx.tmp``)
MAX_MODULE_NAME_BYTES = 255 - 14


def _checked_path(contract: Contract, out: Path) -> Path:
    """``module_path``, refused unless it resolves below ``out`` (a symlink leaving it) and
    its name fits a file name (a long id was an ``OSError`` traceback from the temp file)."""
    path = module_path(contract, out)
    size = len(path.name.encode("utf-8", "surrogateescape"))
    if size > MAX_MODULE_NAME_BYTES:
        raise ScaffoldRefused(
            Finding(
                contract.shown_path,
                1,
                ERROR,
                "output-path",
                f"the test module's name would be {size} bytes ({path.name[:40]}...): file "
                f"names hold 255 and its temp file needs 14 more; nothing written",
            )
        )
    if not inside(path, out):
        try:
            target = str(path.resolve())
        except (OSError, RuntimeError):
            target = "a link that does not resolve"
        raise ScaffoldRefused(
            Finding(
                str(Path(display_path(path.parent)) / path.name),  # the link, not its target
                1,
                ERROR,
                "output-path",
                f"resolves to {target}, outside {display_path(Path(out))}; nothing written",
            )
        )
    return path


def _function_names(source: str) -> set[str]:
    return {
        n.name
        for n in ast.walk(ast.parse(source))
        if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))
    }


def _in_docstring(text: str) -> str:
    """Contract text inside a generated triple-quoted string, where it must stay text.

    A contract may come from anywhere: an id or a description that closed the docstring
    (three double quotes) or held an escape (backslash-N-brace) would become code, or a
    module that does not compile, in the file pytest imports next.

    A character Python source cannot hold as it is (a NUL, a lone surrogate, a carriage
    return it would read as a newline) is written as its escape: the docstring's value is
    still the contract's text.
    """
    text = text.replace("\\", "\\\\").replace('"""', '\\"\\"\\"')
    return "".join(
        c if c.isprintable() or c == "\n" else c.encode("unicode_escape").decode("ascii")
        for c in text
    )


def _docstring(f: Falsifier) -> str:
    parts = [f"{f.id}: {f.rule or '(no rule)'}"]
    for label, text in (("Prediction", f.prediction), ("How", f.test), ("If it fails", f.if_fails)):
        if text:
            parts.append(f"{label}: {text}")
    body = "\n\n    ".join(_in_docstring(p) for p in parts)
    return f'"""{body}\n    """'


def _test_source(f: Falsifier, name: str) -> str:
    message = f"{f.id} {NOT_YET_WRITTEN}: write a test that would observe the claim fail"
    return (
        f"\n\n@pytest.mark.falsifies({f.id!r})\n"
        f"def {name}():\n"
        f"    {_docstring(f)}\n"
        f"    {PLACEHOLDER_IMPORT}\n\n"
        f"    not_yet_written({message!r})\n"
    )


def _header(contract: Contract) -> str:
    title = _in_docstring(f"{contract.id}: {contract.description or contract.id}")
    return (
        f'"""Falsifiers of {title}\n\n'
        "Scaffolded by `pv scaffold`; every test fails until it is written.\n"
        '"""\n\nimport pytest\n'
    )


def _name_for(fid: str, taken: set[str]) -> str:
    base = "test_" + re.sub(r"[^a-z0-9]+", "_", fid.lower()).strip("_")
    name, n = base, 2
    while name in taken:
        name, n = f"{base}_{n}", n + 1
    taken.add(name)
    return name


def scaffold(contract: Contract, out: Path) -> ScaffoldResult:
    """Write or extend the contract's falsifier module below ``out``.

    Raises ``ScaffoldRefused`` (nothing written) when the module's path resolves outside
    ``out`` or the existing module does not parse (it is left as it is). A contract without
    falsifiers gets no module."""
    path = _checked_path(contract, out)
    created = not path.exists()
    if created and not contract.falsifiers:
        return ScaffoldResult(path, [], [], False)
    source = _header(contract) if created else _existing(path)
    present = bound_ids(source)
    taken = _function_names(source)
    missing = [f for f in contract.falsifiers if f.id not in present]
    if not missing and not created:
        return ScaffoldResult(path, [], sorted(present), False)
    additions = "".join(_test_source(f, _name_for(f.id, taken)) for f in missing)
    if not re.search(r"^import pytest\b", source, re.M):
        additions = "\nimport pytest\n" + additions
    text = source.rstrip("\n") + "\n" + additions
    try:
        ast.parse(text)  # never write a module that would not import
    except (SyntaxError, ValueError) as exc:
        raise ScaffoldRefused(
            Finding(
                contract.shown_path,
                1,
                ERROR,
                "internal",
                f"the module scaffolded for {contract.id!r} would not compile ({exc}); "
                "nothing written; please report",
            )
        ) from None
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, text)
    return ScaffoldResult(path, [f.id for f in missing], sorted(present), created)


def _existing(path: Path) -> str:
    """The module already there, refused when it cannot be read as Python."""
    try:
        source = path.read_text(encoding="utf-8")
        ast.parse(source)
    except (SyntaxError, ValueError) as exc:  # UnicodeDecodeError, a NUL: ValueErrors
        line = getattr(exc, "lineno", None) or 1
        raise ScaffoldRefused(
            Finding(
                display_path(path),
                line,
                ERROR,
                "module-syntax",
                f"existing module does not parse ({_reason(exc)}); not touched",
            )
        ) from None
    return source


def _reason(exc: Exception) -> str:
    if isinstance(exc, SyntaxError):
        return exc.msg
    if isinstance(exc, UnicodeDecodeError):
        return f"not UTF-8: byte 0x{exc.object[exc.start]:02x} at offset {exc.start}"
    return str(exc)
