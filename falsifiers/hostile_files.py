"""Hostile model files built byte by byte from the specs, not with aprlib's writers.

Independent of the code under test on purpose: a writer bug cannot hide a reader bug, and
the same builders make the files that ``bench/bench_hostile.py`` and the hostile-input
falsifiers mutate. Also: small subprocess helpers that run ``apr`` under a memory limit
and a timeout and report the exit status, the peak RSS and the wall time.
"""

from __future__ import annotations

import json
import os
import resource
import struct
import subprocess
import sys
import time
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]

# --- GGUF --------------------------------------------------------------------------------

U8, I8, U16, I16, U32, I32, F32, BOOL, STRING, ARRAY, U64, I64, F64 = range(13)
_FMT = {U8: "<B", I8: "<b", U16: "<H", I16: "<h", U32: "<I", I32: "<i", F32: "<f"}
_FMT |= {BOOL: "<B", U64: "<Q", I64: "<q", F64: "<d"}


def gguf_string(text: str | bytes) -> bytes:
    raw = text.encode() if isinstance(text, str) else text
    return struct.pack("<Q", len(raw)) + raw


def gguf_value(vtype: int, value: Any) -> bytes:
    if vtype == STRING:
        return gguf_string(value)
    if vtype == ARRAY:
        etype, items = value
        return struct.pack("<IQ", etype, len(items)) + b"".join(gguf_value(etype, v) for v in items)
    return struct.pack(_FMT[vtype], value)


def gguf_kv(key: str, vtype: int, value: Any) -> bytes:
    return gguf_string(key) + struct.pack("<I", vtype) + gguf_value(vtype, value)


def gguf_bytes(
    kvs: list[bytes],
    tensors: list[tuple[str, tuple[int, ...], int, int]] = (),  # type: ignore[assignment]
    data: bytes = b"",
    alignment: int = 32,
    version: int = 3,
    n_tensors: int | None = None,
    n_kv: int | None = None,
) -> bytes:
    """A GGUF file: header, the given raw key/values, tensor infos (name, ne, type,
    offset), padding to ``alignment``, then ``data``."""
    out = b"GGUF" + struct.pack("<IQQ", version, _or(n_tensors, len(tensors)), _or(n_kv, len(kvs)))
    out += b"".join(kvs)
    for name, ne, ttype, offset in tensors:
        out += gguf_string(name) + struct.pack(f"<I{len(ne)}QIQ", len(ne), *ne, ttype, offset)
    out += b"\0" * (-len(out) % alignment)
    return out + data


def _or(value: int | None, default: int) -> int:
    return default if value is None else value


def qwen2_kv(heads: Any = 2, kv_heads: Any = 1, hidden: int = 8, layers: int = 1) -> list[bytes]:
    """The key/values of a tiny qwen2 model (values may be given hostile types)."""
    a = "qwen2"

    def num(key: str, value: Any) -> bytes:
        if isinstance(value, str):
            return gguf_kv(key, STRING, value)
        return gguf_kv(key, U32, value)

    return [
        gguf_kv("general.architecture", STRING, a),
        num(f"{a}.vocab_size", 4),
        num(f"{a}.embedding_length", hidden),
        num(f"{a}.feed_forward_length", 16),
        num(f"{a}.block_count", layers),
        num(f"{a}.attention.head_count", heads),
        num(f"{a}.attention.head_count_kv", kv_heads),
        gguf_kv(f"{a}.attention.layer_norm_rms_epsilon", F32, 1e-6),
        gguf_kv(f"{a}.rope.freq_base", F32, 10000.0),
        num(f"{a}.context_length", 64),
    ]


def tiny_gguf(arch: str = "qwen2", q_rows: int = 8, heads: Any = 2, kv_heads: Any = 1) -> bytes:
    """A valid-looking GGUF with an F32 embedding and one q projection."""
    kvs = qwen2_kv(heads, kv_heads)
    if arch != "qwen2":
        kvs = [k.replace(b"qwen2", arch.encode()) for k in kvs]
        kvs[0] = gguf_kv("general.architecture", STRING, arch)
    embed = (8, 4)  # ne: [hidden, vocab]
    q = (8, q_rows)
    tensors = [
        ("token_embd.weight", embed, 0, 0),
        ("blk.0.attn_q.weight", q, 0, 128),
    ]
    data = os.urandom(128) + os.urandom(8 * q_rows * 4)
    return gguf_bytes(kvs, tensors, data)


# --- safetensors -------------------------------------------------------------------------


def safetensors_bytes(header: dict[str, Any] | bytes, data: bytes = b"") -> bytes:
    raw = header if isinstance(header, bytes) else json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    return struct.pack("<Q", len(raw)) + raw + data


def one_tensor_header(**entry: Any) -> dict[str, Any]:
    base = {"dtype": "F32", "shape": [2, 2], "data_offsets": [0, 16]}
    return {"w": {**base, **entry}}


def sharded_folder(folder: Path, weight_map: Any, shards: dict[str, bytes] | None = None) -> Path:
    """A folder with an index (raw bytes, or JSON of ``{"weight_map": weight_map}``)."""
    folder.mkdir(parents=True, exist_ok=True)
    index = (
        weight_map
        if isinstance(weight_map, bytes)
        else json.dumps({"metadata": {}, "weight_map": weight_map}).encode()
    )
    (folder / "model.safetensors.index.json").write_bytes(index)
    for name, raw in (shards or {}).items():
        (folder / name).write_bytes(raw)
    return folder


# --- APR ---------------------------------------------------------------------------------

APR_HEADER = struct.Struct("<4sHHQQQQQQII")


@dataclass
class AprEntry:
    name: str
    dtype: int
    shape: tuple[int, ...]
    offset: int
    nbytes: int
    crc32: int


def apr_index(entries: list[AprEntry]) -> bytes:
    out = []
    for e in entries:
        name = e.name.encode()
        out.append(struct.pack("<H", len(name)) + name + struct.pack("<IB", e.dtype, len(e.shape)))
        out.append(struct.pack(f"<{len(e.shape)}QQQI", *e.shape, e.offset, e.nbytes, e.crc32))
    return b"".join(out)


def apr_bytes(
    metadata: bytes | dict[str, Any],
    entries: list[AprEntry],
    data: bytes,
    minor: int = 0,
    count: int | None = None,
    data_length: int | None = None,
) -> bytes:
    """An APR file as docs/apr-format.md specifies (2.0, or 2.1 with the CRC trailer)."""
    meta = metadata if isinstance(metadata, bytes) else json.dumps(metadata).encode()
    index = apr_index(entries)
    if minor >= 1:
        index += b"ACRC" + struct.pack("<II", zlib.crc32(meta), zlib.crc32(index))
    index_off = 64 + len(meta)
    data_off = -(-(index_off + len(index)) // 64) * 64
    fields = [b"APR2", 2, minor, 64, len(meta), index_off, len(index), data_off]
    fields += [_or(data_length, len(data)), _or(count, len(entries)), 0]
    head = APR_HEADER.pack(*fields)
    head = head[:-4] + struct.pack("<I", zlib.crc32(head[:-4]))
    body = head + meta + index
    return body + b"\0" * (data_off - len(body)) + data


def one_f32_apr(metadata: bytes | dict[str, Any] | None = None, minor: int = 0) -> bytes:
    data = os.urandom(64)
    entry = AprEntry("model.embed_tokens.weight", 0, (4, 4), 0, 64, zlib.crc32(data))
    return apr_bytes({} if metadata is None else metadata, [entry], data, minor=minor)


# --- running apr in a child --------------------------------------------------------------


@dataclass
class Run:
    returncode: int
    stdout: str
    stderr: str
    seconds: float
    peak_rss_mb: float
    timed_out: bool


def run_apr(
    *args: str,
    timeout: float = 30,
    memory_mb: int | None = None,
    before: str = "",
    stdin: Any = None,
) -> Run:
    """``python -c 'from aprlib.cli.main import main; ...' ARGS`` in a fresh child (this
    worktree's aprlib), optionally under ``ulimit -v``; ``before`` is Python run first."""
    # peak RSS from VmHWM, not ru_maxrss: Linux keeps ru_maxrss across fork+exec, so a
    # child of a 300 MB pytest would report 300 MB
    code = (
        "import sys\n"
        f"{before}\n"
        "from aprlib.cli.main import main\n"
        "rc = main(sys.argv[1:])\n"
        "sys.stdout.flush()\n"
        "hwm = [l for l in open('/proc/self/status') if l.startswith('VmHWM')]\n"
        "print('PEAK_RSS_KB', hwm[0].split()[1], file=sys.stderr)\n"
        "sys.exit(rc)\n"
    )
    limit = None
    if memory_mb is not None:
        limit = memory_mb << 20

        def preexec() -> None:
            resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    else:
        preexec = None  # type: ignore[assignment]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    start = time.monotonic()
    try:
        proc = subprocess.run(
            [sys.executable, "-c", code, *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            cwd=ROOT,
            env=env,
            preexec_fn=preexec,
            stdin=stdin,
        )
    except subprocess.TimeoutExpired as exc:
        return Run(-9, str(exc.stdout or ""), str(exc.stderr or ""), timeout, 0.0, True)
    seconds = time.monotonic() - start
    peak, lines = 0.0, []
    for line in proc.stderr.splitlines():
        if line.startswith("PEAK_RSS_KB "):
            peak = int(line.split()[1]) / 1024
        else:
            lines.append(line)
    return Run(proc.returncode, proc.stdout, "\n".join(lines), seconds, peak, False)


def assert_one_line_error(run: Run, *needles: str, code: int = 1) -> None:
    """Exit ``code``, one ``apr: error:`` line naming each needle, no traceback."""
    assert not run.timed_out, f"timed out after {run.seconds:.0f} s"
    assert run.returncode == code, (run.returncode, run.stderr[-2000:])
    assert "Traceback" not in run.stderr, run.stderr[-2000:]
    lines = [line for line in run.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("apr: error: "), run.stderr[-2000:]
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])


def apr_inline(capsys: Any, *args: str) -> tuple[int, str]:
    """``apr ARGS`` in this process: (exit code, the one stderr line). An exception out of
    ``main`` (a traceback for a user) fails the calling test by itself."""
    from aprlib.cli.main import main

    capsys.readouterr()
    rc = main(list(args))
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) <= 1, err
    return rc, err[0] if err else ""


def read_apr_by_v20_rules(data: bytes) -> dict[str, tuple[int, tuple[int, ...], bytes]]:
    """What an APR 2.0 reader (docs/apr-format.md, 2.0) makes of a file: header, regions,
    ``tensor_count`` index entries and nothing after them; name → (dtype, shape, bytes)."""
    fields = APR_HEADER.unpack_from(data, 0)
    magic, major, _, _, meta_len, index_off, index_len, data_off, _, count, crc = fields
    assert magic == b"APR2" and major == 2 and zlib.crc32(data[:60]) == crc
    json.loads(data[64 : 64 + meta_len])
    pos, out = index_off, {}
    for _ in range(count):
        (n,) = struct.unpack_from("<H", data, pos)
        name = data[pos + 2 : pos + 2 + n].decode()
        pos += 2 + n
        dtype, ndim = struct.unpack_from("<IB", data, pos)
        pos += 5
        shape = struct.unpack_from(f"<{ndim}Q", data, pos)
        pos += 8 * ndim
        offset, size, tcrc = struct.unpack_from("<QQI", data, pos)
        pos += 20
        raw = data[data_off + offset : data_off + offset + size]
        assert zlib.crc32(raw) == tcrc, name
        out[name] = (dtype, shape, raw)
    assert pos <= index_off + index_len
    return out
