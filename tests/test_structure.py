"""The packages keep their shape: one folder per concern, arrows pointing down, no cycles.

docs/architecture.md draws the folders and the arrows between them; this module holds them.
It reads every module's imports with ``ast`` (module-level, inside functions and under
``TYPE_CHECKING`` alike: a lazy import is still a dependency) and fails on

* an import cycle between modules;
* a ``_private`` name taken from another module (``from m import _x`` or ``m._x``);
* an import of a folder above the importer's own (``LAYERS``), or of the package root,
  whose ``__init__`` re-exports the public API and so sits above every folder;
* a module that replaces itself in ``sys.modules`` (an alias for an old import path).

The checks are pure functions over ``{module name: source}`` so that each is shown red on a
planted defect below, not only green on the tree.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

#: folders of each package, lowest first; a module may import its own folder or a lower one.
#: Modules directly in the package (not ``__init__``) are the floor, below every folder.
LAYERS: dict[str, tuple[str, ...]] = {
    "aprlib": ("config", "formats", "compare", "forward", "train", "cli"),
    "provable": ("contracts", "plugin", "reports", "cli"),
    "provable_kernels": (),
}


@dataclass(frozen=True)
class Import:
    importer: str
    target: str  # a module of the package
    line: int
    private_name: str | None = None  # the ``_name`` taken from ``target``, if any


def package_sources(package: str) -> dict[str, str]:
    """``{dotted module name: source}`` for every module of ``package`` under the repo."""
    out = {}
    for path in sorted((ROOT / package).rglob("*.py")):
        parts = path.relative_to(ROOT).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = path.read_text(encoding="utf-8")
    return out


def _private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")


def imports(sources: Mapping[str, str]) -> Iterator[Import]:
    """Every import of one module of ``sources`` by another, resolved to the module imported."""
    for importer, source in sources.items():
        tree = ast.parse(source)
        bound: dict[str, str] = {}  # local name -> module it names
        is_package = any(m.startswith(importer + ".") for m in sources)
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                for alias in node.names:
                    if alias.name in sources:
                        yield Import(importer, alias.name, node.lineno)
                        if alias.asname:
                            bound[alias.asname] = alias.name
            elif isinstance(node, ast.ImportFrom):
                base = _absolute(node, importer, is_package)
                if base is None:
                    continue
                for alias in node.names:
                    submodule = f"{base}.{alias.name}"
                    if submodule in sources:
                        yield Import(importer, submodule, node.lineno)
                        bound[alias.asname or alias.name] = submodule
                    elif base in sources:
                        private = alias.name if _private(alias.name) else None
                        yield Import(importer, base, node.lineno, private)
        for node in ast.walk(tree):
            if not isinstance(node, ast.Attribute) or not _private(node.attr):
                continue
            if isinstance(node.value, ast.Name) and node.value.id in bound:
                yield Import(importer, bound[node.value.id], node.lineno, node.attr)
            elif ast.unparse(node.value) in sources:  # ``import a.b`` then ``a.b._x``
                yield Import(importer, ast.unparse(node.value), node.lineno, node.attr)


def _absolute(node: ast.ImportFrom, importer: str, is_package: bool) -> str | None:
    if node.level == 0:
        return node.module
    parts = importer.split(".") if is_package else importer.split(".")[:-1]
    parts = parts[: len(parts) - (node.level - 1)]
    return ".".join(parts + ([node.module] if node.module else []))


def cycles(found: list[Import]) -> list[list[str]]:
    """Each import cycle once, as the list of modules around it (Tarjan's strongly connected
    components of more than one module, or a module importing itself)."""
    graph: dict[str, set[str]] = {}
    for i in found:
        graph.setdefault(i.importer, set()).add(i.target)
        graph.setdefault(i.target, set())
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1 or v in graph[v]:
                out.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def private_imports(found: list[Import]) -> list[str]:
    return [
        f"{i.importer}:{i.line} takes {i.private_name} from {i.target}"
        for i in found
        if i.private_name and i.target != i.importer
    ]


def layer(module: str, layers: tuple[str, ...]) -> int | None:
    """The rank of ``module``'s folder: -1 for a module directly in the package (the floor),
    None for the package root itself (above everything)."""
    parts = module.split(".")
    if len(parts) == 1:
        return None
    if len(parts) == 2 and parts[1] not in layers:
        return -1
    return layers.index(parts[1])


def upward_imports(found: list[Import], layers: tuple[str, ...]) -> list[str]:
    bad = []
    for i in found:
        mine = layer(i.importer, layers)
        if mine is None:
            continue  # the root re-exports the API: it may import any folder
        theirs = layer(i.target, layers)
        if theirs is None or theirs > mine:
            where = "the package root" if theirs is None else f"folder {layers[theirs]!r}"
            bad.append(f"{i.importer}:{i.line} imports {i.target} ({where} is above it)")
    return bad


def self_aliases(sources: Mapping[str, str]) -> list[str]:
    """Modules that put another module in their own ``sys.modules`` slot."""
    bad = []
    for name, source in sources.items():
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, ast.Assign) and any(
                isinstance(t, ast.Subscript) and ast.unparse(t.value) == "sys.modules"
                for t in node.targets
            ):
                bad.append(f"{name}:{node.lineno} assigns sys.modules[...]")
    return bad


def problems(sources: Mapping[str, str], layers: tuple[str, ...]) -> list[str]:
    found = list(imports(sources))
    return (
        [f"import cycle: {' -> '.join(c)}" for c in cycles(found)]
        + private_imports(found)
        + upward_imports(found, layers)
        + self_aliases(sources)
    )


@pytest.mark.parametrize("package", sorted(LAYERS))
def test_package_keeps_its_shape(package: str) -> None:
    sources = package_sources(package)
    folders = {m.split(".")[1] for m in sources if m.count(".") >= 2}
    assert folders <= set(LAYERS[package]), f"folders missing from LAYERS: {folders}"
    assert problems(sources, LAYERS[package]) == []


def test_folder_inits_hold_no_code() -> None:
    """A folder's ``__init__`` is its docstring: code there runs on every import below it."""
    for package, folders in LAYERS.items():
        for folder in folders:
            tree = ast.parse((ROOT / package / folder / "__init__.py").read_text())
            assert len(tree.body) == 1 and isinstance(tree.body[0], ast.Expr), (package, folder)


# -- each check shown red on a planted defect ----------------------------------------------

TOY_LAYERS = ("low", "high")


def toy(**modules: str) -> dict[str, str]:
    return {"pkg": '"""root"""', **{name.replace("__", "."): s for name, s in modules.items()}}


def test_a_planted_cycle_is_found() -> None:
    sources = toy(
        pkg__low__a="from pkg.low.b import f\n",
        pkg__low__b="def f(): from pkg.low import a\n",  # lazy: still a cycle
    )
    assert problems(sources, TOY_LAYERS) == ["import cycle: pkg.low.a -> pkg.low.b"]


def test_a_planted_private_import_is_found() -> None:
    sources = toy(pkg__low__a="_x = 1\n", pkg__low__b="from pkg.low.a import _x\n")
    assert problems(sources, TOY_LAYERS) == ["pkg.low.b:1 takes _x from pkg.low.a"]
    sources = toy(pkg__low__a="_x = 1\n", pkg__low__b="from pkg.low import a\ny = a._x\n")
    assert problems(sources, TOY_LAYERS) == ["pkg.low.b:2 takes _x from pkg.low.a"]


def test_a_planted_private_attribute_through_a_dotted_import_is_found() -> None:
    sources = toy(pkg__low__a="_x = 1\n", pkg__low__b="import pkg.low.a\ny = pkg.low.a._x\n")
    assert problems(sources, TOY_LAYERS) == ["pkg.low.b:2 takes _x from pkg.low.a"]


def test_aprlib_and_provable_never_import_each_other() -> None:
    """provable is a generic contract engine, aprlib knows nothing of contracts: only the
    falsifiers join them (DESIGN §2)."""
    for package, other in (("aprlib", "provable"), ("provable", "aprlib")):
        for name, source in package_sources(package).items():
            for node in ast.walk(ast.parse(source)):
                names = (
                    [a.name for a in node.names]
                    if isinstance(node, ast.Import)
                    else [node.module or ""]
                    if isinstance(node, ast.ImportFrom)
                    else []
                )
                assert not any(n.split(".")[0] == other for n in names), (name, node.lineno)


def test_a_planted_upward_import_is_found() -> None:
    sources = toy(pkg__high__a="X = 1\n", pkg__low__b="from pkg.high.a import X\n")
    assert problems(sources, TOY_LAYERS) == [
        "pkg.low.b:1 imports pkg.high.a (folder 'high' is above it)"
    ]
    sources = toy(pkg__low__b="from pkg import something\n")
    assert problems(sources, TOY_LAYERS) == [
        "pkg.low.b:1 imports pkg (the package root is above it)"
    ]


def test_a_planted_alias_module_is_found() -> None:
    sources = toy(pkg__low__old="import sys\nfrom pkg.low import b\nsys.modules[__name__] = b\n")
    sources["pkg.low.b"] = ""
    assert problems(sources, TOY_LAYERS) == ["pkg.low.old:3 assigns sys.modules[...]"]


def test_downward_and_floor_imports_are_allowed() -> None:
    sources = toy(
        pkg__errors="class E(Exception): ...\n",
        pkg__low__a="from pkg.errors import E\n",
        pkg__high__b="from pkg.low.a import E\nfrom pkg.low import a\n",
    )
    sources["pkg"] = "from pkg.high.b import E\n"  # the root re-exports
    assert problems(sources, TOY_LAYERS) == []


def test_child_processes_put_the_folder_holding_the_package_on_their_path() -> None:
    """A child started with ``-I`` (binding checks) or a fresh PYTHONPATH (the llama.cpp
    oracle) must import this checkout's package: its root is the folder *holding* the
    package, which moved one level up when the modules moved into folders."""
    from aprlib.forward import llamacpp

    assert (Path(llamacpp._PACKAGE_ROOT) / "aprlib" / "__init__.py").is_file()
    for module in ("provable/reports/binding.py", "provable/reports/bound.py"):
        source = (ROOT / module).read_text()
        assert "Path(__file__).resolve().parents[2]" in source, module
        assert (Path(ROOT / module).resolve().parents[2] / "provable" / "__init__.py").is_file()
