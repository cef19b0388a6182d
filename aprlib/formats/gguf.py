"""GGUF: its reader (header, key/values, tensor infos) and its writer (via gguf-py).

Shapes cross ``aprlib.layout`` in both directions (GGUF lists ``ne[]`` fastest first);
llama-architecture q/k rows are un-permuted on read and permuted on write.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from aprlib import __version__, layout, output
from aprlib.atomic import atomic_output
from aprlib.config import ConfigError, ModelConfig, from_gguf_kv, to_gguf_kv
from aprlib.dtypes import DType, nbytes
from aprlib.errors import ConversionError, GgufFormatError
from aprlib.modelfile import Model, Tensor


def open_gguf(path: Path) -> Model:
    from gguf import GGUFReader

    try:
        reader = GGUFReader(path, "r")
    except Exception as exc:
        raise GgufFormatError(
            path, f"unreadable GGUF (truncated or corrupt): {type(exc).__name__}: {exc}"
        ) from None
    kv: dict[str, Any] = {}
    tokenizer: dict[str, Any] = {}
    try:
        for name, f in reader.fields.items():
            if name.startswith("GGUF."):
                continue
            value = f.contents()
            (tokenizer if name.startswith("tokenizer.ggml.") else kv)[name] = value
    except Exception as exc:
        raise GgufFormatError(path, f"unreadable key/value data: {exc}") from None
    for key in ("tokenizer.ggml.bos_token_id", "tokenizer.ggml.eos_token_id"):
        if key in tokenizer:
            kv[key] = tokenizer[key]
    names = {t.name for t in reader.tensors}
    try:
        config = from_gguf_kv(kv, has_output_tensor="output.weight" in names)
    except ConfigError as exc:
        raise GgufFormatError(path, str(exc), field="general.architecture") from None
    permute = config.architecture in layout.PERMUTED_QK_ARCHS
    tensors: dict[str, Tensor] = {}
    for t in reader.tensors:
        canonical = layout.gguf_to_hf(t.name)
        if canonical is None:
            raise GgufFormatError(path, "no canonical name for this tensor", tensor=t.name)
        dtype = DType.from_code(int(t.tensor_type))
        if dtype is None:
            raise GgufFormatError(
                path, f"unsupported tensor type {t.tensor_type!r}", tensor=t.name, field="type"
            )
        shape = layout.gguf_shape_to_logical(tuple(t.shape))
        flat = t.data.reshape(-1).view(np.uint8)
        if flat.size != nbytes(dtype, shape):
            raise GgufFormatError(
                path,
                f"{flat.size} bytes for {dtype.name}{list(shape)}",
                tensor=t.name,
                field="size",
            )
        heads = (
            layout.qk_heads(canonical, config.num_attention_heads, config.num_key_value_heads)
            if permute
            else None
        )
        if heads is None:

            def read(v=flat):
                return v
        else:

            def read(v=flat, s=shape, h=heads):
                return np.ascontiguousarray(layout.unpermute_qk(v.reshape(s[0], -1), h)).reshape(-1)

        tensors[canonical] = Tensor(canonical, dtype, shape, t.name, read)
    raw_map = getattr(reader.data, "_mmap", None)
    return Model(
        path,
        "gguf",
        tensors,
        config,
        kv,
        tokenizer or None,
        [],
        [raw_map] if raw_map is not None else [],
    )


def tokenizer_kv(model: Model, cfg: ModelConfig, report: output.ConvertReport) -> dict[str, Any]:
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


def write_gguf(
    model: Model,
    tensors: list[Tensor],
    dst: Path,
    dtype: DType | None,
    report: output.ConvertReport,
    progress: output.Progress,
) -> None:
    from gguf import GGMLQuantizationType, GGUFWriter

    cfg = model.config
    if cfg is None:
        raise ConversionError(
            f"{model.path}: GGUF needs the architecture config "
            "(config.json beside the safetensors file)"
        )
    with atomic_output(dst) as tmp:
        writer = GGUFWriter(tmp, cfg.architecture)
        kv = to_gguf_kv(cfg)
        kv.update(tokenizer_kv(model, cfg, report))
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
            out = output.output_dtype(t, dtype)
            writer.add_tensor_info(
                name,
                layout.gguf_writer_byte_shape(t.shape, out),
                np.dtype(np.uint8),
                nbytes(out, t.shape),
                raw_dtype=GGMLQuantizationType(int(out)),
            )
            plan.append((t, out))
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_ti_data_to_file()
        for t, out in plan:
            data = np.ascontiguousarray(output.encode(t, out))
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
