"""GGML Q8_0 and Q4_K dequantisation, and a fused dequantise-matvec.

Block layouts (GGML, the bytes GGUF and APR store):

* Q8_0, 34 bytes per 32 values: fp16 ``d``, then 32 int8 ``q``; ``x = d * q``.
* Q4_K, 144 bytes per 256 values: fp16 ``d``, fp16 ``dmin``, 12 bytes of packed 6-bit
  scales/mins for 8 sub-blocks of 32, 128 bytes of nibbles (bytes 32c..32c+31 hold sub-block
  2c in their low nibbles and 2c+1 in their high ones); ``x = (d * sc) * q - dmin * m``.

The kernels are bit-exact against ``gguf.quants.dequantize``: they do the same float32
operations in the same order, and the launchers turn off fp-contraction so that a GPU does
not fuse ``a * q - b`` into one FMA (which rounds once instead of twice).
"""

from __future__ import annotations

import numpy as np
import torch
import triton
import triton.language as tl

from aprlib.formats.dtypes import DType, element_count
from provable_kernels._launch import block

Q8_0, Q4_K = "q8_0", "q4_k"
_DTYPES = {Q8_0: DType.Q8_0, Q4_K: DType.Q4_K}
BLOCK_BYTES = {kind: d.info.block_bytes for kind, d in _DTYPES.items()}
BLOCK_VALUES = {kind: d.info.block_elements for kind, d in _DTYPES.items()}


@triton.jit
def _fp16_at(ptr):
    """The little-endian fp16 at byte ``ptr`` (any shape of pointers), as float32."""
    lo = tl.load(ptr).to(tl.uint16)
    hi = tl.load(ptr + 1).to(tl.uint16)
    return (lo | (hi << 8)).to(tl.float16, bitcast=True).to(tl.float32)


@triton.jit
def _q8_0_values(raw_ptr, blocks, elems):
    """Values of Q8_0 blocks ``blocks`` [R, 1] at element indices ``elems`` [1, C] (< 32)."""
    base = raw_ptr + blocks * 34
    d = _fp16_at(base)
    q = tl.load(base + 2 + elems).to(tl.int8, bitcast=True).to(tl.float32)
    return d * q


@triton.jit
def _q4_k_values(raw_ptr, blocks, elems):
    """Values of Q4_K blocks ``blocks`` [R, 1] at element indices ``elems`` [1, C] (< 256)."""
    base = raw_ptr + blocks * 144
    d = _fp16_at(base)
    dmin = _fp16_at(base + 2)
    sub = elems // 32
    low = sub < 4
    scales = base + 4
    # sub-blocks 0-3: 6 bits of bytes j and j+4; 4-7: a nibble of byte j+4, 2 bits of j-4 / j
    a = tl.load(scales + tl.where(low, sub, sub + 4)).to(tl.int32)
    b = tl.load(scales + tl.where(low, sub + 4, sub - 4)).to(tl.int32)
    c = tl.load(scales + tl.where(low, sub + 4, sub)).to(tl.int32)
    sc = tl.where(low, a & 63, (a & 15) | ((b >> 2) & 48))
    mn = tl.where(low, c & 63, (a >> 4) | ((c >> 2) & 48))
    byte = tl.load(base + 16 + (sub // 2) * 32 + elems % 32).to(tl.int32)
    q = ((byte >> ((sub % 2) * 4)) & 15).to(tl.float32)
    return (d * sc.to(tl.float32)) * q - dmin * mn.to(tl.float32)


@triton.jit
def _dequant_kernel(
    raw_ptr, out_ptr, n_blocks, IS_Q4_K: tl.constexpr, VALUES: tl.constexpr,
    BLOCK_B: tl.constexpr,
):  # fmt: skip
    blocks = tl.program_id(0) * BLOCK_B + tl.arange(0, BLOCK_B)[:, None]
    elems = tl.arange(0, VALUES)[None, :]
    ok = (blocks < n_blocks) & (elems < VALUES)
    safe = tl.where(ok, blocks, 0)
    if IS_Q4_K:  # noqa: SIM108 (a constexpr branch: only one helper is compiled)
        x = _q4_k_values(raw_ptr, safe, elems)
    else:
        x = _q8_0_values(raw_ptr, safe, elems)
    tl.store(out_ptr + blocks * VALUES + elems, x, mask=ok)


def _check_raw(raw: torch.Tensor, kind: str, shape: tuple[int, ...]) -> int:
    if kind not in BLOCK_BYTES:
        raise ValueError(f"dequantize: unknown block type {kind!r} (q8_0 or q4_k)")
    count = element_count(shape)
    values, size = BLOCK_VALUES[kind], BLOCK_BYTES[kind]
    if raw.dtype != torch.uint8 or raw.dim() != 1:
        raise ValueError(f"dequantize: raw {kind} bytes must be a 1-D uint8 tensor")
    if count % values or raw.numel() != count // values * size:
        raise ValueError(
            f"dequantize: {kind} shape {shape} needs {count // values * size} bytes "
            f"({values} values per {size}-byte block), got {raw.numel()}"
        )
    return count // values


def dequantize(raw: torch.Tensor, kind: str, shape: tuple[int, ...]) -> torch.Tensor:
    """float32 values of ``shape`` from GGML ``kind`` blocks in ``raw`` (uint8, 1-D)."""
    n_blocks = _check_raw(raw, kind, shape)
    values = BLOCK_VALUES[kind]
    out = torch.empty(n_blocks * values, dtype=torch.float32, device=raw.device)
    block_b = block(max(1, 8192 // values), 256, floor=1)
    _dequant_kernel[(triton.cdiv(n_blocks, block_b),)](
        raw, out, n_blocks, IS_Q4_K=kind == Q4_K, VALUES=values, BLOCK_B=block_b,
        enable_fp_fusion=False,
    )  # fmt: skip
    return out.reshape(shape)


def dequantize_reference(raw: torch.Tensor, kind: str, shape: tuple[int, ...]) -> torch.Tensor:
    """The gguf package's numpy dequantisation (the independent oracle)."""
    from gguf import GGMLQuantizationType
    from gguf.quants import dequantize as gguf_dequantize

    _check_raw(raw, kind, shape)
    values = gguf_dequantize(raw.cpu().numpy(), GGMLQuantizationType(int(_DTYPES[kind])))
    return torch.from_numpy(np.ascontiguousarray(values, dtype=np.float32)).reshape(shape)


@triton.jit
def _matvec_kernel(
    raw_ptr, x_ptr, out_ptr, n_rows, n_cols, IS_Q4_K: tl.constexpr, VALUES: tl.constexpr,
    BLOCK_R: tl.constexpr, BLOCK_K: tl.constexpr,
):  # fmt: skip
    rows = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    blocks_per_row = n_cols // VALUES
    acc = tl.zeros((BLOCK_R,), dtype=tl.float32)
    for k0 in range(0, n_cols, BLOCK_K):
        cols = k0 + tl.arange(0, BLOCK_K)
        ok = (rows[:, None] < n_rows) & (cols[None, :] < n_cols)
        blocks = tl.where(ok, rows[:, None] * blocks_per_row + cols[None, :] // VALUES, 0)
        elems = cols[None, :] % VALUES
        if IS_Q4_K:
            w = _q4_k_values(raw_ptr, blocks, elems)
        else:
            w = _q8_0_values(raw_ptr, blocks, elems)
        x = tl.load(x_ptr + cols, mask=cols < n_cols, other=0.0).to(tl.float32)
        acc += tl.sum(tl.where(ok, w * x[None, :], 0.0), axis=1)
    tl.store(out_ptr + rows, acc, mask=rows < n_rows)


def dequantize_matvec(
    raw: torch.Tensor, kind: str, shape: tuple[int, int], x: torch.Tensor
) -> torch.Tensor:
    """``W @ x`` for a quantised ``W`` of ``shape`` [N, K] without materialising W (float32)."""
    _check_raw(raw, kind, shape)
    n_rows, n_cols = shape
    if x.shape != (n_cols,):
        raise ValueError(f"dequantize_matvec: x {tuple(x.shape)} does not fit W {shape}")
    out = torch.empty(n_rows, dtype=torch.float32, device=raw.device)
    block_k = block(n_cols, 2048, floor=BLOCK_VALUES[kind])
    block_r = block(max(1, 16384 // block_k), 64, floor=1)
    _matvec_kernel[(triton.cdiv(n_rows, block_r),)](
        raw, x.contiguous(), out, n_rows, n_cols, IS_Q4_K=kind == Q4_K,
        VALUES=BLOCK_VALUES[kind], BLOCK_R=block_r, BLOCK_K=block_k,
    )  # fmt: skip
    return out


def dequantize_matvec_reference(
    raw: torch.Tensor, kind: str, shape: tuple[int, int], x: torch.Tensor
) -> torch.Tensor:
    """The gguf package's dequantisation, then a torch matvec in x's dtype (float64 for ref64)."""
    weight = dequantize_reference(raw, kind, shape).to(device=x.device, dtype=x.dtype)
    return weight @ x
