"""The published-config presets ``--arch`` names (``qwen2_0_5b``...), found without torch:
``apr finetune --arch nonesuch`` is a usage error told before any heavy import or work."""

from __future__ import annotations

import inspect
from collections.abc import Callable

from aprlib.config.modelconfig import ModelConfig


def presets() -> dict[str, Callable[[], ModelConfig]]:
    """The published-config presets of aprlib.config.modelconfig, by function name."""
    from aprlib.config import modelconfig as module

    return {
        name: fn
        for name, fn in vars(module).items()
        if inspect.isfunction(fn)
        and fn.__module__ == module.__name__
        and not name.startswith("_")
        and not inspect.signature(fn).parameters
        and fn.__annotations__.get("return") in ("ModelConfig", ModelConfig)
    }


def preset_name(arch: str) -> str:
    """``arch`` as a preset's function name (``qwen2-0.5b`` → ``qwen2_0_5b``)."""
    return arch.replace("-", "_").replace(".", "_")


def unknown_arch(arch: str) -> str | None:
    """The usage error for an ``--arch`` no preset has, or None when one does."""
    known = presets()
    if preset_name(arch) in known:
        return None
    return f"unknown --arch {arch!r}; one of {', '.join(sorted(known))}"
