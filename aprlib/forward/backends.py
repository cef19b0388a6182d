"""Named forward backends: which ``Ops`` runs a ``Transformer`` (``reference``, ``triton``...).

A backend is named by ``"module:attribute"`` and imported on first use, so the Triton
backend (branch issue12's ``provable_kernels.TritonOps``) plugs in without this module importing
triton, and another package can add one with ``register_backend``.
"""

from __future__ import annotations

import importlib
from typing import Any

BACKENDS: dict[str, str] = {
    "reference": "aprlib.forward.model:Ops",
    "triton": "provable_kernels:TritonOps",
}


class BackendError(ValueError):
    """An unknown backend name, or one whose module cannot be imported here."""


def register_backend(name: str, target: str) -> None:
    """Make ``name`` resolve to ``target`` (``"package.module:OpsClass"``)."""
    if ":" not in target:
        raise BackendError(f"backend target {target!r} is not 'module:attribute'")
    BACKENDS[name] = target


def make_ops(name: str) -> Any:
    """An ``Ops`` instance of the backend called ``name``."""
    target = BACKENDS.get(name)
    if target is None:
        raise BackendError(f"unknown backend {name!r}; known: {', '.join(sorted(BACKENDS))}")
    module, attr = target.split(":", 1)
    try:
        factory = getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError) as exc:
        raise BackendError(f"backend {name!r} ({target}) is not available: {exc}") from None
    return factory()
