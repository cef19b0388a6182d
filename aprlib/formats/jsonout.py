"""``--json`` output that every JSON parser reads: strict RFC 8259.

Python's ``json`` writes ``NaN`` and ``Infinity`` by default, which JavaScript's
``JSON.parse``, Go and serde reject, losing the whole document over one figure (a bisect
point whose noise floor is exactly 0 needs an infinite ``m``). Non-finite numbers become
``null``; the fields around them (counts of NaN/Inf, verdicts) say what happened.
"""

from __future__ import annotations

import json
import math
from typing import Any


def finite_or_null(value: Any) -> Any:
    """``value`` with every non-finite float inside it replaced by None; a container with
    none inside is returned as it is (an inspect of a 3M-item GGUF array must not hold it
    twice)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        items = {k: finite_or_null(v) for k, v in value.items()}
        return value if all(items[k] is value[k] for k in value) else items
    if isinstance(value, list | tuple):
        for i, v in enumerate(value):
            if finite_or_null(v) is not v:
                return [*value[:i], *(finite_or_null(w) for w in value[i:])]
        return value
    return value


def dumps(value: Any, indent: int | None = 2) -> str:
    """Strict JSON text (non-finite numbers as null; anything else unknown as its str)."""
    return json.dumps(finite_or_null(value), indent=indent, default=str, allow_nan=False)
