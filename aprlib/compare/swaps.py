"""Tensors that moved: B holds under one name the values A holds under another.

Layers 1 and 2 exchanged wholesale, or q_proj and k_proj exchanged within a layer, look
like value drift on every tensor involved when pairs are matched by name only. Matching by
content finds them: one fingerprint per differing tensor on each side (a hash of its
decoded float32 values and its shape), then a dictionary lookup, so the cost is linear in
the bytes of the tensors that differ, never a compare of every pair with every other.
"""

from __future__ import annotations

import re
from collections import defaultdict

from aprlib.compare.chunks import chunks  # never a whole model at once
from aprlib.formats.io import Tensor

_LAYER = re.compile(r"^model\.layers\.(\d+)\.(.+)$")
_PROJ = re.compile(r"^(.*\.)?([a-z]+_[a-z]+)\.(weight|bias)$")


def fingerprint(t: Tensor) -> bytes:
    """Same values in any dtype that decodes to the same float32s, same fingerprint."""
    import hashlib  # here: only a diff that finds moved tensors pays for it

    h = hashlib.blake2b(digest_size=16)
    h.update(repr(tuple(t.shape)).encode())
    for _, rows in chunks(t):
        h.update(rows.astype("<f4", copy=False).tobytes())
    return h.digest()


def find_moves(a: dict[str, Tensor], b: dict[str, Tensor]) -> dict[str, str]:
    """{name in B: the other name in A whose values it holds}, over the tensors given
    (the pairs that did not match by name)."""
    by_print: dict[bytes, list[str]] = defaultdict(list)
    for name, t in a.items():
        by_print[fingerprint(t)].append(name)
    moves = {}
    for name, t in b.items():
        others = [n for n in by_print.get(fingerprint(t), []) if n != name]
        if len(others) == 1:
            moves[name] = others[0]
    return moves


def describe(moves: dict[str, str], layer_sizes: dict[int, int]) -> list[str]:
    """Group moves into what a person would say: ``model.layers.1.* <-> model.layers.2.*``
    when two whole layers traded places, ``q_proj <-> k_proj in layer 1`` within a layer,
    ``x <-> y`` or ``B's x holds A's y`` otherwise. ``layer_sizes``: tensors per layer."""
    out = []
    done: set[str] = set()
    layer_moves: dict[tuple[int, int], set[str]] = defaultdict(set)
    for x, y in moves.items():
        mx, my = _LAYER.match(x), _LAYER.match(y)
        if mx and my and mx.group(2) == my.group(2) and mx.group(1) != my.group(1):
            layer_moves[(int(mx.group(1)), int(my.group(1)))].add(x)
    for (i, j), names in sorted(layer_moves.items()):
        back = layer_moves.get((j, i), set())
        if i < j and len(names) == layer_sizes.get(i) and len(back) == layer_sizes.get(j):
            out.append(f"model.layers.{i}.* <-> model.layers.{j}.*")
            done |= names | back
    within: dict[tuple[int, str, str, str], set[str]] = defaultdict(set)
    for x, y in moves.items():
        if x in done:
            continue
        mx, my = _LAYER.match(x), _LAYER.match(y)
        px = _PROJ.match(mx.group(2)) if mx else None
        py = _PROJ.match(my.group(2)) if my else None
        if (
            mx
            and my
            and mx.group(1) == my.group(1)
            and px
            and py
            and px.group(3) == py.group(3)
            and moves.get(y) == x
        ):
            a, b = sorted((px.group(2), py.group(2)))
            within[(int(mx.group(1)), px.group(1) or "", a, b)].add(x)
    for (layer, _, a, b), names in sorted(within.items()):
        out.append(f"{a} <-> {b} in layer {layer}")
        done |= names | {moves[n] for n in names}
    for x, y in sorted(moves.items()):
        if x in done:
            continue
        if moves.get(y) == x:
            if x < y:
                out.append(f"{x} <-> {y}")
        else:
            out.append(f"B's {x} holds A's {y}")
    return out
