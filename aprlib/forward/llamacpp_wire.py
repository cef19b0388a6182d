"""The pipe protocol between ``aprlib.forward.llamacpp`` and its llama.cpp child: pickled frames.

A frame is an 8-byte little-endian length and a pickle (protocol 5, so a few MB of logits
cost one copy each way). The parent reads and writes against a deadline with ``select``, so
a child that hangs, even halfway through a frame, can never hang the parent; the child
blocks, since it has nothing else to do.
"""

from __future__ import annotations

import os
import pickle
import select
import struct
import time
from typing import Any

HEADER = struct.Struct("<Q")
CHUNK = 1 << 20


class WireTimeout(Exception):
    """The deadline passed before the frame was through."""


def _wait(fd: int, deadline: float | None, write: bool) -> None:
    if deadline is None:
        return
    left = deadline - time.monotonic()
    if left <= 0:
        raise WireTimeout
    ready = select.select([], [fd], [], left)[1] if write else select.select([fd], [], [], left)[0]
    if not ready:
        raise WireTimeout


def send(fd: int, obj: Any, deadline: float | None = None) -> None:
    """Write one frame; BrokenPipeError if the other side has gone. With a deadline the fd
    must be non-blocking (a full pipe then waits in ``select``, not in ``write``)."""
    payload = pickle.dumps(obj, protocol=5)
    view = memoryview(HEADER.pack(len(payload)) + payload)
    while view:
        _wait(fd, deadline, write=True)
        try:
            view = view[os.write(fd, view[:CHUNK]) :]
        except BlockingIOError:
            continue


def _read_exact(fd: int, size: int, deadline: float | None) -> bytearray:
    buf = bytearray(size)
    view = memoryview(buf)
    got = 0
    while got < size:
        _wait(fd, deadline, write=False)
        n = os.readv(fd, [view[got : got + CHUNK]])
        if n == 0:
            raise EOFError("the other side closed the pipe")
        got += n
    return buf


def receive(fd: int, deadline: float | None = None) -> Any:
    """Read one frame; EOFError if the other side closed the pipe (or died)."""
    (size,) = HEADER.unpack(_read_exact(fd, HEADER.size, deadline))
    return pickle.loads(_read_exact(fd, size, deadline))
