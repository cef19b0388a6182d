"""Converters between safetensors, APR and GGUF: one tensor in memory at a time.

dtypes are kept unless a target dtype is asked for (then 2-D weights whose rows fit the
block size are re-encoded; norms and biases keep their dtype, as llama.cpp does). A tied
model gets no ``lm_head`` in the output. Every writer writes to a temporary file that is
renamed into place on success, so a failed conversion leaves no partial output.
"""

from __future__ import annotations

import contextlib
import json
import os
import struct
import tempfile
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from aprlib import __version__, layout
from aprlib.apr import AprWriter, PlannedTensor
from aprlib.config import ModelConfig, to_gguf_kv, to_hf
from aprlib.dtypes import DType, from_float32, nbytes
from aprlib.errors import ConversionError
from aprlib.io import EMBED, LM_HEAD, Model, Tensor, open_model

FORMATS = ("apr", "gguf", "safetensors")
SUFFIX_FORMATS = {".apr": "apr", ".gguf": "gguf", ".safetensors": "safetensors"}
Progress = Callable[[str, int], None]  # (tensor name, bytes done) after each tensor
DROP_PAGES_EVERY = 64 << 20  # bytes streamed between releases of the source's mapped pages


@dataclass
class ConvertReport:
    source: Path
    destination: Path
    source_format: str
    target_format: str
    tensors: int = 0
    bytes_written: int = 0
    notes: list[str] = field(default_factory=list)

    def advance(self, name: str, written: int, progress: Progress) -> None:
        self.tensors += 1
        self.bytes_written += written
        progress(name, self.bytes_written)


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


def output_dtype(t: Tensor, requested: DType | None) -> DType:
    if requested is None or requested == t.dtype:
        return t.dtype
    info = requested.info
    if info.quantized and (len(t.shape) != 2 or t.shape[-1] % info.block_elements):
        return t.dtype if not t.dtype.info.quantized else DType.F32
    return requested


def encode(t: Tensor, dtype: DType) -> np.ndarray:
    """The tensor's bytes in ``dtype`` (its own bytes, uncopied, when unchanged)."""
    if dtype == t.dtype:
        return t.raw()
    return from_float32(t.to_float32(), dtype)


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
    dst = Path(dst)
    fmt = target_format(dst, fmt)
    report = ConvertReport(model.path, dst, model.format, fmt)
    tensors = output_tensors(model, report.notes) if checked else list(model.tensors.values())
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


def _provenance(model: Model) -> dict[str, Any]:
    return {
        "source_file": model.path.name,
        "source_format": model.format,
        "converter": f"aprlib {__version__}",
    }


def _write_apr(
    model: Model,
    tensors: list[Tensor],
    dst: Path,
    dtype: DType | None,
    report: ConvertReport,
    progress: Progress,
) -> None:
    cfg = model.config
    metadata = {
        "format": "apr",
        "format_version": "2.0",
        "architecture": cfg.architecture if cfg else None,
        "config": cfg.to_dict() if cfg else None,
        "rope_type": cfg.rope_type if cfg else None,
        "tokenizer": model.tokenizer,
        "provenance": _provenance(model),
    }
    plan = [PlannedTensor(t.name, output_dtype(t, dtype), t.shape) for t in tensors]
    with AprWriter(dst, metadata, plan) as w:
        for t, p in zip(tensors, plan, strict=True):
            if p.dtype == t.dtype and t.span is not None:
                w.copy(t.name, *t.span)
            else:
                w.write(t.name, encode(t, p.dtype))
            report.advance(t.name, nbytes(p.dtype, p.shape), progress)


@contextlib.contextmanager
def _atomic_file(dst: Path) -> Iterator[str]:
    """A temporary path beside ``dst``; renamed onto it, synced, only if the block succeeds."""
    fd, tmp = tempfile.mkstemp(dir=dst.parent, prefix=f".{dst.name}.")
    os.close(fd)
    try:
        yield tmp
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, dst)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _write_safetensors(
    model: Model,
    tensors: list[Tensor],
    dst: Path,
    dtype: DType | None,
    report: ConvertReport,
    progress: Progress,
) -> None:
    names = {DType.F32: "F32", DType.F16: "F16", DType.BF16: "BF16"}
    header: dict[str, Any] = {
        "__metadata__": {"format": "pt", **{k: str(v) for k, v in _provenance(model).items()}}
    }
    offset, plan, widened = 0, [], []
    for t in tensors:
        out = output_dtype(t, dtype)
        if out.info.quantized:
            out = DType.F32  # safetensors has no GGML blocks: the dequantised values, exactly
            widened.append(t.name)
        size = nbytes(out, t.shape)
        header[t.name] = {
            "dtype": names[out],
            "shape": list(t.shape),
            "data_offsets": [offset, offset + size],
        }
        plan.append((t, out))
        offset += size
    if widened:
        report.notes.append(
            f"safetensors holds no quantised blocks: {len(widened)} tensors "
            "written as F32 (their dequantised values)"
        )
    head = json.dumps(header, separators=(",", ":")).encode()
    head += b" " * (-len(head) % 8)
    with _atomic_file(dst) as tmp:
        with open(tmp, "wb") as fh:
            fh.write(struct.pack("<Q", len(head)) + head)
            for t, out in plan:
                data = np.ascontiguousarray(encode(t, out))
                fh.write(memoryview(data))
                report.advance(t.name, data.nbytes, progress)
        _write_hf_config(model.config, dst.parent)


def _write_hf_config(cfg: ModelConfig | None, folder: Path) -> None:
    """config.json beside the weights (the loader reads it); never clobbers another one."""
    if cfg is None:
        return
    path = folder / "config.json"
    text = json.dumps(to_hf(cfg), indent=2, sort_keys=True) + "\n"
    if path.exists():
        try:
            existing = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            existing = None
        if existing != json.loads(text):
            raise ConversionError(
                f"{path} exists and describes another model; write the "
                "safetensors output into its own folder"
            )
        return
    with _atomic_file(path) as tmp, open(tmp, "w", encoding="utf-8") as fh:
        fh.write(text)


def _tokenizer_kv(model: Model, cfg: ModelConfig, report: ConvertReport) -> dict[str, Any]:
    """The source's tokenizer, or a minimal valid GPT-2 style one llama.cpp accepts."""
    if model.tokenizer and "tokenizer.ggml.tokens" in model.tokenizer:
        return dict(model.tokenizer)
    n = cfg.vocab_size
    tokens = ["a", "b", "ab", *(f"<t{i}>" for i in range(3, n))][:n]
    report.notes.append(
        f"the source has no tokenizer: wrote a minimal GPT-2 style one "
        f"({n} placeholder tokens, one merge) so that llama.cpp loads the file"
    )
    return {
        "tokenizer.ggml.model": "gpt2",
        "tokenizer.ggml.pre": "default",
        "tokenizer.ggml.tokens": tokens,
        "tokenizer.ggml.token_type": [1] * n,
        "tokenizer.ggml.merges": ["a b"],
        **(
            {"tokenizer.ggml.bos_token_id": cfg.bos_token_id}
            if cfg.bos_token_id is not None
            else {}
        ),
        **(
            {"tokenizer.ggml.eos_token_id": cfg.eos_token_id}
            if cfg.eos_token_id is not None
            else {}
        ),
    }


def _add_kv(writer: Any, kv: Iterable[tuple[str, Any]]) -> None:
    from gguf import GGUFValueType

    for key, value in kv:
        if key == "general.architecture":
            continue  # the writer's constructor wrote it
        if isinstance(value, bool):
            writer.add_bool(key, value)
        elif isinstance(value, int):
            writer.add_uint32(key, value) if value >= 0 else writer.add_int32(key, value)
        elif isinstance(value, float):
            writer.add_float32(key, value)
        elif isinstance(value, str):
            writer.add_string(key, value)
        elif isinstance(value, list):
            if value and all(isinstance(v, str) for v in value):
                writer.add_array(key, value)
            elif value and all(isinstance(v, int) for v in value):
                writer.add_key_value(key, value, GGUFValueType.ARRAY, sub_type=GGUFValueType.INT32)
            elif value:
                writer.add_array(key, value)


def _write_gguf(
    model: Model,
    tensors: list[Tensor],
    dst: Path,
    dtype: DType | None,
    report: ConvertReport,
    progress: Progress,
) -> None:
    from gguf import GGMLQuantizationType, GGUFWriter

    cfg = model.config
    if cfg is None:
        raise ConversionError(
            f"{model.path}: GGUF needs the architecture config "
            "(config.json beside the safetensors file)"
        )
    with _atomic_file(dst) as tmp:
        writer = GGUFWriter(tmp, cfg.architecture)
        kv = to_gguf_kv(cfg)
        kv.update(_tokenizer_kv(model, cfg, report))
        kv["general.name"] = model.path.stem
        kv["general.source.format"] = model.format
        kv["general.converter"] = f"aprlib {__version__}"
        _add_kv(writer, kv.items())
        permute = cfg.architecture in layout.PERMUTED_QK_ARCHS
        plan = []
        for t in tensors:
            name = layout.hf_to_gguf(t.name)
            if name is None:
                raise ConversionError(f"{model.path}: no GGUF name for tensor {t.name!r}")
            out = output_dtype(t, dtype)
            byte_shape = (*t.shape[:-1], nbytes(out, (t.shape[-1],))) if t.shape else (0,)
            writer.add_tensor_info(
                name,
                byte_shape,
                np.dtype(np.uint8),
                nbytes(out, t.shape),
                raw_dtype=GGMLQuantizationType(int(out)),
            )
            plan.append((t, out))
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_ti_data_to_file()
        for t, out in plan:
            data = np.ascontiguousarray(encode(t, out))
            heads = (
                layout.qk_heads(t.name, cfg.num_attention_heads, cfg.num_key_value_heads)
                if permute
                else None
            )
            if heads is not None:
                data = np.ascontiguousarray(
                    layout.permute_qk(data.reshape(t.shape[0], -1), heads)
                ).reshape(-1)
            writer.write_tensor_data(data)
            report.advance(t.name, data.nbytes, progress)
        writer.close()


WRITERS = {"apr": _write_apr, "gguf": _write_gguf, "safetensors": _write_safetensors}
