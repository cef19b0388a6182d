"""Which falsifier ids a test module binds, read from its source without importing it.

The plugin asks this of a module that failed to import (its ids are then "not checked",
not unbound) and of the test files it did not collect (an id bound there is not unbound);
``pv scaffold`` asks it to add tests only for ids no test binds yet.
"""

from __future__ import annotations

import ast


def bound_ids(source: str) -> set[str]:
    """Falsifier ids bound by ``falsifies(...)`` markers in a module (plain or qualified)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, ast.Call):
            continue
        func = node.func
        name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
        if name != "falsifies":
            continue
        for arg in node.args:
            if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
                found.add(arg.value.split(":", 1)[-1])
    return found
