"""safetensors: its limits, its reader (one file or a sharded folder) and its writer.

The reader checks the 8-byte header length against the file and a cap before reading
it, every entry's dtype, shape and offsets against the data region, and that no two
tensors overlap; a folder's ``config.json`` supplies the architecture.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import mmap
import os
import struct
from pathlib import Path
from typing import Any

import numpy as np

from aprlib import output
from aprlib.atomic import atomic_output
from aprlib.config import ConfigError, ModelConfig, from_hf, to_hf
from aprlib.dtypes import SAFETENSORS_DTYPES, DType, nbytes
from aprlib.errors import ConversionError, ModelFileError, SafetensorsFormatError
from aprlib.modelfile import Model, Tensor

MAX_SAFETENSORS_HEADER = 100 * 1024 * 1024


class SafetensorsFile:
    def __init__(self, path: Path) -> None:
        self.path = path
        with open(path, "rb") as fh:
            size = os.fstat(fh.fileno()).st_size
            if size < 8:
                raise SafetensorsFormatError(
                    path, f"file is {size} bytes: no header", field="header_length"
                )
            (n,) = struct.unpack("<Q", fh.read(8))
            if n > size - 8 or n > MAX_SAFETENSORS_HEADER:
                raise SafetensorsFormatError(
                    path,
                    f"header length {n} exceeds the file ({size} bytes)",
                    field="header_length",
                )
            try:
                header = json.loads(fh.read(n).decode("utf-8"))
            except (UnicodeDecodeError, json.JSONDecodeError) as exc:
                raise SafetensorsFormatError(
                    path, f"header is not JSON: {exc}", field="header"
                ) from None
            self.map = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) if size else None
        if not isinstance(header, dict):
            raise SafetensorsFormatError(path, "header is not a JSON object", field="header")
        self.metadata = header.pop("__metadata__", None) or {}
        self.data_start = 8 + n
        data_len = size - self.data_start
        self.entries: dict[str, tuple[DType, tuple[int, ...], int, int]] = {}
        spans = []
        for name, info in header.items():
            if not isinstance(info, dict):
                raise SafetensorsFormatError(path, "entry is not an object", tensor=name)
            dtype = SAFETENSORS_DTYPES.get(info.get("dtype"))
            if dtype is None:
                raise SafetensorsFormatError(
                    path,
                    f"unsupported dtype {info.get('dtype')!r} (F32, F16, BF16)",
                    tensor=name,
                    field="dtype",
                )
            shape, offsets = info.get("shape"), info.get("data_offsets")
            if not isinstance(shape, list) or not all(isinstance(d, int) and d >= 0 for d in shape):
                raise SafetensorsFormatError(
                    path, f"bad shape {shape!r}", tensor=name, field="shape"
                )
            if (
                not isinstance(offsets, list)
                or len(offsets) != 2
                or not all(isinstance(o, int) for o in offsets)
                or not 0 <= offsets[0] <= offsets[1] <= data_len
            ):
                raise SafetensorsFormatError(
                    path,
                    f"data_offsets {offsets!r} outside the data ({data_len} bytes)",
                    tensor=name,
                    field="data_offsets",
                )
            expected = nbytes(dtype, tuple(shape))
            if offsets[1] - offsets[0] != expected:
                raise SafetensorsFormatError(
                    path,
                    f"{offsets[1] - offsets[0]} bytes for {dtype.name}{shape} (needs {expected})",
                    tensor=name,
                    field="data_offsets",
                )
            self.entries[name] = (dtype, tuple(shape), offsets[0], offsets[1])
            spans.append((offsets[0], offsets[1], name))
        spans.sort()
        for (_, end, a), (start, _, b) in itertools.pairwise(spans):
            if start < end:
                raise SafetensorsFormatError(
                    path, f"data overlaps tensor {a!r}", tensor=b, field="data_offsets"
                )

    def raw(self, name: str) -> np.ndarray:
        _, _, begin, end = self.entries[name]
        if end == begin:
            return np.zeros(0, dtype=np.uint8)
        return np.frombuffer(
            self.map, dtype=np.uint8, count=end - begin, offset=self.data_start + begin
        )

    def close(self) -> None:
        if self.map is not None:
            with contextlib.suppress(BufferError):
                self.map.close()


def read_hf_config(folder: Path) -> ModelConfig | None:
    cfg = folder / "config.json"
    if not cfg.is_file():
        return None
    try:
        return from_hf(json.loads(cfg.read_text(encoding="utf-8")))
    except (json.JSONDecodeError, UnicodeDecodeError, ConfigError) as exc:
        raise ModelFileError(cfg, f"config.json: {exc}", field="config") from None


def open_safetensors(path: Path) -> Model:
    if path.is_dir():
        index = path / "model.safetensors.index.json"
        if index.is_file():
            try:
                weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
            except (json.JSONDecodeError, KeyError, TypeError) as exc:
                raise SafetensorsFormatError(
                    index, f"bad shard index: {exc}", field="weight_map"
                ) from None
            shard_names = sorted(set(weight_map.values()))
        else:
            shard_names = sorted(p.name for p in path.glob("*.safetensors"))
            if not shard_names:
                raise ModelFileError(path, "folder holds no *.safetensors file")
            weight_map = None
        folder, files = path, [path / s for s in shard_names]
    else:
        folder, files, weight_map = path.parent, [path], None
    shards: list[SafetensorsFile] = []
    tensors: dict[str, Tensor] = {}
    metadata: dict[str, Any] = {}
    try:
        for file in files:
            shard = SafetensorsFile(file)
            shards.append(shard)
            metadata.update(shard.metadata)
            for name, (dtype, shape, _, _) in shard.entries.items():
                if weight_map is not None and weight_map.get(name) != file.name:
                    continue
                if name in tensors:
                    raise SafetensorsFormatError(file, "tensor appears in two shards", tensor=name)
                tensors[name] = Tensor(
                    name,
                    dtype,
                    shape,
                    name,
                    lambda s=shard, n=name: s.raw(n),
                    span=(file, shard.data_start + shard.entries[name][2]),
                )
        if weight_map is not None:
            missing = sorted(set(weight_map) - set(tensors))
            if missing:
                raise SafetensorsFormatError(
                    path,
                    f"index names {len(missing)} tensors no shard holds, e.g. {missing[0]!r}",
                    tensor=missing[0],
                )
        config = read_hf_config(folder)
    except BaseException:
        for shard in shards:
            shard.close()
        raise
    return Model(
        path,
        "safetensors",
        tensors,
        config,
        metadata,
        None,
        [s.close for s in shards],
        [s.map for s in shards if s.map is not None],
    )


def write_safetensors(
    model: Model,
    tensors: list[Tensor],
    dst: Path,
    dtype: DType | None,
    report: output.ConvertReport,
    progress: output.Progress,
) -> None:
    header: dict[str, Any] = {
        "__metadata__": {"format": "pt", **{k: str(v) for k, v in output.provenance(model).items()}}
    }
    offset, plan, widened = 0, [], []
    for t in tensors:
        out = output.output_dtype(t, dtype)
        if out.info.quantized:
            out = DType.F32  # safetensors has no GGML blocks: the dequantised values, exactly
            widened.append(t.name)
        size = nbytes(out, t.shape)
        header[t.name] = {
            "dtype": out.info.safetensors,
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
    with atomic_output(dst) as tmp:
        with open(tmp, "wb") as fh:
            fh.write(struct.pack("<Q", len(head)) + head)
            for t, out in plan:
                data = np.ascontiguousarray(output.encode(t, out))
                fh.write(memoryview(data))
                report.advance(t.name, data.nbytes, progress)
        write_hf_config(model.config, dst.parent)


def write_hf_config(cfg: ModelConfig | None, folder: Path) -> None:
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
    with atomic_output(path) as tmp, open(tmp, "w", encoding="utf-8") as fh:
        fh.write(text)
