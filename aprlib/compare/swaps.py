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
from aprlib.compare.names import natural_key, number_runs
from aprlib.formats.io import Tensor

_LAYER = re.compile(r"^model\.layers\.(\d+)\.(.+)$")
_PROJ = re.compile(r"^(.*\.)?([a-z]+_[a-z]+)\.(weight|bias)$")
_EXPERT = re.compile(r"^model\.layers\.(\d+)\.mlp\.experts\.(\d+)\.(\w+)\.weight$")
#: an expert's projections where the caller gives no count of its tensors (Qwen3-MoE's)
_EXPERT_PARTS = frozenset({"gate_proj", "up_proj", "down_proj"})


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


def describe(
    moves: dict[str, str],
    layer_sizes: dict[int, int],
    expert_sizes: dict[tuple[int, int], int] | None = None,
) -> list[str]:
    """Group moves into what a person would say: ``model.layers.1.* <-> model.layers.2.*``
    when two whole layers traded places, ``q_proj <-> k_proj in layer 1`` within a layer,
    ``experts 2 <-> 3 in layer 1`` (whole experts of a mixture; ``(down_proj)`` when only
    some of their tensors), ``gate_proj <-> up_proj in expert 2 of layer 0`` (``in every
    expert of layer 0``), ``x <-> y`` or ``B's x holds A's y`` otherwise. ``layer_sizes``:
    tensors per layer; ``expert_sizes``: tensors per (layer, expert)."""
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
    out += _experts(moves, done, expert_sizes)
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
    for x, y in sorted(moves.items(), key=lambda m: natural_key(m[0])):
        if x in done:
            continue
        if moves.get(y) == x:
            if natural_key(x) < natural_key(y):
                out.append(f"{x} <-> {y}")
        else:
            out.append(f"B's {x} holds A's {y}")
    return out


def _experts(
    moves: dict[str, str], done: set[str], sizes: dict[tuple[int, int], int] | None
) -> list[str]:
    """The exchanges between or inside the experts of one layer, in words (and their
    names added to ``done``): two experts that traded their tensors, and two projections
    traded inside experts, folded over the experts (and the layers) they hit."""
    between: dict[tuple[int, int, int], set[str]] = defaultdict(set)  # -> projections
    inside: dict[tuple[int, str, str], set[int]] = defaultdict(set)  # -> experts
    for x, y in moves.items():
        ex, ey = _EXPERT.match(x), _EXPERT.match(y)
        if x in done or not ex or not ey or moves.get(y) != x or ex.group(1) != ey.group(1):
            continue
        layer, e, f = int(ex.group(1)), int(ex.group(2)), int(ey.group(2))
        if e != f and ex.group(3) == ey.group(3):
            between[(layer, min(e, f), max(e, f))].add(ex.group(3))
        elif e == f:
            low, high = sorted((ex.group(3), ey.group(3)))
            inside[(layer, low, high)].add(e)
        else:
            continue
        done |= {x, y}
    #: (what, in which experts, of which tensors) -> layers
    said: dict[tuple[str, str, str], set[int]] = defaultdict(set)
    for (layer, e, f), parts in between.items():
        whole = (
            all(sizes.get((layer, n)) == len(parts) for n in (e, f))
            if sizes
            else parts == _EXPERT_PARTS
        )
        said[(f"experts {e} <-> {f}", "", "" if whole else f" ({', '.join(sorted(parts))})")].add(
            layer
        )
    for (layer, a, b), experts in inside.items():
        every = {n for (lay, n) in sizes or {} if lay == layer}
        which = (
            "every expert"
            if len(experts) > 1 and experts == every
            else f"expert{'s' if len(experts) > 1 else ''} {', '.join(number_runs(experts))}"
        )
        said[(f"{a} <-> {b}", which, "")].add(layer)
    phrases = []
    for (what, which, of), layers in said.items():
        where = f"layer{'s' if len(layers) > 1 else ''} {', '.join(number_runs(layers))}"
        text = f"{what} in {which} of {where}" if which else f"{what} in {where}{of}"
        phrases.append((min(layers), natural_key(what), natural_key(which), text))
    return [text for *_, text in sorted(phrases)]
