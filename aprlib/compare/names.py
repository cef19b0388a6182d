"""Tensor names: the pairs to compare, in natural order, and folding many names into one phrase
for the diagnosis.
"""

from __future__ import annotations

import re
from collections import defaultdict
from typing import Any

from aprlib.formats.io import LM_HEAD, Model, Tensor


def pair_names(a: Model, b: Model) -> list[str]:
    names = list(dict.fromkeys([*a.tensors, *b.tensors]))
    return sorted(names, key=natural_key)


def natural_key(name: str) -> list[Any]:
    return [int(p) if p.isdigit() else p for p in re.split(r"(\d+)", name)]


def lookup(model: Model, name: str) -> Tensor | None:
    try:
        return model.get(name) if name == LM_HEAD else model.tensors.get(name)
    except KeyError:
        return None


def fold(names: list[str], total_layers: int = 0) -> str:
    """``model.layers.{0..23}.mlp.up_proj.weight`` ... → ``mlp.{gate,up}_proj.weight in 24/24
    layers``; names outside layers are listed as they are."""
    layer_re = re.compile(r"^model\.layers\.(\d+)\.(.+)$")
    by_suffix: dict[str, set[int]] = defaultdict(set)
    others = []
    for name in names:
        m = layer_re.match(name)
        if m:
            by_suffix[m.group(2)].add(int(m.group(1)))
        else:
            others.append(name)
    return ", ".join([*fold_suffixes(by_suffix, total_layers), *others])


def fold_suffixes(by_suffix: dict[str, set[int]], total: int) -> list[str]:
    groups: dict[tuple[str, str, frozenset[int]], list[str]] = defaultdict(list)
    for suffix, layers in by_suffix.items():
        m = re.match(r"^(.*\.)?([a-z]+)(_[a-z_]+\.(?:weight|bias))$", suffix)
        if m:
            groups[(m.group(1) or "", m.group(3), frozenset(layers))].append(m.group(2))
        else:
            groups[(suffix, "", frozenset(layers))].append("")
    out = []
    for (prefix, tail, in_layers), stems in sorted(groups.items(), key=lambda g: g[0][0]):
        stem = stems[0] if len(stems) == 1 else "{" + ",".join(sorted(stems)) + "}"
        count = len(in_layers)
        where = f"{count}/{total} layers" if total else f"{count} layers"
        out.append(f"{prefix}{stem}{tail} in {where}")
    return out
