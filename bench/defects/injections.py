"""How defects get in: tensor edits at the converter's output seam, byte edits of a written
file, and monkeypatches of aprlib code.

The seam wraps the converter's ``write_model`` (looked up through the module that defines
``convert``, so it holds whichever module layout aprlib has): every file the converter
writes is read back, edited, and written again in its format. Files that tests write on
purpose (``checked=False``) pass untouched.
"""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from bench.defects.registry import Arrays, Transform


def _dtypes() -> Any:
    import aprlib.formats.dtypes as dtypes

    return dtypes


def values(entry: tuple[Any, tuple[int, ...], Any]) -> np.ndarray:
    dtype, shape, raw = entry
    return np.array(_dtypes().to_float32(raw, dtype, shape), dtype=np.float32, copy=True)


def encoded(values_: np.ndarray, like: tuple[Any, tuple[int, ...], Any]) -> tuple:
    dtype = like[0]
    return (dtype, tuple(values_.shape), _dtypes().from_float32(values_, dtype))


# --- tensor transforms -------------------------------------------------------------------


def transpose(*stems: str) -> Transform:
    """2-D weights whose name contains a stem, stored transposed (values and shape)."""

    def apply(arrays: Arrays, config: Any, fmt: str) -> tuple[Arrays, Any]:
        out = dict(arrays)
        for name, entry in arrays.items():
            if any(s in name for s in stems) and name.endswith("weight") and len(entry[1]) == 2:
                out[name] = encoded(np.ascontiguousarray(values(entry).T), entry)
        return out, config

    return apply


def relabel(source: str, target: str) -> Transform:
    """Tensors of dtype ``source`` tagged ``target``, bytes unchanged (same width)."""

    def apply(arrays: Arrays, config: Any, fmt: str) -> tuple[Arrays, Any]:
        dt = _dtypes().DType
        src, dst = dt[source], dt[target]
        return {n: ((dst, e[1], e[2]) if e[0] is src else e) for n, e in arrays.items()}, config

    return apply


def drop(*stems: str) -> Transform:
    def apply(arrays: Arrays, config: Any, fmt: str) -> tuple[Arrays, Any]:
        return {n: e for n, e in arrays.items() if not any(s in n for s in stems)}, config

    return apply


def scale(factor: float, *stems: str) -> Transform:
    def apply(arrays: Arrays, config: Any, fmt: str) -> tuple[Arrays, Any]:
        out = dict(arrays)
        for name, entry in arrays.items():
            if any(s in name for s in stems):
                out[name] = encoded(values(entry) * np.float32(factor), entry)
        return out, config

    return apply


def config_field(**changes: Any) -> Transform:
    def apply(arrays: Arrays, config: Any, fmt: str) -> tuple[Arrays, Any]:
        return arrays, dataclasses.replace(config, **changes)

    return apply


def head_replaced_by_embedding(arrays: Arrays, config: Any, fmt: str) -> tuple[Arrays, Any]:
    """An untied model written as tied: its own lm_head is dropped, the flag flipped."""
    out = {n: e for n, e in arrays.items() if n != "lm_head.weight"}
    return out, dataclasses.replace(config, tie_word_embeddings=True)


def head_duplicated(arrays: Arrays, config: Any, fmt: str) -> tuple[Arrays, Any]:
    """A tied model written with an explicit copy of the embedding as lm_head."""
    out = dict(arrays)
    out["lm_head.weight"] = arrays["model.embed_tokens.weight"]
    return out, config


def swap_layers(a: int, b: int) -> Transform:
    def apply(arrays: Arrays, config: Any, fmt: str) -> tuple[Arrays, Any]:
        out: Arrays = {}
        pa, pb = f"model.layers.{a}.", f"model.layers.{b}."
        for name, entry in arrays.items():
            if name.startswith(pa):
                out[pb + name[len(pa) :]] = entry
            elif name.startswith(pb):
                out[pa + name[len(pb) :]] = entry
            else:
                out[name] = entry
        return out, config

    return apply


def poison(name: str, value: float = float("nan")) -> Transform:
    def apply(arrays: Arrays, config: Any, fmt: str) -> tuple[Arrays, Any]:
        out = dict(arrays)
        v = values(arrays[name])
        v.reshape(-1)[v.size // 3] = value
        out[name] = encoded(v, arrays[name])
        return out, config

    return apply


def roll_rows(stem: str, shift: int = 1) -> Transform:
    """Rows moved by one: the off-by-one of a vocabulary or logits buffer."""

    def apply(arrays: Arrays, config: Any, fmt: str) -> tuple[Arrays, Any]:
        out = dict(arrays)
        for name, entry in arrays.items():
            if stem in name:
                out[name] = encoded(np.roll(values(entry), shift, axis=0), entry)
        return out, config

    return apply


def _permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp's q/k permutation for GGUF (convert_hf_to_gguf.py), written out here."""
    return (
        w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:])
        .swapaxes(1, 2)
        .reshape(w.shape)
    )


def _unpermute(w: np.ndarray, n_head: int) -> np.ndarray:
    return (
        w.reshape(n_head, w.shape[0] // n_head // 2, 2, *w.shape[1:])
        .swapaxes(1, 2)
        .reshape(w.shape)
    )


def gguf_rope_permute_missing(arrays: Arrays, config: Any, fmt: str) -> tuple[Arrays, Any]:
    """A Llama GGUF whose q/k rows keep HF's rotate-half order (llama.cpp wants interleaved):
    what the writer stores is the un-permuted weight."""
    if fmt != "gguf":
        return arrays, config
    out = dict(arrays)
    for name, entry in arrays.items():
        for stem, heads in (
            ("q_proj.weight", config.num_attention_heads),
            ("k_proj.weight", config.num_key_value_heads),
        ):
            if name.endswith(stem):  # the writer will permute: hand it the inverse
                out[name] = encoded(_unpermute(values(entry), heads), entry)
    return out, config


def gguf_kv_heads_wrong(arrays: Arrays, config: Any, fmt: str) -> tuple[Arrays, Any]:
    """GQA: k permuted per query head instead of per kv head in the GGUF."""
    if fmt != "gguf":
        return arrays, config
    out = dict(arrays)
    hq, hkv = config.num_attention_heads, config.num_key_value_heads
    for name, entry in arrays.items():
        if name.endswith("k_proj.weight"):
            stored = _permute(values(entry), hq)
            out[name] = encoded(_unpermute(stored, hkv), entry)
    return out, config


# --- byte edits --------------------------------------------------------------------------


def truncate(fraction: float) -> Callable[[Path], None]:
    def apply(path: Path) -> None:
        size = path.stat().st_size
        with open(path, "r+b") as fh:
            fh.truncate(int(size * fraction))

    return apply


# --- code patches ----------------------------------------------------------------------------


def q4_k_scales_swapped(mp: Any) -> None:
    """The 6-bit scales of sub-blocks 0 and 1 of every Q4_K block trade places."""
    import aprlib.formats.q4k as q4k

    real = q4k.quantize_q4_k

    def defective(x: np.ndarray) -> np.ndarray:
        raw = np.array(real(x), copy=True)
        blocks = raw.reshape(-1, 144)
        blocks[:, [4, 5]] = blocks[:, [5, 4]]
        return raw

    mp.setattr(q4k, "quantize_q4_k", defective)


def q8_0_scale_halved(mp: Any) -> None:
    """Q8_0 blocks store d/2: every value decodes at half its size."""
    import gguf.quants as quants

    real = quants.quantize

    def defective(data: np.ndarray, qtype: Any) -> np.ndarray:
        raw = np.array(real(data, qtype), copy=True)
        if int(qtype) == 8:  # Q8_0: 34-byte blocks, f16 scale first
            blocks = raw.reshape(-1, 34)
            d = blocks[:, :2].copy().view(np.float16) / np.float16(2)
            blocks[:, :2] = d.view(np.uint8)
        return raw

    mp.setattr(quants, "quantize", defective)


def first_merge_dropped(tokenizer: dict[str, Any]) -> dict[str, Any]:
    """The first BPE merge lost, as by a reader that skips line 0 of ``merges.txt`` as its
    ``#version`` header even where there is none (a tokenizer.json's merge list has none)."""
    merges = list(tokenizer.get("tokenizer.ggml.merges") or [])
    return {**tokenizer, "tokenizer.ggml.merges": merges[1:]}


def tokenizer_edit(edit: Callable[[dict[str, Any]], dict[str, Any]]) -> Callable[[Any], None]:
    """A code defect in the converter's writer: every file it writes carries ``edit`` of the
    source's tokenizer. The source is read as it is, so ``apr diff`` source vs output sees the
    loss; files that tests write on purpose (``checked=False``) pass untouched."""

    def patch(mp: Any) -> None:
        module = converter_module()
        real = module.write_model

        def defective(model: Any, dst: Any, *args: Any, **kw: Any) -> Any:
            checked = kw.get("checked", args[3] if len(args) > 3 else False)
            if checked and model.tokenizer:
                model = dataclasses.replace(model, tokenizer=edit(dict(model.tokenizer)))
            return real(model, dst, *args, **kw)

        mp.setattr(module, "write_model", defective)

    return patch


# --- the seam --------------------------------------------------------------------------------


def converter_module() -> Any:
    from aprlib.formats.conversion import convert

    return sys.modules[convert.__module__]


def install_seam(
    mp: Any, transform: Transform | None, file_bytes: Callable[[Path], None] | None
) -> None:
    """Every file the converter writes gets ``transform`` (then ``file_bytes``)."""
    module = converter_module()
    real = module.write_model
    from aprlib.formats.io import model_from_arrays, open_model

    def defective(model: Any, dst: Any, fmt: Any = None, dtype: Any = None, *args: Any, **kw: Any):
        checked = kw.get("checked", args[1] if len(args) > 1 else False)
        report = real(model, dst, fmt, dtype, *args, **kw)
        if not checked:
            return report  # a test building a file on purpose
        dst = Path(dst)
        target = module.target_format(dst, fmt)
        if transform is not None:
            with open_model(dst) as written:
                arrays = {
                    t.name: (t.dtype, tuple(t.shape), np.array(t.raw(), copy=True))
                    for t in written.tensors.values()
                }
                config, metadata, tokenizer = written.config, written.metadata, written.tokenizer
            arrays, config = transform(arrays, config, target)
            edited = model_from_arrays(arrays, config, path=dst)
            edited.metadata, edited.tokenizer = dict(metadata), tokenizer
            if target == "safetensors":  # our first pass wrote it; the edit rewrites it
                (dst.parent / "config.json").unlink(missing_ok=True)
            real(edited, dst, fmt, None, checked=False)
        if file_bytes is not None:
            file_bytes(dst)
        return report

    mp.setattr(module, "write_model", defective)


def swap_code(mp: Any, func: Any, replacement: Any) -> None:
    """Run ``replacement``'s code in place of ``func``'s, with ``func``'s globals and defaults.

    Every holder of ``func`` (``from m import f`` copies, default arguments) then runs the
    defect, as a real bug in it would; ``replacement`` may use only names of ``func``'s
    module (no closures)."""
    mp.setattr(func, "__code__", replacement.__code__)
