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
import re
import sys
import time
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
    # what the eval callback reads a graph tensor with (ggml.h, ggml-backend.h)
    lib.ggml_get_name.restype = ctypes.c_char_p
    lib.ggml_get_name.argtypes = [ctypes.c_void_p]
    lib.ggml_nbytes.restype = ctypes.c_size_t
    lib.ggml_nbytes.argtypes = [ctypes.c_void_p]
    lib.ggml_is_contiguous.restype = ctypes.c_bool
    lib.ggml_is_contiguous.argtypes = [ctypes.c_void_p]
    lib.ggml_backend_tensor_get.restype = None
    lib.ggml_backend_tensor_get.argtypes = [
        ctypes.c_void_p,
        ctypes.c_void_p,
        ctypes.c_size_t,
        ctypes.c_size_t,
    ]
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


class TensorHead(ctypes.Structure):
    """The leading fields of ggml.h's ``struct ggml_tensor`` (type, buffer, ne[4], nb[4]).

    ggml has getters for a tensor's name and byte size but none for its shape or strides,
    so those are read from the struct itself; only this prefix is declared, never written.
    """

    _fields_ = [
        ("type", ctypes.c_int),
        ("buffer", ctypes.c_void_p),
        ("ne", ctypes.c_int64 * 4),
        ("nb", ctypes.c_size_t * 4),
    ]


#: ggml_type ids of the float types an activation can have, as numpy reads their bytes
#: (BF16 is the top half of a float32: read as uint16, widened by a shift)
ACTIVATION_TYPES: dict[int, Any] = {0: np.float32, 1: np.float16, 30: np.uint16}


def read_tensor(lib: ctypes.CDLL, ptr: int) -> tuple[np.ndarray, tuple[int, ...]]:
    """A graph tensor's values as a contiguous float32 array in numpy order (reversed
    ``ne``, trailing size-1 dims dropped) and its ``ne``; views and permutes are read through
    their strides, since llama.cpp names reshaped and permuted tensors too."""
    head = TensorHead.from_address(ptr)
    kind = ACTIVATION_TYPES.get(head.type)
    if kind is None:
        name = lib.ggml_get_name(ptr).decode("utf-8", "replace")
        raise TypeError(f"graph tensor {name!r} has ggml type {head.type}, not F32/F16/BF16")
    ne = tuple(int(n) for n in head.ne)
    dims = max([i + 1 for i, n in enumerate(ne) if n != 1] or [1])
    shape = tuple(reversed(ne[:dims]))
    nbytes = int(lib.ggml_nbytes(ptr))
    if lib.ggml_is_contiguous(ptr) and kind is np.float32:
        out = np.empty(shape, dtype=np.float32)  # one copy: straight into the result
        lib.ggml_backend_tensor_get(ptr, out.ctypes.data, 0, nbytes)
        return out, ne
    raw = np.empty(nbytes, dtype=np.uint8)  # the byte span the strides reach
    lib.ggml_backend_tensor_get(ptr, raw.ctypes.data, 0, nbytes)
    strides = tuple(reversed([int(b) for b in head.nb[:dims]]))
    values = np.lib.stride_tricks.as_strided(raw.view(kind), shape=shape, strides=strides)
    if kind is np.uint16:
        return (values.astype(np.uint32) << 16).view(np.float32), ne
    return np.ascontiguousarray(values, dtype=np.float32), ne


class Recorder:
    """The eval callback (``bool cb(struct ggml_tensor * t, bool ask, void * user_data)``).

    Asked about each graph node (``ask``), it counts the node's name in ``census`` and says
    yes only to names ``wanted`` matches: every yes ends a sub-graph there (llama.cpp
    computes up to that node, synchronises, and calls back with ``ask`` false), so asking
    for everything would split the graph at every node. An exception cannot cross the C
    frame; the first is kept and raised by the caller after the decode, and the callback
    still answers true so that llama.cpp finishes the graph rather than stopping halfway.
    """

    def __init__(self, wanted: re.Pattern[str] | None) -> None:
        import llama_cpp

        self.lib = _ggml_base()
        self.wanted = wanted
        self.census: dict[str, int] = {}
        self.tensors: dict[str, list[np.ndarray]] = {}
        self.ne: dict[str, list[tuple[int, ...]]] = {}
        self.error: BaseException | None = None
        self.recording = False
        #: the C function pointer; it must outlive the context that calls it
        self.c_callback = llama_cpp.ggml_backend_sched_eval_callback(self.callback)

    def callback(self, ptr: int | None, ask: bool, _user: int | None) -> bool:
        try:
            if not self.recording or not ptr:
                return not ask  # ask: no; after a copy: go on
            name = self.lib.ggml_get_name(ptr).decode("utf-8", "replace")
            if ask:
                if name:
                    self.census[name] = self.census.get(name, 0) + 1
                return bool(name) and self.wanted is not None and bool(self.wanted.match(name))
            values, ne = read_tensor(self.lib, ptr)
            self.tensors.setdefault(name, []).append(values)
            self.ne.setdefault(name, []).append(ne)
        except BaseException as exc:  # re-raised after the decode
            if self.error is None:
                self.error = exc
            return not ask
        return True


def name_pattern(names: list[str]) -> re.Pattern[str]:
    """One regex for engine names, ``{layer}`` standing for a decimal layer index."""
    parts = [re.escape(n).replace(r"\{layer\}", r"\d+") for n in names]
    return re.compile(r"(?:" + "|".join(parts or [r"(?!)"]) + r")\Z")


#: the key the logits travel under beside the captured tensors (no graph name has a space)
LOGITS = "logits (llama_get_logits)"


def spill_arrays(arrays: dict[str, list[np.ndarray]], path: str) -> dict[str, list[Any]]:
    """Write float32 arrays back to back into ``path`` (a file in a folder the parent made,
    on tmpfs where there is one); name → [(element offset, shape), ...].

    A forward's captures run to hundreds of MB (0.5B shape, 128 tokens: 380 MB); pickled
    through the pipe they cost more than the forward itself, while the parent maps this
    file and takes each array as a view.
    """
    index: dict[str, list[Any]] = {}
    offset = 0
    with open(path, "wb") as fh:
        for key, values in arrays.items():
            for value in values:
                flat = np.ascontiguousarray(value, dtype=np.float32)
                flat.tofile(fh)
                index.setdefault(key, []).append((offset, tuple(flat.shape)))
                offset += flat.size
    return index


def activations(
    path: str,
    name: str,
    tokens: list[int],
    n_ctx: int,
    names: list[str] | None,
    threads: int | None = None,
    spill: str | None = None,
) -> dict[str, Any]:
    """One llama.cpp forward of ``tokens`` with the eval callback copying the graph tensors
    whose names match ``names`` (``{layer}`` for a layer index); ``names=None`` installs
    no callback at all (the plain forward, to time the callback against).

    Set up as the ``logits`` op is (F32 KV cache, no flash attention, CPU, same threads),
    with one difference that matters: every token is an output, so the last layer's
    ``inp_out_ids`` row selection keeps every row and its tensors cover all tokens, and
    the batch is one ubatch, so each tensor fires once per forward. Returns a dict:
    ``arch`` (``general.architecture``), ``n_layer``, ``tensors`` (name → float32 arrays in
    evaluation order), ``ne`` (name → their ggml ``ne``), ``census`` (every named graph
    node → how many times it fired), ``decode_seconds`` and ``decode_cpu_seconds`` (the
    decode alone, wall and CPU time of all threads). The arrays, and the logits [T, vocab]
    under ``LOGITS``, come as ``tensors`` in the reply, or, with ``spill`` (a file path),
    are written there and ``spilled`` holds their index (``spill_arrays``).
    """
    import llama_cpp

    from aprlib.forward.token_ids import check_token_ids

    recorder = Recorder(None if names is None else name_pattern(names))
    llama_cpp.llama_backend_init()
    mparams = llama_cpp.llama_model_default_params()
    mparams.n_gpu_layers = 0  # as llama_cpp.Llama's default: the CPU forward
    model = llama_cpp.llama_model_load_from_file(path.encode(), mparams)
    if not model:
        raise ValueError(f"Failed to load model from file: {path}")
    ctx = batch = None
    try:
        vocab = llama_cpp.llama_model_get_vocab(model)
        n_vocab = int(llama_cpp.llama_vocab_n_tokens(vocab))
        check_token_ids(tokens, n_vocab, name)
        buf = ctypes.create_string_buffer(256)
        got = llama_cpp.llama_model_meta_val_str(model, b"general.architecture", buf, 256)
        arch = buf.value.decode("utf-8", "replace") if got >= 0 else ""
        n = len(tokens)
        cparams = llama_cpp.llama_context_default_params()
        cparams.n_ctx = max(n_ctx, n)
        cparams.n_batch = cparams.n_ubatch = max(n, 1)  # one ubatch: one pass of the graph
        cparams.n_threads = THREADS
        cparams.n_threads_batch = threads or os.cpu_count() or THREADS
        cparams.type_k = cparams.type_v = 0  # F32 KV cache, as the logits op
        cparams.flash_attn_type = llama_cpp.LLAMA_FLASH_ATTN_TYPE_DISABLED
        if names is not None:
            cparams.cb_eval = recorder.c_callback
            cparams.cb_eval_user_data = None
        ctx = llama_cpp.llama_init_from_model(model, cparams)
        if not ctx:
            raise RuntimeError(f"llama.cpp could not make a context for {name}")
        batch = llama_cpp.llama_batch_init(n, 0, 1)
        batch.n_tokens = n
        for i, token in enumerate(tokens):
            batch.token[i] = int(token)
            batch.pos[i] = i
            batch.n_seq_id[i] = 1
            batch.seq_id[i][0] = 0
            batch.logits[i] = True  # every row out: no get_rows trims the last layer
        recorder.recording = True
        start, cpu = time.perf_counter(), time.process_time()
        code = llama_cpp.llama_decode(ctx, batch)
        llama_cpp.llama_synchronize(ctx)
        seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
        recorder.recording = False
        if recorder.error is not None:
            raise recorder.error
        if code != 0:
            raise RuntimeError(f"llama_decode returned {code} for {name}")
        # a copy: the reply is sent after the context (which owns these floats) is freed
        logits = np.ctypeslib.as_array(llama_cpp.llama_get_logits(ctx), shape=(n * n_vocab,))
        arrays = {**recorder.tensors, LOGITS: [np.array(logits).reshape(n, n_vocab)]}
        return {
            "arch": arch,
            "n_layer": int(llama_cpp.llama_model_n_layer(model)),
            "spilled": spill_arrays(arrays, spill) if spill else None,
            "tensors": None if spill else arrays,
            "ne": recorder.ne,
            "census": recorder.census,
            "decode_seconds": seconds,
            "decode_cpu_seconds": cpu,  # all threads: what a busy machine inflates least
        }
    finally:
        if batch is not None:
            llama_cpp.llama_batch_free(batch)
        if ctx:
            llama_cpp.llama_free(ctx)
        llama_cpp.llama_model_free(model)


def system_info() -> str:
    """What llama.cpp says of its build and this CPU (``AVX2 = 1 | AMX_INT8 = 0 | ...``)."""
    import llama_cpp

    raw = llama_cpp.llama_print_system_info()
    return (raw.decode("utf-8", "replace") if isinstance(raw, bytes) else str(raw)).strip()


OPS: dict[str, Callable[..., Any]] = {
    "system_info": system_info,
    "logits": logits,
    "activations": activations,
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
