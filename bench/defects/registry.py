"""The defect catalogue as a registry: each entry says how to inject one defect and what a
right diagnosis of it is, decided before the run (never fitted to what the tools say).

Entries that need code another branch brings (the reference model, qa, bisect, kernels,
trace) name it in ``requires``; where it is absent the entry is listed as not yet runnable,
not counted as killed or survived.
"""

from __future__ import annotations

import importlib
import importlib.util
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

#: DESIGN §7 rows, the classes the catalogue must cover
DESIGN_ROWS = (
    "weight stored transposed",
    "dtype mislabel",
    "config preset wrong",
    "tied lm_head missing or duplicated",
    "q/k/v bias dropped, doubled or mis-scaled",
    "architecture hard-coded",
    "GPU forward disagrees with CPU",
    "statistics at different capture points",
    "quantised block layout wrong",
    "corrupt / truncated / hostile file",
    "layers or projections swapped",
    "NaN/Inf in a weight or activation",
    "tokenizer differs across formats",
    "partial run erases a refutation",
    # beyond DESIGN §7: what the families of issue 25 add (one row, one entry per op)
    "family-specific op wrong (q/k norm scope, norm offset, window, soft-cap, fused split, "
    "expert routing)",
)

#: arrays of a model file: name -> (dtype, shape, raw bytes as uint8)
Arrays = dict[str, tuple[Any, tuple[int, ...], Any]]
#: (arrays, config, output format) -> (arrays, config)
Transform = Callable[[Arrays, Any, str], tuple[Arrays, Any]]


@dataclass(frozen=True)
class Defect:
    """One defect: how it is injected, which checks should turn red, what is right."""

    id: str
    title: str
    design_row: str
    #: falsifier IDs whose tests run with the defect in place (unknown IDs are dropped)
    falsifiers: tuple[str, ...] = ()
    #: falsifier files selected by a word in their source (for suites of other branches)
    falsifier_files_with: tuple[str, ...] = ()
    #: diff stage: the clean model, converted by the (defective) converter to this format
    model: str = "qwen2"
    fmt: str | None = "apr"
    dtype: str | None = None
    #: tensor-level defect at the converter's output seam (applies to every converted file)
    transform: Transform | None = None
    #: byte-level defect of the converted file (a truncation, a flipped byte)
    file_bytes: Callable[[Any], None] | None = None
    #: code defect: installs monkeypatches (``mp.setattr``) into aprlib/kernels
    patch: Callable[[Any], None] | None = None
    #: right diagnosis: one of these classes from ``apr diff`` (FILE_ERROR: a typed error)
    expect: tuple[str, ...] = ()
    #: ... naming one of these in its location (empty: any location)
    where: tuple[str, ...] = ()
    #: where there is no diff stage: right when one of these falsifiers turned red
    right_falsifiers: tuple[str, ...] = ()
    requires: tuple[str, ...] = ()
    #: why an entry cannot run yet even where its modules exist (its injection is unwritten)
    pending: str | None = None
    notes: str = ""
    tags: tuple[str, ...] = field(default_factory=tuple)

    def missing(self) -> list[str]:
        """The modules (``pkg.mod`` or ``pkg.mod:attr``) this entry needs that are absent."""
        absent = []
        for need in self.requires:
            module, _, attr = need.partition(":")
            try:
                found = importlib.util.find_spec(module) is not None
            except (ImportError, ValueError):
                found = False
            if found and attr:
                try:
                    found = hasattr(importlib.import_module(module), attr)
                except Exception:
                    found = False
            if not found:
                absent.append(need)
        return absent


CATALOGUE: dict[str, Defect] = {}


def register(defect: Defect) -> Defect:
    """Add an entry; an ID registered twice is a programming error."""
    if defect.id in CATALOGUE:
        raise ValueError(f"defect {defect.id!r} registered twice")
    if defect.design_row not in DESIGN_ROWS:
        raise ValueError(f"{defect.id}: unknown DESIGN row {defect.design_row!r}")
    CATALOGUE[defect.id] = defect
    return defect
