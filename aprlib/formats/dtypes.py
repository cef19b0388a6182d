"""Tensor element types: the one table of codes, byte sizes and format names, and decoding.

Every format module reads its dtype names from ``_INFO`` (through ``DType.info``,
``SAFETENSORS_DTYPES`` and ``DType.from_code``), so a new type is one row here.
Codes are GGML's type ids, so a dtype code means the same thing in an APR file and in a
GGUF file. (APR v1 used its own codes, where BF16 was 2: GGML's Q4_0. A format whose codes
collide with GGML's invites exactly the mislabel this project hunts.)
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum

import numpy as np


class DType(IntEnum):
    F32 = 0
    F16 = 1
    Q4_0 = 2
    Q4_1 = 3
    Q5_0 = 6
    Q5_1 = 7
    Q8_0 = 8
    Q2_K = 10
    Q3_K = 11
    Q4_K = 12
    Q5_K = 13
    Q6_K = 14
    IQ2_XXS = 16
    IQ2_XS = 17
    IQ3_XXS = 18
    IQ1_S = 19
    IQ4_NL = 20
    IQ3_S = 21
    IQ2_S = 22
    IQ4_XS = 23
    IQ1_M = 29
    BF16 = 30
    TQ1_0 = 34
    TQ2_0 = 35
    MXFP4 = 39

    @property
    def info(self) -> DTypeInfo:
        return _info(self)

    @classmethod
    def from_code(cls, code: int) -> DType | None:
        """The dtype of a GGML/APR type code, None for a code no row of the table holds."""
        return _BY_CODE.get(code)

    @classmethod
    def parse(cls, text: str) -> DType:
        """``"bf16"``, ``"BF16"``, ``"q4_k"`` → DType; ValueError names the choices."""
        key = text.strip().upper()
        if key in cls.__members__ and cls[key] in ENCODABLE:
            return cls[key]
        raise ValueError(
            f"unknown dtype {text!r}; one of {', '.join(d.name.lower() for d in ENCODABLE)}"
        )


def _ggml_block(d: DType) -> tuple[int, int]:
    """(elements, bytes) of one block, from the gguf package's table."""
    from gguf.constants import GGML_QUANT_SIZES, GGMLQuantizationType

    return GGML_QUANT_SIZES[GGMLQuantizationType(int(d))]


@dataclass(frozen=True)
class DTypeInfo:
    block_elements: int  # elements per block (1 for plain floats)
    block_bytes: int  # bytes per block
    numpy: str | None  # numpy dtype of one element, for the plain floats
    safetensors: str | None = None  # safetensors' dtype string, where it has one

    @property
    def quantized(self) -> bool:
        return self.block_elements > 1


_INFO = {
    DType.F32: DTypeInfo(1, 4, "<f4", "F32"),
    DType.F16: DTypeInfo(1, 2, "<f2", "F16"),
    DType.BF16: DTypeInfo(1, 2, None, "BF16"),
    DType.Q8_0: DTypeInfo(32, 34, None),  # f16 scale + 32 x int8
    DType.Q4_K: DTypeInfo(256, 144, None),  # f16 d, f16 dmin, 12 bytes scales, 128 bytes nibbles
}
#: read and passed through as raw blocks, decoded by gguf.quants (llama.cpp's mixes: Q4_K_M
#: holds Q6_K, older files Q4_0/Q4_1/Q5_0/Q5_1, i-quants); their block sizes come from the
#: gguf package's table on first use, so that reading a safetensors or APR file never
#: imports gguf (~0.1 s of every ``apr diff``'s start-up)
_LLAMA_CPP_ONLY = (
    DType.Q4_0,
    DType.Q4_1,
    DType.Q5_0,
    DType.Q5_1,
    DType.Q2_K,
    DType.Q3_K,
    DType.Q5_K,
    DType.Q6_K,
    DType.IQ2_XXS,
    DType.IQ2_XS,
    DType.IQ3_XXS,
    DType.IQ1_S,
    DType.IQ4_NL,
    DType.IQ3_S,
    DType.IQ2_S,
    DType.IQ4_XS,
    DType.IQ1_M,
    DType.TQ1_0,
    DType.TQ2_0,
    DType.MXFP4,
)


def _info(d: DType) -> DTypeInfo:
    info = _INFO.get(d)
    if info is None:
        if d not in _LLAMA_CPP_ONLY:
            raise KeyError(d)
        info = _INFO[d] = DTypeInfo(*_ggml_block(d), None)
    return info


#: what aprlib can encode (``--dtype``); every other type is read and passed through
ENCODABLE = (DType.F32, DType.F16, DType.BF16, DType.Q8_0, DType.Q4_K)

_BY_CODE = {int(d): d for d in DType}

#: safetensors' dtype strings ↔ ours (the ones a model file carries)
SAFETENSORS_DTYPES = {i.safetensors: d for d, i in _INFO.items() if i.safetensors is not None}


def element_count(shape: tuple[int, ...]) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


def nbytes(dtype: DType, shape: tuple[int, ...]) -> int:
    """Bytes of a row-major tensor; quantised rows must be whole blocks."""
    info = dtype.info
    if info.quantized:
        row = shape[-1] if shape else 1
        if row % info.block_elements:
            raise ValueError(
                f"{dtype.name} needs rows that are a multiple of {info.block_elements} "
                f"elements; this tensor's rows have {row}"
            )
    return element_count(shape) // info.block_elements * info.block_bytes


def bf16_to_float32(raw: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """BF16 is the high half of a float32: widen by shifting, never through float16
    (into ``out``, float32, where given: one cast and one shift, no temporary)."""
    bits = np.empty(raw.size // 2, np.uint32) if out is None else out.view(np.uint32)
    np.copyto(bits, raw.view("<u2").reshape(-1))
    np.left_shift(bits, 16, out=bits)
    return bits.view(np.float32)


def float32_to_bf16(values: np.ndarray) -> np.ndarray:
    """Round to nearest even, as torch and ml_dtypes do; NaN stays NaN."""
    bits = np.ascontiguousarray(values, dtype=np.float32).view(np.uint32)
    rounded = bits + (np.uint32(0x7FFF) + ((bits >> 16) & np.uint32(1)))
    out = (rounded >> 16).astype(np.uint16)
    nan = np.isnan(values)
    if nan.any():
        out[nan] = ((bits[nan] >> 16) | np.uint32(0x40)).astype(np.uint16)
    return out


#: one Q8_0 block: an f16 scale, then 32 int8 codes
Q8_0_BLOCK = np.dtype([("d", "<f2"), ("q", "i1", (32,))])


def to_float32(
    raw: bytes | memoryview | np.ndarray, dtype: DType, shape: tuple[int, ...]
) -> np.ndarray:
    """Decode raw little-endian bytes of ``dtype`` into a float32 array of ``shape``."""
    buf = (
        np.frombuffer(raw, dtype=np.uint8)
        if not isinstance(raw, np.ndarray)
        else raw.view(np.uint8).reshape(-1)
    )
    expected = nbytes(dtype, shape)
    if buf.size != expected:
        raise ValueError(f"{dtype.name}{list(shape)} needs {expected} bytes, got {buf.size}")
    if dtype is DType.F32:
        return buf.view("<f4").reshape(shape)
    out = np.empty(element_count(shape), dtype=np.float32)
    return decode_into(buf, dtype, out).reshape(shape)


def decode_into(
    raw: np.ndarray,
    dtype: DType,
    out: np.ndarray,
    q4_k_scales: tuple[np.ndarray, np.ndarray] | None = None,
) -> np.ndarray:
    """The float32 values of ``raw`` (uint8, whole blocks), written into ``out`` (float32,
    exactly as many elements) and returned; F32 is returned as a view of ``raw``. Writing
    into a caller's buffer lets ``apr diff`` decode a model piece by piece without
    page-faulting fresh memory for each. ``q4_k_scales``: ``q4k.block_scales``' (step,
    minimum) where the caller has them. gguf.quants' arithmetic throughout (held to it)."""
    if dtype is DType.F32:
        return raw.view("<f4")
    if dtype is DType.BF16:
        return bf16_to_float32(raw, out)
    if dtype is DType.F16:
        np.copyto(out, raw.view("<f2"))
    elif dtype is DType.Q8_0:  # cast the codes in place, then scale: 3x faster than one
        blocks = raw.view(Q8_0_BLOCK)  # mixed-type multiply over the strided codes
        by_block = out.reshape(-1, 32)
        np.copyto(by_block, blocks["q"])
        by_block *= blocks["d"].astype(np.float32)[:, None]
    elif dtype is DType.Q4_K:
        from aprlib.formats.q4k import dequantize_into

        dequantize_into(raw, out, q4_k_scales)
    else:
        from gguf.quants import GGMLQuantizationType, dequantize

        qtype = GGMLQuantizationType(int(dtype))
        rows = raw.reshape(-1, dtype.info.block_bytes)
        np.copyto(out, dequantize(rows, qtype).reshape(-1))
    return out


def from_float32(values: np.ndarray, dtype: DType) -> np.ndarray:
    """Encode float32 values as raw bytes (uint8) of ``dtype``; rows are the last axis."""
    values = np.ascontiguousarray(values, dtype=np.float32)
    if dtype is DType.F32:
        return values.view(np.uint8).reshape(-1)
    if dtype is DType.F16:
        return values.astype("<f2").view(np.uint8).reshape(-1)
    if dtype is DType.BF16:
        return float32_to_bf16(values).view(np.uint8).reshape(-1)
    if dtype is DType.Q8_0:
        from gguf.quants import GGMLQuantizationType, quantize

        return quantize(values.reshape(-1, values.shape[-1]), GGMLQuantizationType.Q8_0).reshape(-1)
    if dtype is DType.Q4_K:
        from aprlib.formats.q4k import quantize_q4_k

        return quantize_q4_k(values.reshape(-1, values.shape[-1])).reshape(-1)
    raise ValueError(f"cannot encode {dtype!r}")


#: config ``torch_dtype`` values and the tag they stand for (``torch.`` prefix dropped)
TORCH_DTYPES: dict[str, DType] = {
    "float32": DType.F32,
    "float16": DType.F16,
    "bfloat16": DType.BF16,
}
#: the half-precision pair a mislabel confuses, each with the other
OTHER_HALF: dict[DType, DType] = {DType.F16: DType.BF16, DType.BF16: DType.F16}
