"""``apr diff``: compare two model files tensor by tensor and name the root cause.

Each pair of tensors (matched by canonical name) gets exactly one tag, tried from the most
specific explanation to the least: IDENTICAL, EQUIVALENT, DTYPE_MISLABEL, TRANSPOSED,
SCALED, SHIFTED, PERMUTED, QUANT_NOISE, VALUE_DRIFT (and SHAPE_MISMATCH, MISSING, EXTRA
when there is no pair to compare). Configs are compared field by field (CONFIG_MISMATCH).
The DIAGNOSIS folds the findings into one line: the dominant class, the tensor group it
hits (``mlp.{gate,up}_proj.weight in 24/24 layers``) and what it means.

Values are read in row chunks from the memory maps, so two full models are never held in
memory at once.
"""

from __future__ import annotations

import re
from collections import defaultdict

import numpy as np

from aprlib.compare import consistency, swaps
from aprlib.compare.chunks import chunks
from aprlib.compare.classify import Tolerance, classify, settle_sides
from aprlib.compare.configs import check_config_against_weights, compare_configs
from aprlib.compare.diagnosis import diagnose
from aprlib.compare.names import lookup, pair_names
from aprlib.compare.report import (
    CLEAN,
    EXTRA,
    MISSING,
    PERMUTED,
    SCALED,
    SHAPE_MISMATCH,
    SHIFTED,
    SWAPPED,
    VALUE_DRIFT,
    DiffReport,
    Pair,
    describe,
)
from aprlib.compare.workers import default_workers, in_order
from aprlib.config.families import GATE_UP_PROJ, QKV_PROJ
from aprlib.formats.dtypes import DType
from aprlib.formats.io import Model, Tensor
from aprlib.formats.tokenizer import compare_tokenizers


def _dtype_counts(model: Model) -> dict[DType, int]:
    counts: dict[DType, int] = defaultdict(int)
    for t in model.tensors.values():
        counts[t.dtype] += 1
    return counts


#: tags a swap can hide behind: the pair differs by name, the values may sit elsewhere
_SWAP_CANDIDATES = frozenset({VALUE_DRIFT, SHAPE_MISMATCH, PERMUTED, SCALED, SHIFTED})


def diff_models(
    a: Model,
    b: Model,
    tol: Tolerance | None = None,
    values: bool = False,
    workers: int | None = None,
) -> DiffReport:
    """``workers``: threads comparing pairs at once (default: the CPUs this process may
    use, at most 4). numpy, pread, memcmp and zlib drop the GIL, so pairs overlap; the
    report is the same for any number (pairs are classified independently, in order)."""
    tol = tol or Tolerance()
    heads = tuple(
        sorted(
            {
                h
                for m in (a, b)
                if m.config
                for h in (m.config.num_attention_heads, m.config.num_key_value_heads)
            }
        )
    )
    counts = (_dtype_counts(a), _dtype_counts(b))
    said = (consistency.config_dtype(a), consistency.config_dtype(b))

    def compare(name: str) -> Pair:
        ta = lookup(a, name)
        tb = lookup(b, name)
        if ta is None:
            # the names are the two models' own tensors, so B holds this one
            assert tb is not None, name
            return Pair(name, EXTRA, None, describe(tb), "only in B")
        if tb is None:
            return Pair(name, MISSING, describe(ta), None, "only in A")
        with np.errstate(invalid="ignore", over="ignore"):  # NaN/Inf are findings, not noise
            pair = classify(ta, tb, tol, heads, counts, said, fused_rows(name, a, b))
        if values and pair.tag not in CLEAN:
            pair.values = {"a": first_values(ta), "b": first_values(tb)}
        a.drop_pages()
        b.drop_pages()
        return pair

    pairs = in_order(compare, pair_names(a, b), workers or default_workers())
    settle_sides(pairs)
    moves = _mark_swaps(a, b, pairs)
    config = compare_configs(a, b)
    contradicts = check_config_against_weights(a, b, pairs)
    tokenizer = compare_tokenizers(a.tokenizer, b.tokenizer)
    return DiffReport(
        str(a.path),
        str(b.path),
        pairs,
        config,
        diagnose(pairs, config, contradicts, tokenizer, moves),
        contradicts,
        tokenizer,
    )


def fused_rows(name: str, a: Model, b: Model) -> tuple[int, ...]:
    """The rows of each part of a fused projection, in order, where ``name`` is one and the
    configs say (and agree): ``qkv_proj`` q, k, v (heads x head_dim, then kv heads x
    head_dim twice), ``gate_up_proj`` gate, up (intermediate_size each); () otherwise."""
    said: set[tuple[int, ...]] = set()
    for cfg in (a.config, b.config):
        if cfg is None:
            continue
        head = cfg.attention_head_dim
        if name.endswith("." + QKV_PROJ + ".weight"):
            kv = cfg.num_key_value_heads * head
            said.add((cfg.num_attention_heads * head, kv, kv))
        elif name.endswith("." + GATE_UP_PROJ + ".weight"):
            said.add((cfg.intermediate_size, cfg.intermediate_size))
    return said.pop() if len(said) == 1 else ()


def _mark_swaps(a: Model, b: Model, pairs: list[Pair]) -> list[str]:
    """Retag as SWAPPED the pairs whose B values are another name's A values; returns the
    moves in words (``model.layers.1.* <-> model.layers.2.*``)."""
    suspects = [p for p in pairs if p.tag in _SWAP_CANDIDATES]
    if len(suspects) < 2:
        return []
    names = [p.name for p in suspects]
    moves = swaps.find_moves(
        {n: t for n in names if (t := lookup(a, n)) is not None},
        {n: t for n in names if (t := lookup(b, n)) is not None},
    )
    if not moves:
        return []
    for p in suspects:
        if p.name in moves:
            p.tag, p.detail = SWAPPED, f"B's {p.name} holds A's {moves[p.name]}"
            p.stats = {}
    sizes: dict[int, int] = defaultdict(int)
    experts: dict[tuple[int, int], int] = defaultdict(int)
    for p in pairs:
        if m := re.match(r"^model\.layers\.(\d+)\.(?:mlp\.experts\.(\d+)\.)?", p.name):
            sizes[int(m.group(1))] += 1
            if m.group(2) is not None:
                experts[(int(m.group(1)), int(m.group(2)))] += 1
    if experts:  # tensors per expert: which experts traded all of theirs, and how many
        return swaps.describe(moves, dict(sizes), dict(experts))
    return swaps.describe(moves, dict(sizes))


def first_values(t: Tensor, n: int = 6) -> list[float]:
    _, rows = next(chunks(t, 1))
    return [float(v) for v in rows.reshape(-1)[:n]]
