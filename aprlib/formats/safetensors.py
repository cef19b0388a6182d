"""safetensors: its limits, its reader (one file or a sharded folder) and its writer.

The reader checks the 8-byte header length against the file and a cap before reading
it, every entry's dtype, shape and offsets against the data region, and that no two
tensors overlap; a folder's ``config.json`` supplies the architecture.
"""

from __future__ import annotations

import functools
import itertools
import json
import os
import re
import struct
from pathlib import Path
from typing import Any

import numpy as np

from aprlib.config.modelconfig import (
    ConfigError,
    ModelConfig,
    UnsupportedArchitecture,
    from_hf,
    hf_cannot_say,
    to_hf,
)
from aprlib.errors import (
    ConversionError,
    ModelFileError,
    SafetensorsFormatError,
    UnsupportedFamily,
)
from aprlib.formats import output
from aprlib.formats.atomic import atomic_output
from aprlib.formats.dtypes import SAFETENSORS_DTYPES, DType, nbytes
from aprlib.formats.filesource import FileSource
from aprlib.formats.jsonlimits import load_json, read_json_file
from aprlib.formats.modelfile import MAX_TENSOR_DIM, MAX_TENSOR_NDIM, MAX_TENSORS, Model, Tensor

MAX_SAFETENSORS_HEADER = 100 * 1024 * 1024  # as the safetensors package's own cap
MAX_JSON_FILE = 16 << 20  # config.json, model.safetensors.index.json


class SafetensorsFile:
    """One safetensors file: header checked against the file; tensors read on demand."""

    def __init__(self, path: Path, mapped: bool = False) -> None:
        self.path = path
        self.src = FileSource(path, SafetensorsFormatError, mapped)
        try:
            self._parse()
        except BaseException:
            self.src.close()
            raise

    def _error(self, message: str, tensor: str | None = None, field: str | None = None) -> Any:
        return SafetensorsFormatError(self.path, message, tensor=tensor, field=field)

    def _parse(self) -> None:
        size = self.src.size
        if size < 8:
            raise self._error(f"file is {size} bytes: no header", field="header_length")
        (n,) = struct.unpack("<Q", self.src.read(0, 8, field="header_length").tobytes())
        if n > size - 8 or n > MAX_SAFETENSORS_HEADER:
            raise self._error(
                f"header length {n} exceeds the file ({size} bytes) or the cap "
                f"({MAX_SAFETENSORS_HEADER:,} bytes)",
                field="header_length",
            )
        raw = self.src.read(8, n, field="header").tobytes()
        header = load_json(raw, self.path, "header", SafetensorsFormatError, MAX_SAFETENSORS_HEADER)
        if not isinstance(header, dict):
            raise self._error("header is not a JSON object", field="header")
        metadata = header.pop("__metadata__", None) or {}
        if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
            raise self._error("__metadata__ is not an object of strings", field="__metadata__")
        self.metadata: dict[str, str] = metadata
        if len(header) > MAX_TENSORS:
            raise self._error(f"{len(header):,} tensors (at most {MAX_TENSORS:,})", field="header")
        self.data_start = 8 + n
        data_len = size - self.data_start
        self.entries: dict[str, tuple[DType, tuple[int, ...], int, int]] = {}
        spans = []
        for name, info in header.items():
            dtype, shape, begin, end = self._entry(name, info, data_len)
            self.entries[name] = (dtype, shape, begin, end)
            spans.append((begin, end, name))
        spans.sort()
        for (_, end, a), (start, _, b) in itertools.pairwise(spans):
            if start < end:
                raise self._error(f"data overlaps tensor {a!r}", tensor=b, field="data_offsets")

    def _entry(
        self, name: str, info: Any, data_len: int
    ) -> tuple[DType, tuple[int, ...], int, int]:
        if not isinstance(info, dict):
            raise self._error("entry is not an object", tensor=name)
        code = info.get("dtype")
        dtype = SAFETENSORS_DTYPES.get(code) if isinstance(code, str) else None
        if dtype is None:
            raise self._error(
                f"unsupported dtype {code!r} (F32, F16, BF16)", tensor=name, field="dtype"
            )
        shape, offsets = info.get("shape"), info.get("data_offsets")
        if (
            not isinstance(shape, list)
            or len(shape) > MAX_TENSOR_NDIM
            or not all(_is_int(d) and 0 <= d <= MAX_TENSOR_DIM for d in shape)
        ):
            shown = repr(shape) if not isinstance(shape, list) or len(shape) < 10 else "[...]"
            raise self._error(
                f"bad shape {shown} (at most {MAX_TENSOR_NDIM} dimensions of at most 2**40)",
                tensor=name,
                field="shape",
            )
        if (
            not isinstance(offsets, list)
            or len(offsets) != 2
            or not all(_is_int(o) for o in offsets)
            or not 0 <= offsets[0] <= offsets[1] <= data_len
        ):
            raise self._error(
                f"data_offsets {offsets!r} outside the data ({data_len} bytes)",
                tensor=name,
                field="data_offsets",
            )
        expected = nbytes(dtype, tuple(shape))
        if offsets[1] - offsets[0] != expected:
            raise self._error(
                f"{offsets[1] - offsets[0]} bytes for {dtype.name}{shape} (needs {expected})",
                tensor=name,
                field="data_offsets",
            )
        return dtype, tuple(shape), offsets[0], offsets[1]

    def raw(self, name: str) -> np.ndarray:
        _, _, begin, end = self.entries[name]
        return self.src.read(self.data_start + begin, end - begin, tensor=name, field="data")

    def close(self) -> None:
        self.src.close()


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def read_hf_config(folder: Path) -> ModelConfig | None:
    cfg = folder / "config.json"
    if not cfg.is_file():
        return None
    raw = read_json_file(cfg, "config", ModelFileError, MAX_JSON_FILE)
    try:
        return from_hf(raw)
    except UnsupportedArchitecture as exc:
        raise UnsupportedFamily(cfg, f"config.json: {exc}", field="model_type") from None
    except ConfigError as exc:
        raise ModelFileError(cfg, f"config.json: {exc}", field=exc.field or "config") from None


SHARD_NAME = re.compile(r"(?P<stem>.+)-(?P<index>\d+)-of-(?P<total>\d+)\.safetensors\Z")


def check_shard_set(folder: Path, names: list[str]) -> None:
    """Shard names that promise N shards (``model-00001-of-00004.safetensors``), with no
    index to say otherwise, must all be there: a folder missing one once loaded as a
    smaller model and converted to a GGUF llama.cpp could not load."""
    sets: dict[tuple[str, int], set[int]] = {}
    for name in names:
        match = SHARD_NAME.match(name)
        if match:
            key = (match["stem"], int(match["total"]))
            sets.setdefault(key, set()).add(int(match["index"]))
    for (stem, total), present in sorted(sets.items()):
        missing = sorted(set(range(1, total + 1)) - present)
        if missing:
            width = len(str(total)) if total >= 10000 else 5
            name = f"{stem}-{missing[0]:0{width}d}-of-{total:0{width}d}.safetensors"
            raise SafetensorsFormatError(
                folder,
                f"{len(missing)} of the {total} shards the names promise are missing "
                f"(first: {name}) and there is no model.safetensors.index.json",
                field="shards",
            )


def shard_paths(folder: Path) -> tuple[list[tuple[str, Path]], dict[str, str] | None]:
    """The shards of a model folder, as (name in the index, path), and the index's weight
    map (None without one).

    Every shard must resolve (symlinks followed) to a regular file inside ``folder``:
    ``../../etc/passwd``, ``/etc/passwd`` and a symlink out of the folder are refused by
    name before anything is opened.
    """
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        raw = read_json_file(index, "weight_map", SafetensorsFormatError, MAX_JSON_FILE)
        weight_map = raw.get("weight_map") if isinstance(raw, dict) else None
        if not isinstance(weight_map, dict) or not all(
            isinstance(v, str) for v in weight_map.values()
        ):
            raise SafetensorsFormatError(
                index, "weight_map is not an object of tensor name → shard file", field="weight_map"
            )
        names = sorted(set(weight_map.values()))
    else:
        weight_map = None
        names = sorted(p.name for p in folder.glob("*.safetensors"))
        if not names:
            raise ModelFileError(folder, "folder holds no *.safetensors file")
        check_shard_set(folder, names)
    root = folder.resolve()
    files = []
    for name in names:
        where = index if weight_map is not None else folder / name
        target = (folder / name).resolve()
        if not name or target == root or not target.is_relative_to(root):
            raise SafetensorsFormatError(
                where, f"shard {name!r} lies outside the model folder", field="weight_map"
            )
        if not target.exists():
            raise SafetensorsFormatError(
                where, f"shard {name!r} does not exist", field="weight_map"
            )
        files.append((name, folder / name))
    return files, weight_map


def open_safetensors(path: Path, mapped: bool = False, any_architecture: bool = False) -> Model:
    """One file or a sharded folder; ``any_architecture``: a config.json this library cannot
    read leaves the model without a config (its reason in ``metadata["aprlib.unsupported"]``)
    instead of refusing it, so ``apr inspect`` lists any file's tensors."""
    if path.is_dir():
        folder = path
        files, weight_map = shard_paths(path)
    else:
        folder, files, weight_map = path.parent, [(path.name, path)], None
    shards: list[SafetensorsFile] = []
    tensors: dict[str, Tensor] = {}
    metadata: dict[str, Any] = {}
    try:
        for shard_name, file in files:
            shard = SafetensorsFile(file, mapped)
            shards.append(shard)
            metadata.update(shard.metadata)
            for name, (dtype, shape, _, _) in shard.entries.items():
                if weight_map is not None and weight_map.get(name) != shard_name:
                    continue
                if name in tensors:
                    raise SafetensorsFormatError(file, "tensor appears in two shards", tensor=name)
                tensors[name] = Tensor(
                    name,
                    dtype,
                    shape,
                    name,
                    functools.partial(shard.raw, name),
                    span=(file, shard.data_start + shard.entries[name][2]),
                    span_file=shard.src.identity,
                )
        if weight_map is not None:
            missing = sorted(set(weight_map) - set(tensors))
            if missing:
                raise SafetensorsFormatError(
                    path,
                    f"index names {len(missing)} tensors no shard holds, e.g. {missing[0]!r}",
                    tensor=missing[0],
                )
        try:
            config = read_hf_config(folder)
        except UnsupportedFamily as exc:
            if not any_architecture:
                raise
            config, metadata["aprlib.unsupported"] = None, str(exc)
        tokenizer = _hf_tokenizer(folder, config, metadata)
    except BaseException:
        for shard in shards:
            shard.close()
        raise
    maps = [s.src.map for s in shards if s.src.map is not None]
    return Model(
        path, "safetensors", tensors, config, metadata, tokenizer, [s.close for s in shards], maps
    )


def _hf_tokenizer(folder: Path, config: Any, metadata: dict[str, Any]) -> dict[str, Any] | None:
    """The folder's tokenizer.json in GGUF terms. One that cannot be carried does not stop
    inspect or diff: the reason waits in the metadata for a converter to raise it."""
    from aprlib.formats.tokenizer import TokenizerError, read_hf_folder

    try:
        return read_hf_folder(folder, config.vocab_size if config else None)
    except TokenizerError as exc:
        metadata["aprlib.tokenizer_error"] = str(exc)
        return None


def write_safetensors(
    model: Model,
    tensors: list[Tensor],
    dst: Path,
    dtype: DType | None,
    report: output.ConvertReport,
    progress: output.Progress,
) -> None:
    _check_sayable(model.config)  # before a byte is written
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
            fh.flush()
            _write_data(fh.fileno(), 8 + len(head), plan, report, progress)
        write_hf_config(model.config, dst.parent)


def _write_data(
    fd: int,
    pos: int,
    plan: list[tuple[Tensor, DType]],
    report: output.ConvertReport,
    progress: output.Progress,
) -> None:
    """Tensors back to back from ``pos``: one whose bytes lie unchanged in its source goes
    file to file (``output.SpanCopier``; an APR source's CRC32 checked as they pass),
    others are encoded and written."""
    copier = output.SpanCopier(fd)
    try:
        for t, out in plan:
            size = nbytes(out, t.shape)
            if not copier.copy_unchanged(t, out, pos):
                data = output.encode(t, out)
                if data.nbytes != size:
                    raise ValueError(f"tensor {t.name!r}: {data.nbytes} bytes, expected {size}")
                output.pwrite_all(fd, data, pos)
            pos += size
            report.advance(t.name, size, progress)
    finally:
        copier.close()
    os.ftruncate(fd, pos)


def _check_sayable(cfg: ModelConfig | None) -> None:
    unsayable = hf_cannot_say(cfg) if cfg is not None else None
    if unsayable is not None:
        raise ConversionError(
            f"a Qwen2 with {unsayable} cannot be an HF folder: transformers' Qwen2 always has "
            "q/k/v biases and never MLP biases, so it would load other weights than these; "
            "write APR or GGUF"
        )


def write_hf_config(cfg: ModelConfig | None, folder: Path) -> None:
    """config.json beside the weights (the loader reads it); never clobbers another one."""
    if cfg is None:
        return
    _check_sayable(cfg)
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
