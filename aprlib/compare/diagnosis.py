"""The DIAGNOSIS line: the findings folded into the dominant class, where it hits and what it
means.
"""

from __future__ import annotations

import re
from collections import defaultdict
from typing import Any

from aprlib.compare.names import fold
from aprlib.compare.report import (
    CLEAN,
    CONFIG_CONTRADICTS_WEIGHTS,
    CONFIG_MISMATCH,
    DTYPE_MISLABEL,
    EQUIVALENT,
    EXTRA,
    IDENTICAL,
    INF,
    MISSING,
    NAN,
    PERMUTED,
    QUANT_NOISE,
    SCALED,
    SEVERITY,
    SHAPE_MISMATCH,
    SHIFTED,
    SWAPPED,
    TIER,
    TOKENIZER_MISMATCH,
    TRANSPOSED,
    VALUE_DRIFT,
    ConfigFinding,
    Contradiction,
    Pair,
)

MEANING = {
    IDENTICAL: "Files identical tensor for tensor",
    EQUIVALENT: "Same values in another encoding (lossless)",
    TRANSPOSED: "Values identical, stored transposed ([in, out] where [out, in] belongs): a "
    "layout defect",
    DTYPE_MISLABEL: "Same values under the wrong dtype tag",
    SCALED: "Values scaled by a constant",
    SHIFTED: "Values offset by a constant",
    PERMUTED: "Same rows in another order",
    QUANT_NOISE: "Differences within the quantisation bound (expected from the dtype)",
    VALUE_DRIFT: "Values differ with no layout, dtype, scale or order explanation",
    SHAPE_MISMATCH: "Shapes differ",
    MISSING: "Tensors present in A only",
    EXTRA: "Tensors present in B only",
    CONFIG_MISMATCH: "Architecture config differs",
    NAN: "NaN where the other side holds numbers",
    INF: "Inf where the other side holds numbers",
    SWAPPED: "B holds under one name the values A holds under another",
    CONFIG_CONTRADICTS_WEIGHTS: "A config disagrees with its own weights",
    TOKENIZER_MISMATCH: "Tokenizers differ",
}


def diagnose(
    pairs: list[Pair],
    config: list[ConfigFinding],
    contradicts: list[Contradiction] | tuple[()] = (),
    tokenizer: list[str] | tuple[()] = (),
    moves: list[str] | tuple[()] = (),
) -> dict[str, Any]:
    layers = {int(m.group(1)) for p in pairs if (m := re.match(r"^model\.layers\.(\d+)\.", p.name))}
    total_layers = max(layers) + 1 if layers else 0
    groups: dict[str, list[Pair]] = defaultdict(list)
    for p in pairs:
        if p.tag not in CLEAN:
            groups[p.tag].append(p)
    found = [explain(t, groups[t], total_layers, len(pairs), moves) for t in groups]
    if contradicts:
        found.append(
            {
                "class": CONFIG_CONTRADICTS_WEIGHTS,
                "tensors": [],
                "count": len(contradicts),
                "summary": "; ".join(f"{c.message} (in {c.side})" for c in contradicts),
            }
        )
    if config:
        fields = ", ".join(f"{c.field} {c.a!r} vs {c.b!r}" for c in config)
        found.append(
            {
                "class": CONFIG_MISMATCH,
                "tensors": [],
                "count": len(config),
                "summary": f"{MEANING[CONFIG_MISMATCH]}: {fields}",
            }
        )
    if tokenizer:
        found.append(
            {
                "class": TOKENIZER_MISMATCH,
                "tensors": [],
                "count": len(tokenizer),
                "summary": f"{MEANING[TOKENIZER_MISMATCH]}: {'; '.join(tokenizer)}",
            }
        )
    found.sort(key=lambda f: (TIER.get(f["class"], 1), -f["count"], SEVERITY.index(f["class"])))
    if not found:
        equivalent = any(p.tag == EQUIVALENT for p in pairs)
        cls = EQUIVALENT if equivalent else IDENTICAL
        return {"class": cls, "tensors": [], "line": f"DIAGNOSIS: {MEANING[cls]}", "also": []}
    head, rest = found[0], found[1:]
    line = (
        f"DIAGNOSIS: {head['class']} {head['where']}: {head['summary']}"
        if head.get("where")
        else f"DIAGNOSIS: {head['class']}: {head['summary']}"
    )
    if rest:
        line += "; also " + "; ".join(
            f"{r['class']} {r['where']} ({short_summary(r)})"
            if r.get("where")
            else f"{r['class']} ({r['summary']})"
            for r in rest
        )
    return {
        "class": head["class"],
        "tensors": head["tensors"],
        "line": line,
        "summary": head["summary"],
        "also": rest,
    }


def short_summary(found: dict[str, Any]) -> str:
    """The specific part of a summary: 'BF16 data tagged F16 (in B)', 'B = 2 x A'."""
    summary = found["summary"]
    return summary.split(": ", 1)[1] if ": " in summary else summary


def explain(
    tag: str,
    pairs: list[Pair],
    total_layers: int,
    total: int,
    moves: list[str] | tuple[()] = (),
) -> dict[str, Any]:
    names = [p.name for p in pairs]
    details = {p.detail for p in pairs if p.detail}
    summary = MEANING[tag]
    where = f"all {total} tensors" if len(names) == total > 1 else fold(names, total_layers)
    if tag == DTYPE_MISLABEL and details:
        shorts = sorted(p.mislabel.short if p.mislabel else p.detail for p in pairs)
        summary += ": " + shorts[0].split("differs: ", 1)[-1]
    elif tag == TRANSPOSED and any("a layout defect" in d for d in details):
        summary = sorted(d for d in details if "a layout defect" in d)[0]
    elif tag in (SCALED, SHIFTED, PERMUTED) and len(details) == 1:
        summary += f": {next(iter(details))}"
    elif tag == QUANT_NOISE and details:
        worst = max(pairs, key=lambda p: p.stats.get("of_bound", 0.0))
        summary += f" ({worst.detail}; worst pair {worst.name})"
        unbound = [p for p in pairs if p.stats.get("cosine_only")]
        if unbound:
            least = min(unbound, key=lambda p: p.stats.get("cosine", 1.0))
            summary += (
                f"; {len(unbound)} tensors with {least.detail.split(': cosine ', 1)[0]} "
                f"(least cosine {least.stats.get('cosine', 1.0):.6f}: {least.name})"
            )
    elif tag == VALUE_DRIFT:
        worst = max(pairs, key=lambda p: p.stats.get("max_abs", 0))
        summary += f" (worst {worst.name}: {worst.detail})"
    elif tag in (NAN, INF):
        first = pairs[0]
        summary = f"{first.detail}" + (
            f" ({MEANING[tag]}; {len(pairs)} tensors)" if len(pairs) > 1 else ""
        )
        where = first.name if len(pairs) == 1 else where
    elif tag == SWAPPED and moves:
        where = ", ".join(moves)
    return {"class": tag, "tensors": names, "count": len(names), "where": where, "summary": summary}
