"""The child side of ``aprlib.forward.llamacpp``: llama.cpp runs here, never in the caller.

``python -m aprlib.forward.llamacpp_child`` reads ``(op, kwargs)`` frames on stdin and answers each
with ``("ok", value)`` or ``("raise", exception, child traceback)`` on the fd that was its
stdout. Its fd 1 is pointed at stderr first, so llama.cpp's chatter (C ``printf`` included)
can never corrupt a frame; the parent keeps the last stderr lines for its error message.
An illegal instruction, a segfault or an abort kills only this process (faulthandler writes
the Python stack to stderr on the way out), and the parent turns its exit status into a
typed ``OracleCrashed``. End of stdin ends it.
"""

from __future__ import annotations

import ctypes
import faulthandler
import glob
import os
import pickle
import sys
import traceback
from collections.abc import Callable
from functools import lru_cache
from typing import Any

import numpy as np

from aprlib.forward.llamacpp_wire import receive, send

#: ggml type ids and (values, bytes) per block of the quantisations the oracle is asked for
GGML_TYPES = {"Q8_0": 8, "Q4_K": 12}
BLOCK = {"Q8_0": (32, 34), "Q4_K": (256, 144)}
DEQUANTIZE = {"Q8_0": "dequantize_row_q8_0", "Q4_K": "dequantize_row_q4_K"}
THREADS = 2


def logits(path: str, name: str, tokens: list[int], n_ctx: int) -> np.ndarray:
    """llama.cpp at every position, F32 KV cache (the F16 default adds ~1e-3); a fresh
    context per call, as in-process callers had, so no state carries between calls."""
    import llama_cpp

    from aprlib.forward.token_ids import check_token_ids

    llm = llama_cpp.Llama(
        path,
        logits_all=True,
        type_k=0,
        type_v=0,
        n_ctx=n_ctx,
        n_threads=THREADS,
        verbose=False,
    )
    try:
        check_token_ids(tokens, llm.n_vocab(), name)
        llm.eval(tokens)
        return np.array(llm.scores[: len(tokens)], dtype=np.float32)
    finally:
        llm.close()


def tokenize(path: str, texts: list[str], add_bos: bool, special: bool) -> list[list[int]]:
    """llama.cpp's tokenizer of the GGUF (vocab only: no weights are loaded)."""
    import llama_cpp

    llm = llama_cpp.Llama(path, vocab_only=True, verbose=False)
    try:
        return [
            list(llm.tokenize(text.encode("utf-8"), add_bos=add_bos, special=special))
            for text in texts
        ]
    finally:
        llm.close()


def model_quantize(src: str, dst: str, ftype: str, nthread: int) -> int:
    """``llama_model_quantize`` (llama.cpp's own K-quant mixes): its return code."""
    import llama_cpp

    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = getattr(llama_cpp, f"LLAMA_FTYPE_MOSTLY_{ftype}")
    params.nthread = nthread
    return int(llama_cpp.llama_model_quantize(src.encode(), dst.encode(), ctypes.byref(params)))


@lru_cache(maxsize=1)
def _ggml_base() -> ctypes.CDLL:
    """libggml-base as llama-cpp-python ships it (found beside the package, not imported)."""
    import importlib.util

    spec = importlib.util.find_spec("llama_cpp")
    if spec is None or spec.origin is None:
        raise ImportError("llama-cpp-python is not installed")
    folder = os.path.join(os.path.dirname(spec.origin), "lib")
    found = sorted(glob.glob(os.path.join(folder, "libggml-base.*")))
    if not found:
        raise ImportError(f"no libggml-base in {folder}")
    lib = ctypes.CDLL(found[0])
    lib.ggml_quantize_chunk.restype = ctypes.c_size_t
    lib.ggml_quantize_chunk.argtypes = [
        ctypes.c_int,
        ctypes.c_void_p,
        ctypes.c_void_p,
        ctypes.c_int64,
        ctypes.c_int64,
        ctypes.c_int64,
        ctypes.c_void_p,
    ]
    for name in DEQUANTIZE.values():
        fn = getattr(lib, name)
        fn.restype = None
        fn.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64]
    return lib


def ggml_quantize(values: np.ndarray, kind: str) -> np.ndarray:
    """llama.cpp's own quantiser: float32 [rows, cols] → uint8 [rows, row bytes]."""
    values = np.ascontiguousarray(values, dtype=np.float32)
    rows, cols = values.shape
    per, size = BLOCK[kind]
    if cols % per:
        raise ValueError(f"{kind} rows hold whole blocks of {per}, not {cols} values")
    out = np.zeros(rows * cols // per * size, dtype=np.uint8)
    written = _ggml_base().ggml_quantize_chunk(
        GGML_TYPES[kind], values.ctypes.data, out.ctypes.data, 0, rows, cols, None
    )
    if written != out.size:
        raise RuntimeError(f"ggml_quantize_chunk wrote {written} bytes, not {out.size}")
    return out.reshape(rows, -1)


def ggml_dequantize(raw: np.ndarray, kind: str, count: int) -> np.ndarray:
    """llama.cpp's own dequantiser: ``count`` float32 values from the raw blocks."""
    raw = np.ascontiguousarray(raw, dtype=np.uint8)
    per, size = BLOCK[kind]
    if count % per or raw.size < count // per * size:
        raise ValueError(f"{raw.size} bytes of {kind} do not hold {count} values")
    out = np.zeros(count, dtype=np.float32)
    getattr(_ggml_base(), DEQUANTIZE[kind])(raw.ctypes.data, out.ctypes.data, count)
    return out


def system_info() -> str:
    """What llama.cpp says of its build and this CPU (``AVX2 = 1 | AMX_INT8 = 0 | ...``)."""
    import llama_cpp

    raw = llama_cpp.llama_print_system_info()
    return (raw.decode("utf-8", "replace") if isinstance(raw, bytes) else str(raw)).strip()


OPS: dict[str, Callable[..., Any]] = {
    "system_info": system_info,
    "logits": logits,
    "tokenize": tokenize,
    "model_quantize": model_quantize,
    "ggml_quantize": ggml_quantize,
    "ggml_dequantize": ggml_dequantize,
    "ping": os.getpid,
}


def _portable(exc: BaseException) -> BaseException:
    """The exception itself if it survives a pickle round trip, else a RuntimeError that
    names its type (a custom exception whose constructor a pickle cannot call)."""
    try:
        back = pickle.loads(pickle.dumps(exc, protocol=5))
    except Exception:
        return RuntimeError(f"{type(exc).__name__}: {exc}")
    return back if isinstance(back, BaseException) else RuntimeError(str(exc))


def serve(fd_in: int, fd_out: int) -> int:
    """Answer requests until the parent closes the pipe."""
    while True:
        try:
            op, kwargs = receive(fd_in)
        except EOFError:
            return 0
        try:
            reply: tuple[Any, ...] = ("ok", OPS[op](**kwargs))
        except Exception as exc:
            reply = ("raise", _portable(exc), traceback.format_exc())
        send(fd_out, reply)


def main() -> int:
    fd_out = os.dup(1)
    os.dup2(2, 1)  # llama.cpp's printf goes where the parent keeps the chatter
    sys.stdout = sys.stderr
    faulthandler.enable()  # the Python stack of a native crash, then the same signal
    try:
        return serve(0, fd_out)
    except (BrokenPipeError, KeyboardInterrupt):
        return 0


if __name__ == "__main__":
    sys.exit(main())
