"""Where a ``Transformer``'s weights come from: held in memory, or streamed from the file.

The forward asks for weights piece by piece, in the order it uses them: the embedding rows
of its tokens, layer ``i``, the final norm, the output head a block of rows at a time. Held
(``ModuleWeights``), each answer is a view of the module tree. Streamed (``StreamedWeights``),
each is read from the file when asked and decoded into buffers reused from layer to layer,
so a 7B model runs in the memory of one layer. The layer math is written once (``model``);
only this source changes, and both sources hand the forward the same values in the same
blocks, so their logits are bit-identical (same dtype, same threads).

Streaming reads with ``pread`` (``FileSource``), never a memory map: a map of a 15 GB file
counts against ``ulimit -v`` whole, and a file truncated under a map kills the process. A
file that shrinks or is rewritten while it streams raises ``FileChangedError``. While layer
``i`` computes, one thread reads layer ``i + 1``'s bytes (``pread`` and CRC32 release the
GIL), so reading the file and computing overlap.
"""

from __future__ import annotations

import os
import threading
import weakref
import zlib
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import numpy as np
import torch
from torch import Tensor, nn

from aprlib.errors import FileChangedError, ModelMemoryError
from aprlib.formats.dtypes import DType, nbytes, to_float32
from aprlib.formats.filesource import FileSource
from aprlib.formats.modelfile import EMBED, LM_HEAD

if TYPE_CHECKING:
    from aprlib.config.modelconfig import ModelConfig
    from aprlib.formats.modelfile import Model
    from aprlib.formats.modelfile import Tensor as FileTensor

#: the forward's layer module (``model.DecoderLayer``: norms, attention, MLP under HF's
#: names); this module never imports the forward (the forward imports it)
DecoderLayer = nn.Module

#: the output head is multiplied this many float32 bytes of rows at a time, held or streamed
#: (the same blocks on both paths keep their logits bit-identical)
HEAD_BLOCK_BYTES = 64 << 20
#: the name (prefix) of a streamed source's reader thread
READER_THREAD = "apr-stream"
#: what a process holds before any weight: the interpreter, torch, the activations of a
#: short prompt (measured: 0.33-0.45 GB on the 0.5B and 7B shapes)
BASELINE_BYTES = 600 << 20
#: dtypes torch decodes straight from the file's bytes (the rest go through ``to_float32``)
_TORCH_DTYPES = {DType.F32: torch.float32, DType.F16: torch.float16, DType.BF16: torch.bfloat16}

Transform = Callable[[str, Tensor], Tensor]

#: called with each layer index a streamed source reads (a command's progress bar sets it)
layer_progress: list[Callable[[int], None]] = []


def head_block_rows(hidden: int) -> int:
    """Rows of the output head per block: from the shape only, so both sources agree."""
    return max(1, HEAD_BLOCK_BYTES // (hidden * 4))


class ModuleWeights:
    """The weights a ``Transformer`` holds in its module tree (HF names), as views."""

    streamed = False

    def __init__(self, net: Any) -> None:
        """``net``: a ``Transformer`` (its module tree holds the weights)."""
        self.net = net

    @property
    def dtype(self) -> torch.dtype:
        return self.net.model.embed_tokens.weight.dtype

    def embedding(self, tokens: Tensor) -> tuple[Tensor, Tensor]:
        """(weight, indices) to gather the tokens' rows from."""
        return self.net.model.embed_tokens.weight, tokens

    def layer(self, i: int) -> DecoderLayer:
        return cast(nn.Module, self.net.model.layers[i])

    def final_norm(self) -> Tensor:
        return self.net.model.norm.weight

    def head_blocks(self) -> Iterator[Tensor]:
        cfg = self.net.config
        head = self.net.model.embed_tokens.weight if cfg.tie_word_embeddings else None
        head = head if head is not None else self.net.lm_head.weight
        yield from head.split(head_block_rows(cfg.hidden_size))

    def stamp(self) -> object:
        return 0

    def check_holding(self, i: int, stamp: object) -> None:
        """Held weights never change under a layer."""


@dataclass(frozen=True)
class MemoryPlan:
    """What running a model needs, held and streamed (bytes), and the largest layer."""

    held: int  # every weight decoded in the compute dtype
    layer: int  # the largest layer decoded
    layer_raw: int  # its bytes as stored
    largest_layer: int  # which layer that is
    layers: int

    @property
    def streamed(self) -> int:
        """Peak of a streamed forward: a decoded layer, two raw layers (one prefetched),
        two head blocks, the process itself."""
        return self.layer + 2 * self.layer_raw + 2 * HEAD_BLOCK_BYTES + BASELINE_BYTES


def memory_plan(model: Model, dtype: torch.dtype = torch.float32) -> MemoryPlan:
    """The memory a forward over ``model`` needs, from its tensor index alone."""
    size = dtype.itemsize
    held = sum(int(np.prod(t.shape, dtype=np.int64)) for t in model.tensors.values()) * size
    decoded: dict[int, int] = {}
    raw: dict[int, int] = {}
    for name, t in model.tensors.items():
        i = layer_of(name)
        if i is not None:
            decoded[i] = decoded.get(i, 0) + int(np.prod(t.shape, dtype=np.int64)) * size
            raw[i] = raw.get(i, 0) + t.nbytes
    largest = max(decoded, key=lambda k: decoded[k]) if decoded else 0
    return MemoryPlan(
        held, decoded.get(largest, 0), max(raw.values(), default=0), largest, len(decoded)
    )


def layer_of(name: str) -> int | None:
    """``model.layers.7.mlp.up_proj.weight`` → 7; None for tensors outside the layers."""
    if not name.startswith("model.layers."):
        return None
    head, _, _ = name[len("model.layers.") :].partition(".")
    return int(head) if head.isdigit() else None


def available_bytes() -> int:
    """Memory this process could take without swapping (``MemAvailable``), capped by what
    ``ulimit -v`` leaves beyond the address space already mapped (torch alone maps GBs)."""
    import resource

    avail = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES")
    mapped = 0
    try:
        with open("/proc/meminfo", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    avail = int(line.split()[1]) * 1024
                    break
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("VmSize:"):
                    mapped = int(line.split()[1]) * 1024
                    break
    except OSError:
        pass
    soft, _ = resource.getrlimit(resource.RLIMIT_AS)
    return avail if soft == resource.RLIM_INFINITY else min(avail, max(soft - mapped, 0))


def peak_rss_bytes() -> int:
    """The most resident memory this process image has held: ``VmHWM``, not ``ru_maxrss``,
    which survives ``exec`` and would report a large parent's peak as a child's."""
    import re
    import resource

    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            found = re.search(r"VmHWM:\s+(\d+) kB", fh.read())
        if found:
            return int(found.group(1)) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def should_stream(held_bytes: int, available: int, force: bool | None) -> bool:
    """Stream when told to, else when holding every weight would take more than half the
    memory available (the rest is the page cache, the activations and everything else)."""
    if force is not None:
        return force
    return held_bytes > available // 2


def gb(n: int) -> str:
    return f"{n / 1e9:.1f} GB"


@dataclass(frozen=True)
class StreamChoice:
    """Whether a command streams its models' weights, and what it says before it starts."""

    stream: bool
    layers: int
    held: int  # bytes every weight would take decoded
    peak: int  # estimated peak when streamed
    available: int

    @property
    def message(self) -> str:
        return (
            f"streaming {self.layers} layers; peak ≈ {gb(self.peak)} "
            f"(held: {gb(self.held)}; {gb(self.available)} available)"
        )


def choose_streaming(
    paths: list[Path],
    dtype: torch.dtype = torch.float32,
    force: bool | None = None,
    available: int | None = None,
) -> StreamChoice:
    """Stream or hold the weights of the models at ``paths`` (run together, as bisect
    does); refuses, naming the layer, a model whose one layer does not fit streamed."""
    from aprlib.formats.io import open_model

    plans = []
    for path in paths:
        with open_model(path) as model:
            plans.append((Path(path), memory_plan(model, dtype)))
    avail = available_bytes() if available is None else available
    held = sum(plan.held for _, plan in plans)
    stream = should_stream(held, avail, force)
    peak = sum(plan.streamed - BASELINE_BYTES for _, plan in plans) + BASELINE_BYTES
    if stream and peak > avail:
        path, plan = max(plans, key=lambda pp: pp[1].layer)
        raise ModelMemoryError(
            path,
            f"layer {plan.largest_layer} needs {gb(plan.layer)} decoded; streamed, the run "
            f"needs ≈ {gb(peak)} and {gb(avail)} is available",
        )
    layers = max((plan.layers for _, plan in plans), default=0)
    return StreamChoice(stream, layers, held, peak, avail)


class StreamedWeights:
    """A model file's weights, read a layer at a time into buffers reused across layers.

    One layer is held at a time: asking for layer ``j`` overwrites layer ``i``'s buffers.
    Several forwards may share one source only in lockstep (bisect), each done with layer
    ``i`` before any asks for ``i + 1``. Every load is counted (``stamp``): a forward
    checks at the end of a layer that no load happened since it took the layer, so no
    other use, not even j then i again, can compute on overwritten weights.
    """

    streamed = True

    def __init__(
        self,
        model: Model,
        make_layer: Callable[[ModelConfig, int], DecoderLayer],
        dtype: torch.dtype = torch.float32,
        device: torch.device | str = "cpu",
        on_layer: Callable[[int], None] | None = None,
    ) -> None:
        """``make_layer``: the forward's layer module for a config's layer i
        (``model.DecoderLayer``), built once per kind of layer (a mixture's sparse and dense
        layers differ) on the meta device and filled from the file layer after layer."""
        cfg = model.config
        assert cfg is not None
        self.model, self.config, self.dtype, self.device = model, cfg, dtype, torch.device(device)
        self.on_layer = on_layer  # called as each new layer is read (progress)
        self._layers: list[dict[str, FileTensor]] = [{} for _ in range(cfg.num_hidden_layers)]
        for name, t in model.tensors.items():
            i = layer_of(name)
            if i is not None:
                self._layers[i][name.split(".", 3)[3]] = t
        self.make_layer = make_layer
        self._modules: dict[bool, DecoderLayer] = {}
        self._held: int | None = None
        self.loads = 0  # layers read into the buffers so far (the stamp forwards check)
        # every file the weights lie in, open now: a rewrite from here on is seen
        self._files: dict[Path, FileSource] = {}
        self._stat: dict[Path, tuple[int, int]] = {}
        for t in model.tensors.values():
            if t.span is not None:
                self._source(t)
        raw_size = max((sum(t.nbytes for t in ts.values()) for ts in self._layers), default=0)
        self._raw = [np.empty(raw_size, np.uint8), np.empty(raw_size, np.uint8)]
        self._pending: tuple[int, Future[None]] | None = None
        self._reader = ThreadPoolExecutor(1, thread_name_prefix=READER_THREAD)
        self._head_buffer: tuple[np.ndarray, Tensor] | None = None
        self._verified: set[str] = set()  # checksummed tensors whose CRC32 held once
        #: CRC32 of each tensor's stored bytes as they stream past, when a caller asks
        #: (bisect compares two files this way without a pass of its own); None: not kept
        self.digests: dict[str, int] | None = None
        # files and the reader thread go with the last net that shares this source
        weakref.finalize(self, _release, self._reader, list(self._files.values()))

    # -- the pieces the forward asks for ----------------------------------------------------

    def embedding(self, tokens: Tensor) -> tuple[Tensor, Tensor]:
        """Only the rows of the tokens given, and the tokens re-indexed into them."""
        rows, index = torch.unique(tokens, return_inverse=True)
        t = self.model.tensors[EMBED]
        wanted = [int(r) for r in rows]
        if wanted and (wanted[0] < 0 or wanted[-1] >= t.shape[0]):
            bad = wanted[0] if wanted[0] < 0 else wanted[-1]
            raise IndexError(f"token id {bad} is out of range for {t.shape[0]} embedding rows")
        values = self._rows(t, wanted)
        return values.to(device=self.device, dtype=self.dtype), index.to(self.device)

    def _module(self, i: int) -> DecoderLayer:
        """The buffers layer ``i`` is read into: one module per kind of layer, made at its
        first use with the shapes of that layer (every layer of a kind has them:
        ``check_weights_match`` held the file to its config)."""
        kind = self.config.layer_moe(i)
        if kind not in self._modules:
            module = self.make_layer(self.config, i)
            state = {
                k: torch.empty(t.shape, dtype=self.dtype, device=self.device)
                for k, t in self._layers[i].items()
            }
            module.load_state_dict(state, strict=True, assign=True)
            self._modules[kind] = module
        return self._modules[kind]

    def layer(self, i: int) -> DecoderLayer:
        if self._held == i:
            return self._module(i)
        self._held = None  # until every buffer holds layer i
        self.loads += 1
        raw = self._take(i)
        if i + 1 < len(self._layers):
            self._start(i + 1)
        with torch.no_grad():
            params = dict(self._module(i).named_parameters())
            offset = 0
            for key, t in self._layers[i].items():
                target = params[key]
                if raw is None or t.span is None:
                    if self.digests is not None:
                        self.digests[t.name] = zlib.crc32(t.raw().data)
                    target.copy_(torch.from_numpy(t.to_float32()))
                else:
                    _decode(raw[offset : offset + t.nbytes], t.dtype, t.shape, target)
                    offset += t.nbytes
        self._held = i
        for report in ([self.on_layer] if self.on_layer else []) + layer_progress:
            report(i)
        return self._module(i)

    def final_norm(self) -> Tensor:
        t = self.model.tensors["model.norm.weight"]
        if self.digests is not None:
            self.digests[t.name] = zlib.crc32(t.raw().data)
        return torch.from_numpy(t.to_float32().copy()).to(device=self.device, dtype=self.dtype)

    def head_blocks(self) -> Iterator[Tensor]:
        """The head in row blocks, each read into one buffer reused (consume before next);
        a CRC32 the format stores for the head is checked over the blocks, before the last
        block's logits are returned."""
        cfg = self.config
        t = self.model.tensors[EMBED if cfg.tie_word_embeddings else LM_HEAD]
        step = min(head_block_rows(cfg.hidden_size), t.shape[0])
        if t.span is None:  # an in-memory model: decoded whole, then cut
            whole = torch.from_numpy(np.ascontiguousarray(t.to_float32()))
            yield from whole.to(device=self.device, dtype=self.dtype).split(step)
            return
        crc = 0
        for start in range(0, t.shape[0], step):
            block, raw = self._block(t, start, min(start + step, t.shape[0]), step)
            if t.checksummed or self.digests is not None:
                crc = zlib.crc32(raw.data, crc)
            if t.checksummed and start + step >= t.shape[0]:
                t.check_crc(crc)  # before the last block is used: corrupt bytes never return
            yield block
        if self.digests is not None:
            self.digests[t.name] = crc

    def stamp(self) -> object:
        """What ``check_holding`` compares: the loads so far."""
        return self.loads

    def check_holding(self, i: int, stamp: object) -> None:
        if self._held != i or self.loads != stamp:
            raise RuntimeError(
                f"layer {i}'s streamed weights were replaced while it ran: forwards that "
                "share a StreamedWeights must step in lockstep"
            )

    def derive(self, transform: Transform) -> DerivedWeights:
        return DerivedWeights(self, transform)

    def names(self) -> list[str]:
        """Every weight's name, as a held net's ``state_dict`` has them (a tied head is not
        one of them)."""
        tied = self.config.tie_word_embeddings
        return [k for k in self.model.tensors if not (tied and k == LM_HEAD)]

    def tensor(self, name: str) -> Tensor:
        """One whole weight, decoded into this source's dtype (for comparisons)."""
        values = torch.from_numpy(np.ascontiguousarray(self.model.tensors[name].to_float32()))
        return values.to(dtype=self.dtype)

    def close(self) -> None:
        _release(self._reader, list(self._files.values()))

    # -- reading ----------------------------------------------------------------------------

    def _source(self, t: FileTensor) -> FileSource:
        assert t.span is not None
        path = t.span[0]
        src = self._files.get(path)
        if src is None:
            src = self._files[path] = FileSource(path, expect=t.span_file)
            st = os.fstat(src.fd)
            self._stat[path] = (st.st_size, st.st_mtime_ns)
        return src

    def _check_unchanged(self) -> None:
        """A file rewritten in place (same inode) while it streams: its bytes are not the
        model any more. Shrinking is caught by the short read itself."""
        for path, src in list(self._files.items()):
            st = os.fstat(src.fd)
            if (st.st_size, st.st_mtime_ns) != self._stat[path]:
                raise FileChangedError(path, "file changed while its layers were streamed")

    def _read_layer(self, i: int, out: np.ndarray) -> None:
        """Layer ``i``'s stored bytes, tensor after tensor, into ``out`` (runs in the reader
        thread for the next layer); a CRC the format stores is checked here."""
        offset = 0
        for t in self._layers[i].values():
            if t.span is None:  # decoded in ``layer`` from ``to_float32``
                continue
            view = out[offset : offset + t.nbytes]
            self._files[t.span[0]].read_into(view.data, t.span[1], tensor=t.name)
            crc = zlib.crc32(view.data) if t.checksummed or self.digests is not None else 0
            if t.checksummed:
                t.check_crc(crc)
            if self.digests is not None:
                self.digests[t.name] = crc
            offset += t.nbytes

    def _start(self, i: int) -> None:
        buffer = self._raw[i % 2]
        self._pending = (i, self._reader.submit(self._read_layer, i, buffer))

    def _take(self, i: int) -> np.ndarray | None:
        """Layer ``i``'s raw bytes: the prefetched ones, or read now."""
        pending, self._pending = self._pending, None
        if pending is not None:
            j, future = pending
            if j == i:
                future.result()  # a failed read raises here
                self._check_unchanged()
                return self._raw[i % 2]
            future.exception()  # another layer's read: waited out, its failure not ours
        if not self._raw[0].size:
            return None
        self._read_layer(i, self._raw[i % 2])
        self._check_unchanged()
        return self._raw[i % 2]

    def _rows(self, t: FileTensor, rows: list[int]) -> Tensor:
        """Rows of a 2-D tensor as float32, each read by itself (whole blocks for quants);
        a tensor with a stored CRC32 has it checked once, streamed in chunks."""
        cols = t.shape[1]
        if t.span is None:
            values = t.to_float32()[rows]
            return torch.from_numpy(np.ascontiguousarray(values))
        src = self._files[t.span[0]]
        if t.checksummed and t.name not in self._verified:
            crc = 0
            for chunk in src.chunks(t.span[1], t.nbytes, t.name):
                crc = zlib.crc32(chunk, crc)
            t.check_crc(crc)
            self._verified.add(t.name)
        row_bytes = nbytes(t.dtype, (1, cols))
        out = np.empty((len(rows), cols), np.float32)
        for k, r in enumerate(rows):
            raw = src.read(t.span[1] + r * row_bytes, row_bytes, tensor=t.name)
            out[k] = to_float32(raw, t.dtype, (1, cols))[0]
        self._check_unchanged()
        return torch.from_numpy(out)

    def _block(self, t: FileTensor, start: int, stop: int, step: int) -> tuple[Tensor, np.ndarray]:
        """Rows ``[start, stop)`` decoded into the reused block buffer, and their bytes."""
        assert t.span is not None
        cols = t.shape[1]
        row_bytes = nbytes(t.dtype, (1, cols))
        if self._head_buffer is None:
            raw = np.empty(step * row_bytes, np.uint8)
            dest = torch.empty((step, cols), dtype=self.dtype, device=self.device)
            self._head_buffer = (raw, dest)
        raw, dest = self._head_buffer
        n = stop - start
        view = raw[: n * row_bytes]
        self._files[t.span[0]].read_into(view.data, t.span[1] + start * row_bytes, tensor=t.name)
        self._check_unchanged()
        block = dest[:n]
        _decode(view, t.dtype, (n, cols), block)
        return block, view


def _release(reader: ThreadPoolExecutor, files: list[FileSource]) -> None:
    """Stop the reader and close the files. The last reference may be dropped on the reader
    thread itself (a prefetch holding the source when its net is collected): it cannot
    join itself, and it is running the last task, so it only asks the pool to stop."""
    on_reader = threading.current_thread().name.startswith(READER_THREAD)
    reader.shutdown(wait=not on_reader)
    for src in files:
        src.close()


def _decode(raw: np.ndarray, dtype: DType, shape: tuple[int, ...], target: Tensor) -> None:
    """Stored bytes into ``target`` (its dtype): torch casts float32/16 and bfloat16 straight
    from the bytes, exactly as ``to_float32`` then a cast would; quants go through it."""
    kind = _TORCH_DTYPES.get(dtype)
    stored = (
        torch.from_numpy(raw).view(kind).view(shape)
        if kind is not None
        else torch.from_numpy(to_float32(raw, dtype, shape))
    )
    target.copy_(stored)


class DerivedWeights:
    """A streamed source seen through a transform (another dtype, rounding as a conversion
    stores the weights): each piece is the base's piece, transformed as it is asked for.

    A transform may return the base's own tensor (a cast to the same dtype, a norm kept as
    it is), so the derived layer can share the base's buffers: its stamp is its own loads
    and the base's, and a load of either ends the layer for a forward mid-way."""

    streamed = True

    def __init__(self, base: StreamedWeights, transform: Transform) -> None:
        self.base, self.transform = base, transform
        self.config = base.config
        self._modules: dict[bool, DecoderLayer] = {}  # one per kind of layer, as the base
        self._held: int | None = None
        self._base_loads = -1
        self.loads = 0
        self.dtype = transform(EMBED, torch.zeros(1, 1, dtype=base.dtype)).dtype

    def embedding(self, tokens: Tensor) -> tuple[Tensor, Tensor]:
        rows, index = self.base.embedding(tokens)
        return self.transform(EMBED, rows), index

    def layer(self, i: int) -> DecoderLayer:
        source = self.base.layer(i)  # the base may have moved on: ask it every time
        if self._held != i or self._base_loads != self.base.loads:
            prefix = f"model.layers.{i}."
            state = {k: self.transform(prefix + k, v) for k, v in source.state_dict().items()}
            kind = self.config.layer_moe(i)
            if kind not in self._modules:
                self._modules[kind] = self.base.make_layer(self.config, i)
            self._modules[kind].load_state_dict(state, strict=True, assign=True)
            self._held, self._base_loads = i, self.base.loads
            self.loads += 1
        return self._modules[self.config.layer_moe(i)]

    def final_norm(self) -> Tensor:
        return self.transform("model.norm.weight", self.base.final_norm())

    def head_blocks(self) -> Iterator[Tensor]:
        name = EMBED if self.config.tie_word_embeddings else LM_HEAD
        for block in self.base.head_blocks():
            yield self.transform(name, block)

    def stamp(self) -> object:
        return (self.loads, self.base.loads)

    def check_holding(self, i: int, stamp: object) -> None:
        if self._held != i or self.stamp() != stamp:
            raise RuntimeError(
                f"layer {i}'s derived weights were replaced while it ran: forwards that "
                "share a streamed source must step in lockstep"
            )

    def derive(self, transform: Transform) -> DerivedWeights:
        return DerivedWeights(self.base, lambda k, v: transform(k, self.transform(k, v)))

    def names(self) -> list[str]:
        return self.base.names()

    def tensor(self, name: str) -> Tensor:
        return self.transform(name, self.base.tensor(name))
