"""GGUF: its limits, its reader (header, key/values, tensor infos, parsed here under
bounds) and its writer (via gguf-py's GGUFWriter).

Shapes cross ``aprlib.formats.layout`` in both directions (GGUF lists ``ne[]`` fastest first);
llama-architecture q/k rows are un-permuted on read and permuted on write.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import math
import os
import struct
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from aprlib.config.families import GGUF_ARCHITECTURES
from aprlib.config.modelconfig import (
    LLAMA3_DIVISOR_ARCHS,
    ConfigError,
    ModelConfig,
    from_gguf_kv,
    gguf_config_error,
    llama_cpp_graph_gaps,
    llama_cpp_rope_gaps,
    to_gguf_kv,
)
from aprlib.config.rope_freqs import (
    ROPE_FREQS,
    RopeFreqsError,
    check_against,
    check_values,
    llama3_rope_factors,
    recover_llama3,
)
from aprlib.errors import ConversionError, GgufFormatError
from aprlib.formats import layout, norm_offset, output
from aprlib.formats.atomic import atomic_output
from aprlib.formats.dtypes import DType, from_float32, nbytes, to_float32
from aprlib.formats.filesource import FileSource
from aprlib.formats.gguf_defaults import with_llama_cpp_defaults
from aprlib.formats.modelfile import EMBED, MAX_TENSORS, Model, Tensor, check_tensor_shape
from aprlib.version import __version__

_U64 = struct.Struct("<Q")
#: string arrays at least this long are located by ``_Head._chain`` before the walk
_CHAIN_MIN = 1024
#: what ``_chain`` reads ahead for an array of n strings: n x 24 bytes (a token is 8 bytes
#: of length and ~8 of text), at most 16 MiB (it holds ~3 bytes of masks per byte a while)
_CHAIN_BYTES, _CHAIN_READ = 24, 16 << 20
MAGIC = b"GGUF"
VERSIONS = (2, 3)  # v1 had 32-bit counts and is gone from llama.cpp
MAX_NDIM = 4  # GGML_MAX_DIMS
DEFAULT_ALIGNMENT = 32
STRING, ARRAY = 8, 9
#: GGUF scalar value types → struct format (bool is one byte)
SCALARS = {
    0: "<B",
    1: "<b",
    2: "<H",
    3: "<h",
    4: "<I",
    5: "<i",
    6: "<f",
    7: "<B",
    10: "<Q",
    11: "<q",
    12: "<d",
}
_MIN_KV = 8 + 4 + 1  # key length, value type, the smallest value
_MIN_TENSOR_INFO = 8 + 4 + 4 + 8  # name length, n_dims, type, offset
#: tensors llama.cpp derives from the config (no HF name): checked or read into the config
DERIVED = frozenset({ROPE_FREQS})
#: llama.cpp's longrope factors (``phi3.cpp``'s ``rope_factors_long``/``_short``)
LONGROPE_FACTORS = frozenset({"rope_factors_long.weight", "rope_factors_short.weight"})


class _Head:
    """The header, key/value and tensor-info sections, parsed with every count and length
    checked against the bytes that remain before anything is allocated for it.

    The gguf package's reader materialises every array eagerly (a 49-byte file declaring
    an array of 2**63-1 uint32 ran out of memory); this one reads the file in growing
    chunks through ``FileSource`` and never trusts a count."""

    def __init__(self, src: FileSource) -> None:
        self.src, self.path = src, src.path
        self.buf = bytearray()
        self.pos = 0

    def _error(self, message: str, tensor: str | None = None, field: str | None = None) -> Any:
        return GgufFormatError(self.path, message, tensor=tensor, field=field)

    @property
    def left(self) -> int:
        return self.src.size - self.pos

    def _need(self, n: int, what: str, tensor: str | None = None) -> None:
        if n > self.left:
            raise self._error(
                f"{what} needs {n:,} bytes at offset {self.pos:,}; {self.left:,} remain "
                "(truncated or corrupt)",
                tensor=tensor,
                field=what,
            )
        have = len(self.buf)
        if self.pos + n > have:
            more = min(max(self.pos + n - have, have, 1 << 20), self.src.size - have)
            self.buf += self.src.read(have, more, field=what).tobytes()

    def scalar(self, fmt: str, what: str, tensor: str | None = None) -> Any:
        size = struct.calcsize(fmt)
        self._need(size, what, tensor)
        (value,) = struct.unpack_from(fmt, self.buf, self.pos)
        self.pos += size
        return value

    def string(self, what: str, tensor: str | None = None) -> str:
        n = self.scalar("<Q", what, tensor)
        self._need(n, what, tensor)
        raw = bytes(self.buf[self.pos : self.pos + n])
        self.pos += n
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            raise self._error("string is not UTF-8", tensor=tensor, field=what) from None

    def _strings(self, count: int, key: str) -> list[str]:
        """``count`` strings: a vocabulary's 150k tokens in one tight loop (the per-string
        ``string()`` path cost 0.4 s, more than the rest of an ``apr diff``). The loop only
        finds where each string starts (``unpack_from`` raises at the end of the bytes
        read so far, so one compare per string checks the buffer: slicing and decoding
        each string, and two ``len`` calls, were 2/3 of the loop); ``_decode`` makes them
        strings in a few whole-array calls. A long array's starts are first found by
        ``_chain`` without the loop; the loop walks whatever is left."""
        first = self.pos
        starts: list[int] = self._chain(count, key) if count >= _CHAIN_MIN else []
        append = starts.append
        unpack = _U64.unpack_from
        buf, pos = self.buf, self.pos
        limit = len(buf)
        for _ in range(count - len(starts)):
            try:
                (n,) = unpack(buf, pos)
            except struct.error:  # the length runs past the bytes read so far
                self.pos = pos
                self._need(8, key)
                buf, limit = self.buf, len(self.buf)
                (n,) = unpack(buf, pos)
            end = pos + 8 + n
            if end > limit:
                self.pos = pos + 8
                self._need(n, key)
                buf, limit = self.buf, len(self.buf)
            append(pos)
            pos = end
        self.pos = pos
        return self._decode(first, pos, starts, key)

    def _chain(self, count: int, key: str) -> list[int]:
        """Where the first strings of an array at ``pos`` start (at most ``count``), found by
        whole-array arithmetic; ``pos`` moves past them. May find none; never a wrong one.

        Candidates are the offsets whose next six bytes are zero (a length below 65,536, as
        a token's is), the last of each run of such offsets (a length below 256 also
        matches one byte earlier). The candidates are the strings' starts up to the first
        one that is not the previous one's end: the first is ``pos``, and each one kept is
        where the one before it ends, so each is where the walk would have gone. A string
        the candidates miss (a longer one, or a run of zero bytes such as an empty string
        next to a length) ends the chain there, and the caller's walk goes on from it.
        The walk cost 70 ms per 150k-token vocabulary; this, 10 ms."""
        self._need(min(self.left, count * _CHAIN_BYTES, _CHAIN_READ), key)
        pos, buf = self.pos, self.buf
        size = len(buf) - pos
        if size < 8:
            return []
        region = np.frombuffer(buf, dtype=np.uint8, count=size, offset=pos)
        zero = region == 0
        six = zero[2 : size - 5].copy()  # offset o: bytes o + 2 .. o + 7 all zero
        for k in range(3, 8):
            six &= zero[k : size - 7 + k]
        del zero
        found = np.flatnonzero(six)
        del six
        if found.size:
            found = found[np.append(found[1:] != found[:-1] + 1, True)]
        if not found.size or found[0] != 0:
            return []
        low, high = region[found].astype(np.int64), region[found + 1].astype(np.int64)
        del region  # buf may grow again: no view of it may be alive
        ends = found + 8 + low + (high << 8)
        broken = np.flatnonzero(found[1:] != ends[:-1])
        kept = min(int(broken[0]) + 1 if broken.size else found.size, count)
        while kept and ends[kept - 1] > size:  # a string past the bytes read: the walk's
            kept -= 1
        if not kept:
            return []
        self.pos = pos + int(ends[kept - 1])
        return (found[:kept] + pos).tolist()

    def _decode(self, first: int, end: int, starts: list[int], key: str) -> list[str]:
        """The strings whose 8-byte lengths sit at ``starts`` in ``buf[first:end]``.

        Each length is cut to one NUL and the whole is decoded and split at once: the same
        strings as a decode of each, since a UTF-8 sequence never holds an ASCII byte (the
        whole decodes exactly when every string does, and splits back into as many
        strings exactly when none holds a NUL). Otherwise each string is decoded alone."""
        count = len(starts)
        if not count:
            return []
        at = np.array(starts, dtype=np.int64) - first
        region = np.frombuffer(self.buf, dtype=np.uint8, count=end - first, offset=first)
        keep = np.ones(end - first, dtype=bool)
        for k in range(1, 8):
            keep[at + k] = False
        joined = region[keep]  # a copy: the view of buf ends here
        del region
        joined[at - 7 * np.arange(count)] = 0
        try:
            out = joined.tobytes().decode("utf-8").split("\x00")
            if len(out) == count + 1:
                return out[1:]
        except UnicodeDecodeError:
            pass
        bounds = [*starts[1:], end]
        try:
            return [
                self.buf[s + 8 : e].decode("utf-8") for s, e in zip(starts, bounds, strict=True)
            ]
        except UnicodeDecodeError:
            raise self._error("string is not UTF-8", field=key) from None

    def value(self, vtype: int, key: str) -> Any:
        if vtype == STRING:
            return self.string(key)
        if vtype == ARRAY:
            return self.array(key)
        fmt = SCALARS.get(vtype)
        if fmt is None:
            raise self._error(f"unknown value type {vtype}", field=key)
        value = self.scalar(fmt, key)
        return bool(value) if vtype == 7 else value

    def array(self, key: str) -> list[Any]:
        etype = self.scalar("<I", key)
        count = self.scalar("<Q", key)
        if etype == ARRAY:
            raise self._error("arrays of arrays are not supported", field=key)
        if etype == STRING:
            if count * 8 > self.left:
                raise self._error(
                    f"array of {count:,} strings cannot fit in the {self.left:,} bytes left",
                    field=key,
                )
            return self._strings(count, key)
        fmt = SCALARS.get(etype)
        if fmt is None:
            raise self._error(f"unknown array element type {etype}", field=key)
        size = struct.calcsize(fmt) * count
        if size > self.left:
            raise self._error(
                f"array of {count:,} items of {struct.calcsize(fmt)} bytes cannot fit in "
                f"the {self.left:,} bytes left",
                field=key,
            )
        self._need(size, key)
        values = np.frombuffer(self.buf, dtype=fmt, count=count, offset=self.pos)
        self.pos += size
        return [bool(v) for v in values] if etype == 7 else values.tolist()

    def parse(self) -> tuple[dict[str, Any], list[tuple[str, tuple[int, ...], int, int]], int]:
        """(key/values, [(name, ne, type, offset)], start of the data section)."""
        self._need(4, "magic")
        if bytes(self.buf[:4]) != MAGIC:
            raise self._error(f"not a GGUF file (magic {bytes(self.buf[:4])!r})", field="magic")
        self.pos = 4
        version = self.scalar("<I", "version")
        if version not in VERSIONS:
            raise self._error(f"GGUF version {version}; this reader reads 2 and 3", field="version")
        n_tensors = self.scalar("<Q", "tensor_count")
        n_kv = self.scalar("<Q", "kv_count")
        if n_tensors > MAX_TENSORS:
            raise self._error(
                f"tensor count {n_tensors:,} (at most {MAX_TENSORS:,})", field="tensor_count"
            )
        if n_kv * _MIN_KV + n_tensors * _MIN_TENSOR_INFO > self.left:
            raise self._error(
                f"{n_kv:,} key/values and {n_tensors:,} tensor infos cannot fit in the "
                f"{self.left:,} bytes left",
                field="tensor_count" if n_tensors * _MIN_TENSOR_INFO > self.left else "kv_count",
            )
        kv: dict[str, Any] = {}
        for _ in range(n_kv):
            key = self.string("key")
            if key in kv:
                raise self._error("key appears twice", field=key)
            kv[key] = self.value(self.scalar("<I", key), key)
        infos = []
        for _ in range(n_tensors):
            name = self.string("tensor_name")
            n_dims = self.scalar("<I", "n_dims", name)
            if n_dims > MAX_NDIM:
                raise self._error(
                    f"{n_dims} dimensions (at most {MAX_NDIM})", tensor=name, field="n_dims"
                )
            self._need(8 * n_dims, "ne", name)
            ne = struct.unpack_from(f"<{n_dims}Q", self.buf, self.pos)
            self.pos += 8 * n_dims
            ttype = self.scalar("<I", "type", name)
            offset = self.scalar("<Q", "offset", name)
            infos.append((name, tuple(ne), ttype, offset))
        alignment = kv.get("general.alignment", DEFAULT_ALIGNMENT)
        if (
            not isinstance(alignment, int)
            or isinstance(alignment, bool)
            or not 1 <= alignment <= 1 << 16
            or alignment & (alignment - 1)
        ):
            raise self._error(
                f"alignment {alignment!r} is not a power of two up to 65536",
                field="general.alignment",
            )
        return kv, infos, _pad(self.pos, alignment)


@dataclass(frozen=True)
class _Placed:
    name: str  # GGUF name
    canonical: str
    dtype: DType
    shape: tuple[int, ...]  # logical
    offset: int  # from the start of the data section
    nbytes: int


def _as_stored(
    path: Path,
    src: FileSource,
    kv: dict[str, Any],
    tokenizer: dict[str, Any],
    infos: list[tuple[str, tuple[int, ...], int, int]],
    alignment: int,
    data_start: int,
) -> Model:
    """A GGUF of a family we cannot run, its tensors as stored (GGUF names, no config):
    every check but the names still applies (types, blocks, alignment, bounds, overlap)."""
    placed = _place(path, infos, alignment, max(src.size - data_start, 0), keep_names=True)
    tensors = {
        p.name: Tensor(
            p.name,
            p.dtype,
            p.shape,
            p.name,
            functools.partial(src.read, data_start + p.offset, p.nbytes, tensor=p.name),
            span=(path, data_start + p.offset),
            span_file=src.identity,
        )
        for p in placed
    }
    maps = [src.map] if src.map is not None else []
    return Model(path, "gguf", tensors, None, kv, tokenizer or None, [src.close], maps)


def _place(
    path: Path,
    infos: list[tuple[str, tuple[int, ...], int, int]],
    alignment: int,
    data_len: int,
    keep_names: bool = False,
    arch: str | None = None,
) -> list[_Placed]:
    """Tensor infos → placed tensors: known names and types, whole blocks, aligned,
    inside the data section, no two overlapping, no name twice (``keep_names``: a
    name with no canonical one is kept as it is; ``arch``: whose names)."""
    placed: dict[str, _Placed] = {}
    for name, ne, ttype, offset in infos:
        if name in LONGROPE_FACTORS and not keep_names:
            raise GgufFormatError(
                path,
                "longrope's frequency factors (Phi-3's long-context models): the reference "
                "forward has no longrope, so this file cannot be run as it is",
                tensor=name,
            )
        stack = layout.experts_of(name, 0) is not None  # sliced per expert by the reader
        canonical = layout.gguf_to_hf(name, arch) or (
            name if name in DERIVED or keep_names or stack else None
        )
        if canonical is None:
            raise GgufFormatError(path, "no canonical name for this tensor", tensor=name)
        dtype = DType.from_code(ttype)
        if dtype is None:
            raise GgufFormatError(
                path, f"unsupported tensor type {ttype}", tensor=name, field="type"
            )
        shape = layout.gguf_shape_to_logical(ne)
        try:
            check_tensor_shape(shape, name)
            size = nbytes(dtype, shape)
        except ValueError as exc:
            raise GgufFormatError(path, str(exc), tensor=name, field="ne") from None
        if offset % alignment:
            raise GgufFormatError(
                path,
                f"offset {offset} is not a multiple of {alignment}",
                tensor=name,
                field="offset",
            )
        if offset > data_len or size > data_len - offset:
            raise GgufFormatError(
                path,
                f"data [{offset:,}, +{size:,}) runs past the data section ({data_len:,} bytes)",
                tensor=name,
                field="offset",
            )
        if canonical in placed:
            raise GgufFormatError(path, "tensor appears twice", tensor=name, field="name")
        placed[canonical] = _Placed(name, canonical, dtype, shape, offset, size)
    ordered = sorted(placed.values(), key=lambda p: p.offset)
    for a, b in itertools.pairwise(ordered):
        if a.offset + a.nbytes > b.offset:
            raise GgufFormatError(
                path, f"data overlaps tensor {a.name!r}", tensor=b.name, field="offset"
            )
    return list(placed.values())


#: what a GGUF's bias tensors end with, per config field that says they are there
BIAS_TENSORS: dict[str, tuple[str, ...]] = {
    "attention_bias": ("attn_q.bias", "attn_k.bias", "attn_v.bias"),
    "mlp_bias": ("ffn_gate.bias", "ffn_up.bias", "ffn_down.bias"),
}
#: where a reader records config fields it set from the tensors (a conversion notes them)
BIASES_FROM_TENSORS = "aprlib.biases_from_tensors"


def _biases_from_tensors(config: Any, names: set[str], kv: dict[str, Any]) -> Any:
    """A GGUF has no key saying its layers carry biases: llama.cpp uses every bias tensor
    the file holds. A GGUF not written by aprlib (no ``aprlib.*_bias`` key) gets the bias
    flags its tensors say, so a conversion back to HF writes a config transformers loads
    the biases with (seen: a llama.cpp GGUF of a biased Llama converted to a config without
    them; transformers dropped 14 bias tensors). Noted in ``kv[BIASES_FROM_TENSORS]``."""
    changes: dict[str, bool] = {}
    for field_name, suffixes in BIAS_TENSORS.items():
        if f"aprlib.{field_name}" in kv:
            continue
        if field_name == "attention_bias" and config.family.o_proj_bias:
            suffixes = (*suffixes, "attn_output.bias")  # Llama's flag covers o_proj too
        present = [any(n.startswith("blk.") and n.endswith(s) for n in names) for s in suffixes]
        stated = config.qkv_bias if field_name == "attention_bias" else config.mlp_bias
        if all(present) and not stated:
            changes[field_name] = True
    if not changes:
        return config
    kv[BIASES_FROM_TENSORS] = sorted(changes)
    return dataclasses.replace(config, **changes)


def open_gguf(path: Path, mapped: bool = False, any_architecture: bool = False) -> Model:
    """``any_architecture``: a family this library cannot run is opened anyway, its
    tensors under their GGUF names and no config (the reason in
    ``metadata["aprlib.unsupported"]``), so ``apr inspect`` lists any file's tensors."""
    src = FileSource(path, GgufFormatError, mapped)
    try:
        return _open(path, src, any_architecture)
    except BaseException:
        src.close()
        raise


#: keys of the tokenizer (its vocabulary, and the chat templates llama.cpp keeps beside it)
TOKENIZER_KEYS = ("tokenizer.ggml.", "tokenizer.chat_template")


def _open(path: Path, src: FileSource, any_architecture: bool = False) -> Model:
    head = _Head(src)
    fields, infos, data_start = head.parse()
    head.buf = bytearray()  # the sections are parsed; drop their bytes
    kv: dict[str, Any] = {}
    tokenizer: dict[str, Any] = {}
    for name, value in fields.items():
        (tokenizer if name.startswith(TOKENIZER_KEYS) else kv)[name] = value
    for key in ("tokenizer.ggml.bos_token_id", "tokenizer.ggml.eos_token_id"):
        if key in tokenizer:
            kv[key] = tokenizer[key]
    if infos and data_start > src.size:
        raise GgufFormatError(path, "no data section after the tensor infos", field="offset")
    arch = kv.get("general.architecture")
    alignment = fields.get("general.alignment", DEFAULT_ALIGNMENT)
    if arch not in GGUF_ARCHITECTURES:  # before any tensor name: the family is the news
        refusal = GgufFormatError(
            path,
            f"general.architecture {arch!r} is not supported; supported: "
            f"{', '.join(GGUF_ARCHITECTURES)}",
            field="general.architecture",
        )
        if not any_architecture:
            raise refusal
        kv["aprlib.unsupported"] = str(refusal)
        return _as_stored(path, src, kv, tokenizer, infos, alignment, data_start)
    placed = _place(path, infos, alignment, max(src.size - data_start, 0), arch=arch)
    embed = next((p for p in placed if p.name == "token_embd.weight"), None)
    kv, filled = with_llama_cpp_defaults(kv, tokenizer, embed.shape[0] if embed else None)
    if filled:
        kv["aprlib.defaulted_keys"] = filled
    try:
        config = from_gguf_kv(kv, has_output_tensor=any(p.name == "output.weight" for p in placed))
    except ConfigError as exc:
        text, named = gguf_config_error(exc, kv)
        raise GgufFormatError(path, text, field=named or "general.architecture") from None
    config = _biases_from_tensors(config, {p.name for p in placed}, kv)
    derived = {p.name: p for p in placed if p.name in DERIVED}
    placed = [p for p in placed if p.name not in DERIVED]
    config, kv["aprlib.rope_freqs"] = _rope_freqs(
        path, src, data_start, derived.get(ROPE_FREQS), config, kv
    )
    if kv["aprlib.rope_freqs"] is None:
        del kv["aprlib.rope_freqs"]
    permute = config.architecture in layout.PERMUTED_QK_ARCHS
    offset = config.family.norm_offset
    tensors: dict[str, Tensor] = {}
    for p in placed:
        stack = layout.experts_of(p.name, config.num_experts or 0)
        if stack is not None:  # llama.cpp's experts, stacked: one tensor per expert
            tensors.update(_expert_slices(path, src, data_start, p, stack))
            continue
        if offset and norm_offset.is_offset_norm(p.canonical):  # Gemma: stored w + 1
            if p.dtype not in (DType.F32, DType.F16, DType.BF16):
                raise GgufFormatError(
                    path,
                    f"a {p.dtype.name} norm of a (1 + w) family: its + {offset:g} cannot be "
                    "taken off without quantising again",
                    tensor=p.name,
                    field="type",
                )
            residual = _norm_residual(path, kv, p)
            unshift = functools.partial(_unshifted, src, data_start + p.offset, p, offset, residual)
            tensors[p.canonical] = Tensor(p.canonical, p.dtype, p.shape, p.name, unshift)
            continue
        heads = (
            layout.qk_heads(p.canonical, config.num_attention_heads, config.num_key_value_heads)
            if permute
            else None
        )
        where = data_start + p.offset
        if heads is None:
            tensors[p.canonical] = Tensor(
                p.canonical,
                p.dtype,
                p.shape,
                p.name,
                functools.partial(src.read, where, p.nbytes, tensor=p.name, field="data"),
                span=(path, where),
                span_file=src.identity,
            )
            continue
        rows = p.shape[0] if p.shape else 0
        if rows % (2 * heads):
            raise GgufFormatError(
                path,
                f"{rows} rows cannot be {heads} heads of rotary pairs "
                f"(head_count {config.num_attention_heads}, "
                f"head_count_kv {config.num_key_value_heads})",
                tensor=p.name,
                field="ne",
            )

        def read(w: int = where, p: _Placed = p, h: int = heads) -> np.ndarray:
            raw = src.read(w, p.nbytes, tensor=p.name, field="data")
            return np.ascontiguousarray(
                layout.unpermute_qk(raw.reshape(p.shape[0], -1), h)
            ).reshape(-1)

        tensors[p.canonical] = Tensor(p.canonical, p.dtype, p.shape, p.name, read)
    maps = [src.map] if src.map is not None else []
    return Model(path, "gguf", tensors, config, kv, tokenizer or None, [src.close], maps)


def _expert_slices(
    path: Path, src: FileSource, data_start: int, p: _Placed, names: list[str]
) -> dict[str, Tensor]:
    """The experts of a stacked GGUF tensor (logical [experts, out, in]) as one tensor each
    under its HF name: expert e's bytes lie whole at e times one expert's size (ggml's
    slowest dimension), so each is read, and copied file to file, on its own."""
    if not names:
        raise GgufFormatError(
            path, "an expert stack in a model whose config has no experts", tensor=p.name
        )
    if len(p.shape) != 3 or p.shape[0] != len(names):
        raise GgufFormatError(
            path,
            f"shape {list(p.shape)} is not {len(names)} experts of [out, in] (expert_count "
            f"{len(names)})",
            tensor=p.name,
            field="ne",
        )
    shape = p.shape[1:]
    size = nbytes(p.dtype, shape)
    out = {}
    for e, name in enumerate(names):
        where = data_start + p.offset + e * size
        out[name] = Tensor(
            name,
            p.dtype,
            shape,
            f"{p.name}[{e}]",
            functools.partial(src.read, where, size, tensor=p.name, field="data"),
            span=(path, where),
            span_file=src.identity,
        )
    return out


def _norm_residual(path: Path, kv: dict[str, Any], p: _Placed) -> np.ndarray | None:
    """The residual an aprlib writer kept for norm ``p`` (``norm_offset``), checked."""
    key = norm_offset.RESIDUAL_KEY.format(name=p.name)
    value = kv.get(key)
    if value is None:
        return None
    count = int(np.prod(p.shape)) if p.shape else 1
    if (
        not isinstance(value, list)
        or len(value) != count
        or not all(isinstance(v, float) and math.isfinite(v) for v in value)
    ):
        raise GgufFormatError(
            path, f"{count} finite float32 values expected for {p.name}", tensor=p.name, field=key
        )
    return np.asarray(value, dtype=np.float32)


def _unshifted(
    src: FileSource, where: int, p: _Placed, offset: float, residual: np.ndarray | None
) -> np.ndarray:
    """A norm stored as w + offset (llama.cpp's Gemma convention), as w in its own dtype."""
    raw = src.read(where, p.nbytes, tensor=p.name, field="data")
    stored = to_float32(raw, p.dtype, p.shape)
    w = norm_offset.unshifted(stored, offset, residual)
    if residual is not None:  # a residual may restore w's rounding, never move what runs
        again = to_float32(
            from_float32(norm_offset.shifted(w, offset)[0], p.dtype), p.dtype, p.shape
        )
        if not np.array_equal(again, stored):
            raise GgufFormatError(
                src.path,
                "the residual moves the weight llama.cpp runs, not just its rounding",
                tensor=p.name,
                field=norm_offset.RESIDUAL_KEY.format(name=p.name),
            )
    return np.ascontiguousarray(from_float32(w, p.dtype)).reshape(-1).view(np.uint8)


def _rope_freqs(
    path: Path,
    src: FileSource,
    data_start: int,
    p: _Placed | None,
    config: ModelConfig,
    kv: dict[str, Any],
) -> tuple[ModelConfig, str | None]:
    """``rope_freqs.weight`` checked against the rope scaling the metadata states, or the
    llama3 scaling recovered from it when none is stated (as llama.cpp writes it). It
    leaves no tensor: the config's ``rope_scaling`` is what a writer regenerates it from.
    The second value says which (for ``inspect``), or that llama.cpp lacks the divisors."""
    stated = (
        "aprlib.rope_scaling"
        if "aprlib.rope_scaling" in kv
        else f"{config.gguf_architecture}.rope.scaling.type"
    )
    head_dim = config.attention_head_dim
    try:
        if p is None:
            if rope_freqs_tensor(config) is None:
                return config, None
            return config, "missing: llama.cpp runs this file with unscaled RoPE (llama3 scaling)"
        if p.dtype is not DType.F32:
            raise RopeFreqsError(f"{p.dtype.name}; llama.cpp's rope takes F32 divisors", "type")
        raw = src.read(data_start + p.offset, p.nbytes, tensor=p.name, field="data")
        values = np.frombuffer(raw.tobytes(), dtype="<f4").reshape(p.shape)
        check_values(values, head_dim)
        if config.rope_scaling is not None:
            check_against(values, config.rope_theta, head_dim, config.rope_scaling)
            return config, "checked against the stated rope_scaling"
        scaling = recover_llama3(values, config.rope_theta, head_dim)
    except RopeFreqsError as exc:
        field = stated if exc.field == "rope_scaling" else exc.field
        tensor = None if p is None else p.name
        raise GgufFormatError(path, str(exc), tensor=tensor, field=field) from None
    try:
        recovered = dataclasses.replace(config, rope_scaling=scaling)
    except ConfigError as exc:  # divisors that say a scaling outside physical sense
        raise GgufFormatError(path, str(exc), tensor=ROPE_FREQS, field="data") from None
    return recovered, "llama3 rope_scaling recovered from it"


def rope_freqs_tensor(cfg: ModelConfig) -> np.ndarray | None:
    """The ``rope_freqs.weight`` llama.cpp needs for ``cfg`` (None where its graph has none)."""
    scaling = cfg.rope_scaling
    if (
        cfg.gguf_architecture not in LLAMA3_DIVISOR_ARCHS
        or not scaling
        or scaling["rope_type"] != "llama3"
    ):
        return None
    return llama3_rope_factors(cfg.rope_theta, cfg.attention_head_dim, scaling)


def tokenizer_kv(model: Model, cfg: ModelConfig, report: output.ConvertReport) -> dict[str, Any]:
    """The source's tokenizer, or a minimal valid GPT-2 style one llama.cpp accepts."""
    if model.tokenizer and "tokenizer.ggml.tokens" in model.tokenizer:
        from aprlib.formats.tokenizer import llama_cpp_tokenizer_gaps

        report.notes.extend(llama_cpp_tokenizer_gaps(model.tokenizer))
        return dict(model.tokenizer)
    if model.metadata.get("aprlib.tokenizer_error"):  # a tokenizer we must not replace
        raise ConversionError(model.metadata["aprlib.tokenizer_error"])
    n = cfg.vocab_size
    embed = model.tensors.get(EMBED)
    if embed is not None and embed.shape and embed.shape[0] < n:
        report.notes.append(
            f"config vocab_size {n:,} exceeds the {embed.shape[0]:,} rows of {EMBED}: "
            f"{embed.shape[0]:,} placeholder tokens, one per row the weights have"
        )
        n = embed.shape[0]  # placeholders are bounded by the file, not by a config value
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


def add_kv(writer: Any, kv: Iterable[tuple[str, Any]]) -> None:
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
            elif value and all(isinstance(v, bool) for v in value):
                writer.add_key_value(key, value, GGUFValueType.ARRAY, sub_type=GGUFValueType.BOOL)
            elif value and all(isinstance(v, int) for v in value):
                writer.add_key_value(key, value, GGUFValueType.ARRAY, sub_type=GGUFValueType.INT32)
            elif value:
                writer.add_array(key, value)


#: GGUF key: ``NAME=DTYPE`` for every vector written F32 for llama.cpp instead of DTYPE
WIDENED_KEY = "aprlib.widened_vectors"


def gguf_dtype(t: Tensor, out: DType) -> DType:
    """The dtype a tensor takes in a GGUF: vectors in F16/BF16 are widened to F32 (exact),
    as llama.cpp's own converter writes every 1-D tensor; its CPU backend has no F16/BF16
    kernel for the element-wise ops that apply norms and biases, and aborts the process.
    So is a mixture's router, which its converter writes F32: in BF16 llama.cpp rounds the
    activations it multiplies to BF16 too, and a router's near ties then pick other experts
    (a bf16 Qwen3-MoE: KL 2.3e-3 against the reference, over the bf16 bound)."""
    widen = len(t.shape) <= 1 or t.name.endswith(output.ROUTER_SUFFIX)
    if widen and out in (DType.F16, DType.BF16):
        return DType.F32
    return out


def write_gguf(
    model: Model,
    tensors: list[Tensor],
    dst: Path,
    dtype: DType | None,
    report: output.ConvertReport,
    progress: output.Progress,
) -> None:
    from gguf import GGMLQuantizationType

    cfg = model.config
    if cfg is None:
        raise ConversionError(
            f"{model.path}: GGUF needs the architecture config "
            "(config.json beside the safetensors file)"
        )
    plan: list[tuple[str, list[Tensor], DType]] = []
    stacks: dict[str, list[Tensor]] = {}  # a GGUF expert stack -> its experts, in order
    widened = []
    shifted: dict[str, np.ndarray] = {}  # HF name -> encoded w + offset (Gemma's norms)
    residuals: dict[str, list[float]] = {}
    for t in tensors:
        expert = layout.expert_of(t.name)
        name = expert[0] if expert else layout.hf_to_gguf(t.name, cfg.gguf_architecture)
        if name is None:
            raise ConversionError(f"{model.path}: no GGUF name for tensor {t.name!r}")
        requested = output.output_dtype(t, dtype)
        out = gguf_dtype(t, requested) if report.llama_cpp_vectors else requested
        if out != requested:
            widened.append(f"{t.name}={requested.name}")
        if expert is not None:  # llama.cpp stacks a layer's experts: one tensor
            if name not in stacks:
                stacks[name] = []
                plan.append((name, stacks[name], out))
            stacks[name].append(t)
            continue
        plan.append((name, [t], out))
        if cfg.family.norm_offset and norm_offset.is_offset_norm(t.name):
            shifted[t.name], residual = _shifted(model, t, out, cfg.family.norm_offset)
            if residual.any():
                residuals[norm_offset.RESIDUAL_KEY.format(name=name)] = residual.tolist()
    for parts in stacks.values():  # files list experts 0, 1, 10, 11, ..., 2: by index
        parts.sort(key=lambda t: (layout.expert_of(t.name) or ("", 0))[1])
    plan = [
        (name, parts, _stack_dtype(model, name, parts, dtype, report) if name in stacks else out)
        for name, parts, out in plan
    ]
    try:
        rope_freqs = rope_freqs_tensor(cfg)
    except RopeFreqsError as exc:
        raise ConversionError(f"{model.path}: {ROPE_FREQS}: {exc}") from None
    report.notes.extend(llama_cpp_rope_gaps(cfg))  # the file is right; llama.cpp's RoPE is not
    report.notes.extend(llama_cpp_graph_gaps(cfg))  # nor its activation and attention mask
    with atomic_output(dst) as tmp:
        writer = writer_class()(tmp, cfg.gguf_architecture)
        kv = to_gguf_kv(cfg)
        kv.update(tokenizer_kv(model, cfg, report))
        kv["general.name"] = model.path.stem
        kv["general.source.format"] = model.format
        kv["general.converter"] = f"aprlib {__version__}"
        if widened:  # so that a conversion back can restore the source's dtype exactly
            kv[WIDENED_KEY] = widened
        kv.update(residuals)
        add_kv(writer, kv.items())
        if rope_freqs is not None:  # llama.cpp's converter writes it first
            writer.add_tensor_info(
                ROPE_FREQS, rope_freqs.shape, rope_freqs.dtype, rope_freqs.nbytes
            )
        for name, parts, out in plan:
            shape = _stacked_shape(model, name, parts, out, stacks)
            writer.add_tensor_info(
                name,
                layout.gguf_writer_byte_shape(shape, out),
                np.dtype(np.uint8),
                nbytes(out, shape),
                raw_dtype=GGMLQuantizationType(int(out)),
            )
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_ti_data_to_file()
        writer.flush()
        _write_data(writer, plan, rope_freqs, cfg, report, progress, shifted)
        writer.close()
    if widened:
        report.notes.append(
            f"{len(widened)} F16/BF16 vectors (norms, biases) and routers written as F32, "
            "exactly: "
            "llama.cpp computes them in F32 and aborts on half-precision ones"
        )


def _stack_dtype(
    model: Model, name: str, parts: list[Tensor], dtype: DType | None, report: output.ConvertReport
) -> DType:
    """The one dtype a stack of experts is written in: the one they all take; experts
    stored in different float dtypes are stacked in F32 (exact for each) and said so,
    never narrowed to the first one's."""
    outs = {output.output_dtype(t, dtype) for t in parts}
    if len(outs) == 1:
        return outs.pop()
    if all(not d.info.quantized for d in outs):
        report.notes.append(
            f"{name}: its experts are stored as {'/'.join(sorted(d.name for d in outs))}; "
            "llama.cpp stacks them as one tensor, written F32 (exact for each)"
        )
        return DType.F32
    raise ConversionError(
        f"{model.path}: {name}: its experts are stored as "
        f"{'/'.join(sorted(d.name for d in outs))}; llama.cpp stacks them as one tensor of "
        "one type (convert with --dtype to choose it)"
    )


def _stacked_shape(
    model: Model, name: str, parts: list[Tensor], out: DType, stacks: dict[str, list[Tensor]]
) -> tuple[int, ...]:
    """The logical shape of a GGUF tensor: one part's, or, for a stack of experts,
    [experts, out, in]; a stack must hold experts 0..n-1 (sorted), all one shape, all
    written in one dtype (llama.cpp reads the stack as one tensor)."""
    if name not in stacks:
        return parts[0].shape
    have = [(layout.expert_of(t.name) or ("", -1))[1] for t in parts]
    experts = model.config.num_experts if model.config else None
    missing = sorted(set(range(experts or len(parts))) - set(have))
    if missing:
        raise ConversionError(
            f"{model.path}: {name}: expert {missing[0]} of {experts} is missing; llama.cpp "
            "stacks experts 0..n-1 as one tensor"
        )
    for t in parts:
        if t.shape != parts[0].shape or nbytes(out, t.shape) != nbytes(out, parts[0].shape):
            raise ConversionError(
                f"{model.path}: {t.name}: shape {list(t.shape)} differs from expert 0's "
                f"{list(parts[0].shape)}; llama.cpp stacks them as one tensor"
            )
    return (len(parts), *parts[0].shape)


def _shifted(model: Model, t: Tensor, out: DType, offset: float) -> tuple[np.ndarray, np.ndarray]:
    """(the bytes of w + offset in ``out``, the residual that restores w from them): Gemma's
    norms as llama.cpp runs them (``norm_offset``); refused if w would not come back."""
    w = t.to_float32()
    s, _ = norm_offset.shifted(w, offset)
    encoded = np.ascontiguousarray(from_float32(s, out))
    stored = to_float32(encoded.reshape(-1).view(np.uint8), out, t.shape)
    _, residual = norm_offset.shifted(w, offset, stored)
    if not np.array_equal(norm_offset.unshifted(stored, offset, residual), w, equal_nan=True):
        raise ConversionError(
            f"{model.path}: {t.name}: w + {offset:g} in {out.name} cannot give w back exactly"
        )
    return encoded, residual


def _write_data(
    writer: Any,
    plan: list[tuple[str, list[Tensor], DType]],
    rope_freqs: np.ndarray | None,
    cfg: ModelConfig,
    report: output.ConvertReport,
    progress: output.Progress,
    shifted: dict[str, np.ndarray],
) -> None:
    """The data section, laid out as ``GGUFWriter.write_tensor_data`` lays it out (each
    tensor at the next multiple of the alignment, zeros between): a tensor whose bytes lie
    unchanged in its source goes file to file (``output.SpanCopier``), with the CRC32 of
    a checksummed (APR) source checked as the bytes pass; others are encoded and written."""
    fd = writer.fout[0].fileno()
    align = writer.data_alignment
    pos = _pad(writer.fout[0].tell(), align)
    if rope_freqs is not None:  # llama.cpp's converter writes it first
        output.pwrite_all(fd, rope_freqs, pos)
        pos += _pad(rope_freqs.nbytes, align)
    permute = cfg.architecture in layout.PERMUTED_QK_ARCHS
    copier = output.SpanCopier(fd)
    try:
        for _, parts, out in plan:
            for t in parts:  # a stack's experts back to back, each whole
                size = nbytes(out, t.shape)
                _write_tensor(fd, copier, t, out, pos, permute, cfg, shifted)
                pos += size
                report.advance(t.name, size, progress)
            pos = _pad(pos, align)
    finally:
        copier.close()
    os.ftruncate(fd, pos)  # the padding after the last tensor, as GGUFWriter writes it


def _write_tensor(
    fd: int,
    copier: output.SpanCopier,
    t: Tensor,
    out: DType,
    pos: int,
    permute: bool,
    cfg: ModelConfig,
    shifted: dict[str, np.ndarray],
) -> None:
    """One tensor's bytes at ``pos``: Gemma's shifted norm as encoded, q/k rows permuted for
    llama.cpp's pairwise RoPE, else copied file to file where unchanged, else encoded."""
    heads = (
        layout.qk_heads(t.name, cfg.num_attention_heads, cfg.num_key_value_heads)
        if permute
        else None
    )
    size = nbytes(out, t.shape)
    if t.name in shifted:  # Gemma's norms: w + 1, encoded already
        output.pwrite_all(fd, shifted[t.name], pos)
    elif heads is not None or not copier.copy_unchanged(t, out, pos):
        data = np.ascontiguousarray(output.encode(t, out))
        if heads is not None:
            data = layout.permute_qk(data.reshape(t.shape[0], -1), heads)
        if data.nbytes != size:
            raise ValueError(f"tensor {t.name!r}: {data.nbytes} bytes, expected {size}")
        output.pwrite_all(fd, data, pos)


def _pad(n: int, align: int) -> int:
    return -(-n // align) * align


def _pack_strings(items: list[str]) -> bytes:
    """GGUF strings back to back (u64 length, UTF-8 bytes each), placed by numpy: one
    scatter instead of two Python appends per token."""
    encoded = [item.encode("utf-8") for item in items]
    n = len(encoded)
    lengths = np.fromiter(map(len, encoded), dtype="<u8", count=n)
    blob = np.frombuffer(b"".join(encoded), dtype=np.uint8)
    out = np.empty(8 * n + blob.size, dtype=np.uint8)
    starts = np.arange(n, dtype=np.int64) * 8  # where each length field begins
    starts[1:] += np.cumsum(lengths[:-1], dtype=np.int64)
    out[starts[:, None] + np.arange(8)] = lengths.view(np.uint8).reshape(n, 8)
    owner = np.repeat(np.arange(n, dtype=np.int64), lengths.astype(np.int64))
    out[np.arange(blob.size, dtype=np.int64) + 8 * (owner + 1)] = blob
    return out.tobytes()


@functools.cache
def writer_class() -> Any:
    """gguf-py's ``GGUFWriter``, with arrays of strings and numbers packed in one step each
    (its item-by-item packing took 0.8 s for a 152k-token vocabulary): the same bytes."""
    from gguf import GGUFEndian, GGUFValueType, GGUFWriter

    formats: dict[Any, str] = {
        GGUFValueType.INT32: "i",
        GGUFValueType.UINT32: "I",
        GGUFValueType.FLOAT32: "f",
    }
    number_type: dict[type, Any] = {int: GGUFValueType.INT32, float: GGUFValueType.FLOAT32}

    def pack_array(val: list[Any], sub_type: Any) -> bytes | None:
        kinds = {type(v) for v in val}
        if len(kinds) != 1:
            return None
        kind = kinds.pop()
        if kind is str and sub_type in (None, GGUFValueType.STRING):
            return struct.pack("<IQ", GGUFValueType.STRING, len(val)) + _pack_strings(val)
        ltype = number_type.get(kind) if sub_type is None else sub_type
        fmt = formats.get(ltype)
        if fmt is None or kind not in (int, float) or (kind is float) != (fmt == "f"):
            return None
        return struct.pack("<IQ", ltype, len(val)) + struct.pack(f"<{len(val)}{fmt}", *val)

    class Writer(GGUFWriter):
        def _pack_val(self, val: Any, vtype: Any, add_vtype: bool, sub_type: Any = None) -> bytes:
            if (
                vtype == GGUFValueType.ARRAY
                and self.endianess == GGUFEndian.LITTLE
                and isinstance(val, list)
                and val
            ):
                packed = pack_array(val, sub_type)
                if packed is not None:
                    return (struct.pack("<I", vtype) if add_vtype else b"") + packed
            return bytes(super()._pack_val(val, vtype, add_vtype, sub_type))

    return Writer
