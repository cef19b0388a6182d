"""Does a config agree with the weights it ships with? Each side is checked on its own.

A config whose ``num_key_value_heads`` says 4 beside k_proj rows that hold 2 heads loads,
runs and produces garbage; comparing the two configs would not see it when both files carry
the same wrong config. The weights' shapes are the testimony here; the check itself is
``aprlib.shapes.contradictions``, the same one the loader fails fast on.
"""

from __future__ import annotations

from collections.abc import Iterator

from aprlib.io import Model
from aprlib.shapes import contradictions as _contradictions


def contradictions(model: Model) -> Iterator[tuple[str, str, str]]:
    """(field, tensor, message) for every config field the tensors of ``model`` contradict."""
    if model.config is None:
        return
    shapes = {name: t.shape for name, t in model.tensors.items()}
    for c in _contradictions(model.config, shapes):
        yield c.field, c.tensor, c.message
