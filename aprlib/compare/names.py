"""Tensor names: the pairs to compare, in natural order, and folding many names into one phrase
for the diagnosis.
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Iterable
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
    layers``, and a mixture's experts like the layers: ``mlp.experts.{0..127}.{down,gate,
    up}_proj.weight in 24/24 layers`` (the experts that share the same layers); names
    outside layers are listed as they are."""
    layer_re = re.compile(r"^model\.layers\.(\d+)\.(.+)$")
    by_suffix: dict[str, set[int]] = defaultdict(set)
    others = []
    for name in names:
        m = layer_re.match(name)
        if m:
            by_suffix[m.group(2)].add(int(m.group(1)))
        else:
            others.append(name)
    return ", ".join([*fold_suffixes(fold_experts(by_suffix), total_layers), *others])


def number_runs(numbers: Iterable[int]) -> list[str]:
    """Sorted numbers with their runs of three or more as ``first..last``: ``0..3``, ``7``."""
    runs: list[list[int]] = []
    for n in sorted(set(numbers)):
        if runs and n == runs[-1][-1] + 1:
            runs[-1].append(n)
        else:
            runs.append([n])
    out = []
    for run in runs:
        out += [f"{run[0]}..{run[-1]}"] if len(run) > 2 else [str(n) for n in run]
    return out


def fold_experts(by_suffix: dict[str, set[int]]) -> dict[str, set[int]]:
    """``mlp.experts.7.up_proj.weight`` → layers ... as one ``mlp.experts.{0..127}.up_proj.
    weight`` per set of layers (one expert keeps its index: ``mlp.experts.7.``)."""
    expert_re = re.compile(r"^(.*\bexperts\.)(\d+)\.(.+)$")
    experts: dict[tuple[str, str, frozenset[int]], set[int]] = defaultdict(set)
    out: dict[str, set[int]] = {}
    for suffix, layers in by_suffix.items():
        m = expert_re.match(suffix)
        if m:
            experts[(m.group(1), m.group(3), frozenset(layers))].add(int(m.group(2)))
        else:
            out[suffix] = layers
    for (head, tail, in_layers), which in experts.items():
        runs = number_runs(which)
        index = runs[0] if len(runs) == 1 and ".." not in runs[0] else "{" + ",".join(runs) + "}"
        out.setdefault(f"{head}{index}.{tail}", set()).update(in_layers)
    return out


def fold_suffixes(by_suffix: dict[str, set[int]], total: int) -> list[str]:
    groups: dict[tuple[str, str, frozenset[int]], list[str]] = defaultdict(list)
    for suffix, layers in by_suffix.items():
        m = re.match(r"^(.*\.)?([a-z]+)(_[a-z_]+\.(?:weight|bias))$", suffix)
        if m:
            groups[(m.group(1) or "", m.group(3), frozenset(layers))].append(m.group(2))
        else:
            groups[(suffix, "", frozenset(layers))].append("")
    out = []
    for (prefix, tail, in_layers), stems in sorted(
        groups.items(), key=lambda g: natural_key(g[0][0])
    ):
        stem = stems[0] if len(stems) == 1 else "{" + ",".join(sorted(stems)) + "}"
        count = len(in_layers)
        where = f"{count}/{total} layers" if total else f"{count} layers"
        out.append(f"{prefix}{stem}{tail} in {where}")
    return out
