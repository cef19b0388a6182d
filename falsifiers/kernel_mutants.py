"""Planted kernel bugs: a kernel module's source with textual edits, swapped in for the real one.

Used by the defect-sensitivity tests and by the bisect falsifier (a planted bug must be
localised to its capture point). Each edit must match exactly once, so a rewrite of a kernel
breaks the planting loudly instead of planting nothing. The mutant is imported from a file
because ``triton.jit`` reads a kernel's source.
"""

from __future__ import annotations

import importlib.util
import inspect
import sys
from pathlib import Path
from types import ModuleType

import pytest


def plant(
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    module: ModuleType,
    kernel: str,
    *edits: tuple[str, str],
) -> None:
    """Replace ``module.kernel`` with the kernel of a copy of the module with ``edits``."""
    source = inspect.getsource(module)
    for old, new in edits:
        assert source.count(old) == 1, f"planted bug {old!r} matches {source.count(old)} times"
        source = source.replace(old, new)
    name = f"mutant_{module.__name__.rsplit('.', 1)[-1]}"
    path = tmp_path / f"{name}.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    mutant = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, name, mutant)
    spec.loader.exec_module(mutant)
    monkeypatch.setattr(module, kernel, getattr(mutant, kernel))
