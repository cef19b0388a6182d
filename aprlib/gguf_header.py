"""The GGUF header (key/values and tensor infos) parsed straight from the memory map.

Why not ``gguf.GGUFReader``: it builds one numpy memmap slice per value, so a real
vocabulary (150k token strings, 150k merges) takes ~10 s to open, ten times the cost of
diffing the whole model. Here a token list is read with ``struct`` in one pass. The values
are the ones ``GGUFReader(...).fields[k].contents()`` returns (tests hold the two equal);
tensor sizes come from ``gguf.constants.GGML_QUANT_SIZES``, so every GGML type is known.
Every count and length is checked against the bytes that remain before anything is
allocated: a hostile count is an error naming the key, never a huge allocation.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import Any

from aprlib.errors import GgufFormatError

SUPPORTED_VERSIONS = (2, 3)
DEFAULT_ALIGNMENT = 32
#: GGUF value type id → (struct code, size); 8 = string, 9 = array
_SCALARS = {
    0: ("B", 1),
    1: ("b", 1),
    2: ("H", 2),
    3: ("h", 2),
    4: ("I", 4),
    5: ("i", 4),
    6: ("f", 4),
    7: ("?", 1),
    10: ("Q", 8),
    11: ("q", 8),
    12: ("d", 8),
}
STRING, ARRAY = 8, 9
MAX_DIMS = 4  # GGML_MAX_DIMS


@dataclass
class TensorInfo:
    name: str
    ggml_type: int
    dims: tuple[int, ...]  # GGUF order: ne[0] (the contiguous axis) first
    offset: int  # from the start of the data section


@dataclass
class GgufHeader:
    version: int
    kv: dict[str, Any]
    tensors: list[TensorInfo]
    data_start: int
    alignment: int
    types: dict[str, int] = field(default_factory=dict)  # key → GGUF value type


class _Cursor:
    def __init__(self, buf: Any, path: Any) -> None:
        self.buf, self.pos, self.path, self.size = buf, 0, path, len(buf)
        self.key: str | None = None

    def fail(self, message: str) -> GgufFormatError:
        return GgufFormatError(self.path, message, field=self.key)

    def take(self, code: str, size: int) -> Any:
        if self.pos + size > self.size:
            raise self.fail(f"truncated at byte {self.pos} (file is {self.size} bytes)")
        (value,) = struct.unpack_from("<" + code, self.buf, self.pos)
        self.pos += size
        return value

    def count(self, item_size: int, what: str) -> int:
        n = self.take("Q", 8)
        if n * item_size > self.size - self.pos:
            raise self.fail(f"{what} count {n} exceeds the {self.size - self.pos} bytes left")
        return n

    def string(self) -> str:
        n = self.count(1, "string length")
        raw = bytes(self.buf[self.pos : self.pos + n])
        self.pos += n
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise self.fail(f"string is not UTF-8: {exc}") from None

    def value(self, vtype: int) -> Any:
        if vtype in _SCALARS:
            return self.take(*_SCALARS[vtype])
        if vtype == STRING:
            return self.string()
        if vtype == ARRAY:
            sub = self.take("I", 4)
            if sub in _SCALARS:
                code, size = _SCALARS[sub]
                n = self.count(size, "array")
                values = list(struct.unpack_from(f"<{n}{code}", self.buf, self.pos))
                self.pos += n * size
                return values
            if sub == STRING:
                n = self.count(8, "array")
                return [self.string() for _ in range(n)]
            if sub == ARRAY:
                n = self.count(12, "array")
                return [self.value(ARRAY) for _ in range(n)]
            raise self.fail(f"unknown array element type {sub}")
        raise self.fail(f"unknown value type {vtype}")


def read_header(buf: Any, path: Any = "<buffer>") -> GgufHeader:
    """Parse the header of a GGUF held in ``buf`` (an mmap or bytes)."""
    c = _Cursor(buf, path)
    if c.size < 24 or bytes(buf[:4]) != b"GGUF":
        raise c.fail("not a GGUF file (no GGUF magic, or shorter than its header)")
    c.pos = 4
    version = c.take("I", 4)
    if version not in SUPPORTED_VERSIONS:
        hint = " (big-endian GGUF is not supported)" if version & 0xFFFF == 0 else ""
        raise GgufFormatError(path, f"GGUF version {version} not supported{hint}", field="version")
    n_tensors = c.count(8, "tensor")
    n_kv = c.count(12, "key/value")
    kv: dict[str, Any] = {}
    types: dict[str, int] = {}
    for _ in range(n_kv):
        c.key = None
        key = c.string()
        c.key = key
        vtype = c.take("I", 4)
        if key in kv:
            raise c.fail("key appears twice")
        kv[key] = c.value(vtype)
        types[key] = vtype
    c.key = None
    tensors = []
    names: set[str] = set()
    for _ in range(n_tensors):
        name = c.string()
        c.key = f"tensor {name!r}"
        n_dims = c.take("I", 4)
        if n_dims > MAX_DIMS:
            raise c.fail(f"{n_dims} dimensions (GGML allows {MAX_DIMS})")
        dims = tuple(c.take("Q", 8) for _ in range(n_dims))
        ggml_type = c.take("I", 4)
        offset = c.take("Q", 8)
        if name in names:
            raise c.fail("tensor appears twice")
        names.add(name)
        tensors.append(TensorInfo(name, ggml_type, dims, offset))
        c.key = None
    alignment = kv.get("general.alignment", DEFAULT_ALIGNMENT)
    if not isinstance(alignment, int) or alignment <= 0 or alignment & (alignment - 1):
        raise GgufFormatError(
            path, f"alignment {alignment!r} is not a power of two", field="general.alignment"
        )
    data_start = -(-c.pos // alignment) * alignment
    return GgufHeader(version, kv, tensors, data_start, alignment, types)


def tensor_nbytes(info: TensorInfo) -> int:
    """Bytes of a tensor of any GGML type, from the gguf package's block table; raises
    KeyError for a type the package does not know, ValueError for partial blocks."""
    from gguf.constants import GGML_QUANT_SIZES, GGMLQuantizationType

    block, size = GGML_QUANT_SIZES[GGMLQuantizationType(info.ggml_type)]
    row = info.dims[0] if info.dims else 1
    if row % block:
        raise ValueError(f"rows of {row} elements are not whole blocks of {block}")
    n = 1
    for d in info.dims:
        n *= d
    return n // block * size
