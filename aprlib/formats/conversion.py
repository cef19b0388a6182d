"""Converters between safetensors, APR and GGUF: one tensor in memory at a time.

``convert`` opens any format and hands the model to the writer of the destination's
format (``aprlib.formats.*``). A tied model gets no ``lm_head`` in the output. Every
writer writes through ``aprlib.formats.atomic``, so a failed conversion leaves no partial output.
"""

from __future__ import annotations

import copy
import dataclasses
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np

from aprlib.errors import ConversionError
from aprlib.formats.apr import write_apr
from aprlib.formats.dtypes import TORCH_DTYPES, DType, from_float32, to_float32
from aprlib.formats.gguf import WIDENED_KEY, write_gguf
from aprlib.formats.io import open_model
from aprlib.formats.modelfile import EMBED, LM_HEAD, Model, Tensor
from aprlib.formats.output import ConvertReport, Progress, encode, output_dtype, quant_fallbacks
from aprlib.formats.safetensors import write_safetensors

__all__ = [
    "FORMATS",
    "ConvertReport",
    "convert",
    "encode",
    "output_dtype",
    "output_tensors",
    "target_format",
    "write_model",
]

FORMATS = ("apr", "gguf", "safetensors")
SUFFIX_FORMATS = {".apr": "apr", ".gguf": "gguf", ".safetensors": "safetensors"}
DROP_PAGES_EVERY = 64 << 20  # bytes streamed between releases of the source's mapped pages


def target_format(dst: Path, explicit: str | None = None) -> str:
    if explicit:
        if explicit not in FORMATS:
            raise ConversionError(f"unknown format {explicit!r}; one of {', '.join(FORMATS)}")
        return explicit
    fmt = SUFFIX_FORMATS.get(Path(dst).suffix.lower())
    if fmt is None:
        raise ConversionError(
            f"{dst}: cannot tell the output format from the name; use a "
            ".apr/.gguf/.safetensors suffix or --format"
        )
    return fmt


def output_tensors(model: Model, notes: list[str]) -> list[Tensor]:
    """What a converter writes: everything, except the lm_head of a tied model."""
    tensors = list(model.tensors.values())
    if model.tied and LM_HEAD in model.tensors:
        head, embed = model.tensors[LM_HEAD], model.tensors.get(EMBED)
        if (
            embed is None
            or head.shape != embed.shape
            or not np.array_equal(head.to_float32(), embed.to_float32())
        ):
            raise ConversionError(
                f"{model.path}: config says tie_word_embeddings: true, but {LM_HEAD} differs "
                f"from {EMBED}; fix the config or the weights before converting"
            )
        notes.append(f"dropped {LM_HEAD}: the model is tied and it equals {EMBED}")
        tensors = [t for t in tensors if t.name != LM_HEAD]
    if not model.tied and model.config is not None and LM_HEAD not in model.tensors:
        raise ConversionError(
            f"{model.path}: tie_word_embeddings is false but there is no "
            f"{LM_HEAD}: the output head is missing"
        )
    return tensors


def convert(
    src: Path | str,
    dst: Path | str,
    dtype: DType | None = None,
    fmt: str | None = None,
    progress: Progress | None = None,
) -> ConvertReport:
    with open_model(src) as model:
        return write_model(model, dst, fmt, dtype, progress, checked=True)


def write_model(
    model: Model,
    dst: Path | str,
    fmt: str | None = None,
    dtype: DType | None = None,
    progress: Progress | None = None,
    checked: bool = False,
) -> ConvertReport:
    """Write an open (or in-memory) model in the format of ``dst``.

    ``checked`` applies the tied-head rules of ``output_tensors``; without it every tensor
    is written as given (how tests build a defective file on purpose).
    """
    folder = _folder_destination(dst)
    if folder is not None:
        fmt = fmt or "safetensors"
        dst = folder / f"model.{fmt}"
    dst = Path(dst)
    fmt = target_format(dst, fmt)
    created = folder is not None and not folder.exists()
    if created:
        folder.mkdir()  # type: ignore[union-attr]
    try:
        report = _write(model, dst, fmt, dtype, progress, checked)
        if folder is not None and fmt == "safetensors" and model.tokenizer:
            write_hf_tokenizer(model.tokenizer, folder)
            report.notes.append(f"wrote an HF folder: config.json, {dst.name}, tokenizer.json")
    except BaseException:
        if created:
            shutil.rmtree(folder, ignore_errors=True)  # type: ignore[arg-type]
        raise
    return report


def _folder_destination(dst: Path | str) -> Path | None:
    """A destination that names a folder (an existing one, or a path ending in '/'): an HF
    folder is written inside it, and nothing outside it. Its parent must exist."""
    path = Path(dst)
    if not (path.is_dir() or str(dst).endswith(("/", os.sep))):
        return None
    if not path.exists() and not path.parent.is_dir():
        raise ConversionError(f"{dst}: the folder {path.parent} does not exist")
    return path


def write_hf_tokenizer(tokenizer: dict, folder: Path) -> None:
    """tokenizer.json and tokenizer_config.json from the GGUF-keyed tokenizer, atomically."""
    import json

    from aprlib.formats.atomic import atomic_output
    from aprlib.formats.tokenizer import to_hf

    text, config = to_hf(tokenizer)
    for name, body in (("tokenizer.json", text), ("tokenizer_config.json", json.dumps(config))):
        with atomic_output(folder / name) as tmp:
            Path(tmp).write_text(body, encoding="utf-8")


def restore_widened_vectors(model: Model, tensors: list[Tensor]) -> list[Tensor]:
    """Vectors our GGUF writer widened to F32 for llama.cpp go back to the source's dtype,
    where that is exact, so that HF -> GGUF -> HF keeps every dtype."""
    marks = model.metadata.get(WIDENED_KEY) if model.format == "gguf" else None
    if not isinstance(marks, list):
        return tensors
    wanted = dict(m.split("=", 1) for m in marks if isinstance(m, str) and "=" in m)
    out = []
    for t in tensors:
        name = wanted.get(t.name)
        if t.dtype is DType.F32 and name in ("F16", "BF16"):
            target = DType[name]
            values = t.to_float32()
            raw = from_float32(values, target)
            if np.array_equal(to_float32(raw, target, t.shape), values):
                t = Tensor(t.name, target, t.shape, t.source_name, _bytes(raw), t.tied_to)
        out.append(t)
    return out


def _bytes(raw: np.ndarray) -> Callable[[], np.ndarray]:
    return lambda: raw


#: the config ``torch_dtype`` that names each float dtype a conversion can write
TORCH_DTYPE_OF = {dtype: name for name, dtype in TORCH_DTYPES.items()}


def _relabelled(model: Model, dtype: DType | None, notes: list[str]) -> Model:
    """The model with its config's ``torch_dtype`` naming what ``--dtype`` writes: a BF16
    folder converted to F16 must not keep ``torch_dtype: bfloat16`` over F16 tensors (what
    ``apr inspect`` and ``apr diff`` would rightly call a contradiction)."""
    said = model.config.torch_dtype if model.config is not None else None
    wanted = TORCH_DTYPE_OF.get(dtype) if dtype is not None else None
    if model.config is None or dtype is None or wanted is None or said in (None, wanted):
        return model
    notes.append(f"config torch_dtype {said} -> {wanted}: the weights are {dtype.name} now")
    relabelled = copy.copy(model)
    relabelled.config = dataclasses.replace(model.config, torch_dtype=wanted)
    return relabelled


def _write(
    model: Model,
    dst: Path,
    fmt: str,
    dtype: DType | None,
    progress: Progress | None,
    checked: bool,
) -> ConvertReport:
    report = ConvertReport(model.path, dst, model.format, fmt, llama_cpp_vectors=checked)
    if checked:
        model = _relabelled(model, dtype, report.notes)
    tensors = output_tensors(model, report.notes) if checked else list(model.tensors.values())
    inferred = model.metadata.get("aprlib.biases_from_tensors") if model.metadata else None
    if checked and inferred:
        report.notes.append(
            f"config {' and '.join(f'{f}: true' for f in inferred)} from the GGUF's bias "
            "tensors: it has no key saying so, and llama.cpp uses every bias the file holds"
        )
    if checked and fmt != "gguf":
        tensors = restore_widened_vectors(model, tensors)
    if not tensors:
        raise ConversionError(f"{model.path}: holds no tensors; there is nothing to write")
    report.fallbacks = quant_fallbacks(tensors, dtype)
    if report.fallbacks:
        written = sorted({f["written"] for f in report.fallbacks})
        whys = sorted({f["reason"] for f in report.fallbacks})
        report.notes.append(
            f"{len(report.fallbacks)} tensors cannot be {dtype.name if dtype else ''} "
            f"({'; '.join(whys)}) and were written as {'/'.join(written)} instead, as "
            f"llama.cpp falls back: {', '.join(f['tensor'] for f in report.fallbacks[:5])}"
            + (" ..." if len(report.fallbacks) > 5 else "")
        )
    WRITERS[fmt](model, tensors, dst, dtype, report, _streaming(model, progress))
    return report


def _streaming(model: Model, progress: Progress | None) -> Progress:
    """Report progress, and release the source's mapped pages as the stream moves on."""
    last = [0]

    def step(name: str, done: int) -> None:
        if done - last[0] >= DROP_PAGES_EVERY:
            model.drop_pages()
            last[0] = done
        if progress is not None:
            progress(name, done)

    return step


WRITERS = {"apr": write_apr, "gguf": write_gguf, "safetensors": write_safetensors}
