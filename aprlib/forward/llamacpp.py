"""llama.cpp (llama-cpp-python) in a child process, so that its crash is not ours.

A natively built llama.cpp can die of SIGILL on a CPU it was not built for (AMX), abort on
a GGML_ASSERT, or hang; in-process, each took the caller (a pytest worker, ``apr qa``) with
it. Here every evaluation runs in a fresh interpreter, ``python -m aprlib.forward.llamacpp_child``
(started with ``Popen``, never forked from a process that holds torch or threads): one
child per model file (keyed by its resolved path), one for the ggml library calls, each
started on first use, reused for the session and closed at exit. A child that dies or does
not answer within the timeout (``APRLIB_LLAMACPP_TIMEOUT`` seconds, default 300, or the
``timeout`` argument) is killed and becomes a typed ``OracleCrashed`` / ``OracleTimeout``:
the oracle gave no answer, which is no verdict on the model. The next call starts a new
child. An exception raised in the child (llama.cpp refuses the file, a token id out of
range) comes back as itself, so a failed load is never mistaken for a crash.
"""

from __future__ import annotations

import atexit
import collections
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from aprlib.errors import OracleCrashed, OracleTimeout
from aprlib.forward.llamacpp_child import BLOCK, GGML_TYPES, LOGITS
from aprlib.forward.llamacpp_wire import WireTimeout, receive, send

__all__ = [
    "BLOCK",
    "GGML_TYPES",
    "TIMEOUT_ENV",
    "Activations",
    "activations",
    "child_pid",
    "close_all",
    "default_timeout",
    "ggml_dequantize",
    "ggml_quantize",
    "kill",
    "llamacpp_activations",
    "logits",
    "model_quantize",
    "system_info",
    "tokenize",
]

TIMEOUT_ENV = "APRLIB_LLAMACPP_TIMEOUT"
DEFAULT_TIMEOUT = 300.0
STDERR_LINES = 40
#: how long a child that closed its pipe gets to finish dying before it is killed
REAP_SECONDS = 5.0
#: the folder holding ``aprlib/`` (this file is aprlib/forward/llamacpp.py), put on the child's
#: path so that a checkout that is not installed runs its own aprlib
_PACKAGE_ROOT = str(Path(__file__).resolve().parents[2])


def default_timeout() -> float:
    """``APRLIB_LLAMACPP_TIMEOUT`` (seconds) if set, else 300."""
    raw = os.environ.get(TIMEOUT_ENV, "").strip()
    if not raw:
        return DEFAULT_TIMEOUT
    try:
        value = float(raw)
    except ValueError:
        raise ValueError(f"{TIMEOUT_ENV}={raw!r} is not a number of seconds") from None
    if not value > 0:
        raise ValueError(f"{TIMEOUT_ENV}={raw!r} must be more than 0 seconds")
    return value


class _ChildTraceback(Exception):
    """The child's traceback, chained as the cause of the exception it sent back."""


class Child:
    """One llama.cpp child process: started lazily, restarted after it dies.

    ``subject`` is the model file it is for (None: the ggml library), named in its errors.
    """

    def __init__(self, subject: Path | None) -> None:
        self.subject = subject
        self.proc: subprocess.Popen[bytes] | None = None
        self.tail: collections.deque[str] = collections.deque(maxlen=STDERR_LINES)
        self._drain: threading.Thread | None = None
        self._lock = threading.Lock()

    @property
    def pid(self) -> int | None:
        proc = self.proc
        return proc.pid if proc is not None and proc.poll() is None else None

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def _start(self) -> subprocess.Popen[bytes]:
        env = dict(os.environ)  # the caller's PYTHONPATH first (a planted llama_cpp wins)
        env["PYTHONPATH"] = os.pathsep.join(
            p for p in (env.get("PYTHONPATH", ""), _PACKAGE_ROOT) if p
        )
        # on a GGML_ASSERT, ggml forks gdb to attach and print a backtrace where gdb is
        # installed: seen taking past the 300 s timeout on a busy 2-core host, so an abort
        # (a counterexample) became an OracleTimeout (not checked). Its message suffices.
        env.setdefault("GGML_NO_BACKTRACE", "1")
        flags = ["-P"] if sys.version_info >= (3, 11) else []  # not the cwd on sys.path
        proc = subprocess.Popen(
            [sys.executable, *flags, "-m", "aprlib.forward.llamacpp_child"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env,
            bufsize=0,
            close_fds=True,
        )
        assert proc.stdin is not None and proc.stderr is not None
        os.set_blocking(proc.stdin.fileno(), False)
        self.tail = collections.deque(maxlen=STDERR_LINES)
        self._drain = threading.Thread(
            target=_drain, args=(proc.stderr, self.tail), name="llamacpp-stderr", daemon=True
        )
        self._drain.start()
        self.proc = proc
        return proc

    def call(self, op: str, timeout: float | None = None, **kwargs: Any) -> Any:
        """Run ``op`` in the child; its value, or the exception it raised, or a typed
        OracleCrashed / OracleTimeout if the child died or hung (it is then gone)."""
        seconds = default_timeout() if timeout is None else float(timeout)
        with self._lock:
            if self.proc is not None and self.proc.poll() is not None:
                self._stop(self.proc, kill=False)  # died (or was killed) between calls
            proc = self.proc if self.proc is not None else self._start()
            assert proc.stdin is not None and proc.stdout is not None
            deadline = time.monotonic() + seconds
            try:
                send(proc.stdin.fileno(), (op, kwargs), deadline)
                reply = receive(proc.stdout.fileno(), deadline)
            except WireTimeout:
                self._stop(proc, kill=True)
                raise OracleTimeout.after(
                    self.subject, seconds, list(self.tail), proc.pid
                ) from None
            except (EOFError, BrokenPipeError):
                code = self._stop(proc, kill=False)
                raise OracleCrashed.from_returncode(
                    self.subject, code, list(self.tail), proc.pid
                ) from None
            except BaseException:  # Ctrl-C mid-call: a late reply would answer the next call
                self._stop(proc, kill=True)
                raise
        if reply[0] == "ok":
            return reply[1]
        _, exc, child_traceback = reply
        raise exc from _ChildTraceback(child_traceback)

    def _stop(self, proc: subprocess.Popen[bytes], kill: bool) -> int:
        """End the child (kill it, or give it a moment to finish dying), reap it and take
        the last of its stderr; its exit status (negative: the signal)."""
        if kill:
            proc.kill()
        try:
            code = proc.wait(REAP_SECONDS)
        except subprocess.TimeoutExpired:
            proc.kill()
            code = proc.wait()
        if self._drain is not None:
            self._drain.join(1.0)
        for pipe in (proc.stdin, proc.stdout):  # stderr: the drain closes it at its end
            if pipe is not None:
                pipe.close()
        if self.proc is proc:
            self.proc = None
        return code

    def kill(self) -> None:
        """Kill the child now, without waiting for a call in flight (which then raises
        OracleCrashed); the next call starts another."""
        proc = self.proc
        if proc is not None and proc.poll() is None:
            proc.kill()

    def close(self) -> None:
        """End of stdin ends the child; one that does not go in a moment, or that is busy
        with a call in another thread, is killed."""
        if not self._lock.acquire(timeout=0.1):
            self.kill()
            return
        try:
            proc = self.proc
            if proc is None:
                return
            if proc.poll() is None and proc.stdin is not None:
                proc.stdin.close()
            self._stop(proc, kill=False)
        finally:
            self._lock.release()


def _drain(pipe: Any, tail: collections.deque[str]) -> None:
    """Keep the last lines the child wrote to stderr (and never let its pipe fill)."""
    try:
        for line in iter(pipe.readline, b""):
            tail.append(line.decode("utf-8", "replace").rstrip())
    except (OSError, ValueError):  # pragma: no cover - the pipe went away under us
        pass
    finally:
        pipe.close()


_LIBRARY = object()  # the key of the ggml library's child
#: model children kept alive at once: a test session opens many small GGUF files, and an
#: idle child is a process holding llama.cpp's libraries; the least recently used goes
MAX_CHILDREN = 8
_children: collections.OrderedDict[object, Child] = collections.OrderedDict()
_children_lock = threading.Lock()


def _key(path: Path | str | None) -> object:
    """A child's key: the model file's resolved path, or the ggml library's marker."""
    return _LIBRARY if path is None else Path(path).resolve()


def _child(path: Path | str | None) -> Child:
    key = _key(path)
    retired: list[Child] = []
    with _children_lock:
        child = _children.get(key)
        if child is None:
            child = _children[key] = Child(None if path is None else Path(path))
        _children.move_to_end(key)
        models = [k for k in _children if k is not _LIBRARY]
        for old in models[: max(0, len(models) - MAX_CHILDREN)]:
            retired.append(_children.pop(old))
    for old_child in retired:
        old_child.close()
    return child


def child_pid(path: Path | str | None = None) -> int | None:
    """The pid of the running child for ``path`` (None: the library's), or None."""
    key = _key(path)
    child = _children.get(key)
    return child.pid if child is not None else None


def kill(path: Path | str | None = None) -> None:
    """Kill the child for ``path`` (None: the library's); the next call starts another."""
    key = _key(path)
    child = _children.get(key)
    if child is not None:
        child.kill()


@atexit.register
def close_all() -> None:
    """Close every child (at interpreter exit, or whenever a caller wants them gone)."""
    with _children_lock:
        children = list(_children.values())
        _children.clear()
    for child in children:
        child.close()


# --- the calls -----------------------------------------------------------------------------


def logits(
    path: Path | str, tokens: list[int], n_ctx: int | None = None, timeout: float | None = None
) -> np.ndarray:
    """llama.cpp's logits ``[T, vocab]`` (float32, F32 KV cache) at every position."""
    path = Path(path)
    return _child(path).call(
        "logits",
        timeout,
        path=str(path.resolve()),
        name=str(path),
        tokens=[int(t) for t in tokens],
        n_ctx=max(64, len(tokens) + 1) if n_ctx is None else n_ctx,
    )


@dataclass
class Activations:
    """llama.cpp's own graph tensors from one forward (``activations``).

    ``tensors`` maps an engine name (``Kcur-1``) to its float32 arrays in evaluation order
    (``nth`` 1, 2, ...), each in numpy order (``ne`` reversed); ``ne`` holds each one's
    ggml ``ne[4]``. ``census`` counts every named node of the graph (captured or not): what
    llama.cpp computed, for a map to be checked against. ``qkv_bias`` is read from it (None
    for an arch without a built-in map), and ``point_map`` is the built-in map for this run
    (None likewise), in the form ``PointMap.from_dict`` takes.
    """

    arch: str
    n_layer: int
    tokens: list[int]
    tensors: dict[str, list[np.ndarray]]
    ne: dict[str, list[tuple[int, ...]]]
    census: dict[str, int]
    logits: np.ndarray
    decode_seconds: float
    decode_cpu_seconds: float
    qkv_bias: bool | None = None
    point_map: dict[str, Any] | None = None
    deinterleaved: list[str] = field(default_factory=list)


def _rank(layout: str) -> int:
    """How many dimensions a declared layout (``ne[head_dim, heads, tokens]``) has."""
    return layout.count(",") + 1


def _deinterleave(array: np.ndarray, head_dim: int) -> np.ndarray:
    """Undo the GGUF q/k row permutation within each head: llama.cpp's element ``2i + h``
    of a head is our ``h * head_dim/2 + i`` (before RoPE and, since its normal RoPE turns
    the same pairs as NEOX RoPE does on ours, after it)."""
    lead = array.shape[:-1]
    flat = array.reshape(*lead, -1, head_dim // 2, 2)
    return np.ascontiguousarray(flat.swapaxes(-1, -2)).reshape(array.shape)


def _shape_for_map(result: Activations, raw: bool, strict: bool) -> None:
    """Give the built-in map's names the rank their declared layout has, and, unless
    ``raw``, undo llama's pair-interleaved q/k head layout (``llamacpp_points``). A graph
    whose q/k/v the built-in map cannot place is an error when the map's names were asked
    for (``strict``), else the captures stay as llama.cpp holds them, with no map."""
    from aprlib.forward import llamacpp_points as lp

    if result.arch not in lp.ARCHS:
        return
    try:
        result.qkv_bias = lp.qkv_bias_from_census(result.census, result.arch)
    except ValueError:
        if strict:
            raise
        return  # names of the caller's own choosing: returned as llama.cpp holds them
    result.point_map = lp.point_map_data(result.arch, result.qkv_bias)
    ranks: dict[tuple[str, int], int] = {}
    for entry in result.point_map["points"]:
        if "{layer}" not in entry["name"]:
            ranks[(entry["name"], entry.get("nth", 1))] = _rank(entry["layout"])
        for i in range(result.n_layer):
            name = entry["name"].replace("{layer}", str(i))
            ranks[(name, entry.get("nth", 1))] = _rank(entry["layout"])
    interleaved = {
        n.replace("{layer}", str(i))
        for n in lp.interleaved_names(result.arch)
        for i in range(result.n_layer)
    }
    for name, arrays in result.tensors.items():
        nes = result.ne[name]
        head_dim = next((ne[0] for ne in nes if ne[1] > 1 and ne[2] > 1), None)
        for k, (array, ne) in enumerate(zip(arrays, nes, strict=True)):
            rank = ranks.get((name, k + 1))
            if rank is not None and all(n == 1 for n in ne[rank:]):
                array = array.reshape(tuple(reversed(ne[:rank])))
            if name in interleaved and not raw:
                if head_dim is None:
                    raise ValueError(
                        f"{name}: no [head_dim, heads, tokens] tensor to read head_dim"
                    )
                array = _deinterleave(array, head_dim)
            arrays[k] = array
        if name in interleaved and not raw:
            result.deinterleaved.append(name)


def _spill_root() -> str | None:
    """Where the child writes its captures: tmpfs (``/dev/shm``) when there is one, so the
    bytes never touch a disk; else the default temporary folder."""
    shm = "/dev/shm"
    return shm if os.path.isdir(shm) and os.access(shm, os.W_OK) else None


def _unspill(path: str, index: dict[str, list[Any]]) -> dict[str, list[np.ndarray]]:
    """The child's spilled arrays as copy-on-write views of one map of its file (writable,
    no copy until written; the map stays valid after the file is removed)."""
    whole = np.memmap(path, dtype=np.float32, mode="c").view(np.ndarray)  # the logits at least
    out: dict[str, list[np.ndarray]] = {}
    for key, items in index.items():
        out[key] = [
            whole[offset : offset + int(np.prod(shape))].reshape(shape) for offset, shape in items
        ]
    return out


def activations(
    path: Path | str,
    tokens: list[int],
    names: list[str] | None = None,
    n_ctx: int | None = None,
    timeout: float | None = None,
    raw: bool = False,
    plain: bool = False,
    threads: int | None = None,
) -> Activations:
    """llama.cpp's graph tensors named ``names`` during one forward of ``tokens``.

    ``names`` are engine names, ``{layer}`` standing for any layer index; None asks for
    every name a built-in map reads (``llamacpp_points.engine_names``). The copy is made by
    llama.cpp's eval callback in the child process, which stops the graph only at the
    names asked for. For an arch with a built-in map the result carries that map
    (``point_map``, ``qkv_bias`` from the run's census), the map's names are shaped to the
    rank of their declared layout, and llama's pair-interleaved q/k heads are put back in
    our order (``raw=True`` keeps llama.cpp's order; see ``llamacpp_points``). ``plain``
    installs no callback at all (nothing captured, no census): the forward to time the
    callback against. ``threads``: llama.cpp's batch threads (default: one per core).
    """
    from aprlib.forward.llamacpp_points import engine_names

    path = Path(path)
    ids = [int(t) for t in tokens]
    if not ids:
        raise ValueError("llama.cpp activations need at least one token")
    wanted = None if plain else (engine_names() if names is None else list(names))
    folder = tempfile.mkdtemp(prefix="apr-llamacpp-", dir=_spill_root())
    try:
        spill = os.path.join(folder, "activations.f32")
        reply = _child(path).call(
            "activations",
            timeout,
            path=str(path.resolve()),
            name=str(path),
            tokens=ids,
            n_ctx=max(64, len(ids) + 1) if n_ctx is None else n_ctx,
            names=wanted,
            threads=threads,
            spill=spill,
        )
        arrays = _unspill(spill, reply["spilled"])
    finally:
        shutil.rmtree(folder, ignore_errors=True)  # the map outlives the file's name
    logits = arrays.pop(LOGITS)[0]
    result = Activations(
        arch=reply["arch"],
        n_layer=reply["n_layer"],
        tokens=ids,
        tensors=arrays,
        ne=reply["ne"],
        census=reply["census"],
        logits=logits,
        decode_seconds=reply["decode_seconds"],
        decode_cpu_seconds=reply["decode_cpu_seconds"],
    )
    if not plain:
        _shape_for_map(result, raw, strict=names is None)
    return result


def llamacpp_activations(
    path: Path | str,
    tokens: list[int],
    names: list[str] | None = None,
    timeout: float | None = None,
) -> dict[str, list[np.ndarray]]:
    """llama.cpp's graph tensors of one forward, engine name → arrays in evaluation order,
    in the form ``dump.apply_map`` takes with ``llamacpp_points.point_map_for(config)``
    (``activations`` with its defaults: the built-in map's names shaped to their layouts,
    llama's interleaved q/k heads put back in our order).

    The map's ``nth`` rules depend on whether the graph adds q/k/v biases; the run's census
    says whether it did, and a file whose config (as our reader reads it) says otherwise is
    refused here rather than mapped one tensor off.
    """
    run = activations(path, tokens, names, timeout=timeout)
    if run.qkv_bias is not None:
        from aprlib.formats.io import open_model

        with open_model(path) as model:
            config = model.config
        if config is not None and config.qkv_bias != run.qkv_bias:
            raise ValueError(
                f"{path}: llama.cpp's graph {'adds' if run.qkv_bias else 'has no'} q/k/v "
                f"biases but the file's config says {config.qkv_bias}: the built-in map "
                "cannot place its Qcur/Kcur/Vcur tensors"
            )
    return run.tensors


def tokenize(
    path: Path | str,
    texts: list[str],
    add_bos: bool = False,
    special: bool = True,
    timeout: float | None = None,
) -> list[list[int]]:
    """llama.cpp's token ids of each text, by the GGUF's own tokenizer."""
    path = Path(path)
    return _child(path).call(
        "tokenize",
        timeout,
        path=str(path.resolve()),
        texts=list(texts),
        add_bos=add_bos,
        special=special,
    )


def model_quantize(
    src: Path | str,
    dst: Path | str,
    ftype: str = "Q4_K_M",
    nthread: int = 1,
    timeout: float | None = None,
) -> int:
    """``llama_model_quantize`` of ``src`` into ``dst`` (``ftype``: ``LLAMA_FTYPE_MOSTLY_``
    without the prefix); llama.cpp's return code, 0 on success."""
    src = Path(src)
    return _child(src).call(
        "model_quantize",
        timeout,
        src=str(src.resolve()),
        dst=str(Path(dst).resolve()),
        ftype=ftype,
        nthread=nthread,
    )


def ggml_quantize(values: np.ndarray, kind: str, timeout: float | None = None) -> np.ndarray:
    """llama.cpp's own quantiser: float32 [rows, cols] → uint8 [rows, row bytes]."""
    values = np.ascontiguousarray(values, dtype=np.float32)
    return _child(None).call("ggml_quantize", timeout, values=values, kind=kind)


def ggml_dequantize(
    raw: np.ndarray, kind: str, count: int, timeout: float | None = None
) -> np.ndarray:
    """llama.cpp's own dequantiser: ``count`` float32 values from raw blocks."""
    raw = np.ascontiguousarray(raw, dtype=np.uint8)
    return _child(None).call("ggml_dequantize", timeout, raw=raw, kind=kind, count=int(count))


def system_info(timeout: float | None = None) -> str:
    """llama.cpp's build and CPU features as it reports them (``llama_print_system_info``):
    which SIMD paths the oracle that produced a verdict was using."""
    return str(_child(None).call("system_info", timeout))
