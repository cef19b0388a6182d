"""The one way a writer puts a file in place: a temp beside it, renamed on success.

A temp is named ``.NAME.apr-tmp-<pid>-<n>``: a writer killed by SIGKILL cannot remove its
own, so the next writer of the same destination removes every temp whose pid is no longer
alive (and ``remove_dead_temps`` does it on demand). A live writer's temp is never touched.
Destination problems (missing folder, a folder in the way, read-only or full disk) become
one ``ConversionError`` naming the destination; the temp is removed either way.
"""

from __future__ import annotations

import contextlib
import itertools
import os
from collections.abc import Iterator
from pathlib import Path

from aprlib.errors import ConversionError

TEMP_MARK = ".apr-tmp-"
_sequence = itertools.count()


def temp_glob(dst: Path) -> str:
    """The glob pattern of every temp that a writer of ``dst`` may have left."""
    name = "".join(f"[{c}]" if c in "*?[" else c for c in dst.name)
    return f".{name}{TEMP_MARK}*"


def _owner_pid(temp: Path) -> int | None:
    tail = temp.name.rsplit(TEMP_MARK, 1)[-1]
    pid = tail.split("-", 1)[0]
    return int(pid) if pid.isdigit() else None


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's live process
    return True


def remove_dead_temps(dst: Path | str) -> list[Path]:
    """Remove the temps of ``dst`` whose writer is dead; returns what was removed."""
    dst = Path(dst)
    removed = []
    with contextlib.suppress(OSError):
        for temp in dst.parent.glob(temp_glob(dst)):
            pid = _owner_pid(temp)
            if pid is None or pid_alive(pid):
                continue
            with contextlib.suppress(FileNotFoundError):
                temp.unlink()
                removed.append(temp)
    return removed


def check_destination(dst: Path) -> None:
    """A typed error, before any work, for a destination that cannot become a file."""
    if dst.is_dir():
        raise ConversionError(f"{dst}: is a directory; give a file name to write")
    if not dst.parent.is_dir():
        raise ConversionError(f"{dst}: the folder {dst.parent} does not exist")


def _fsync_dir(folder: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


@contextlib.contextmanager
def atomic_output(dst: Path | str, durable: bool = True) -> Iterator[Path]:
    """Yield a fresh temp path beside ``dst``; on success it is synced and renamed onto
    ``dst``, on any failure (or interrupt) it is removed and ``dst`` is untouched.

    ``durable=False`` skips the fsyncs: still whole or absent for every reader, but a power
    loss may leave an empty file (for scratch a program writes again, like a dump)."""
    dst = Path(dst)
    check_destination(dst)
    remove_dead_temps(dst)
    tmp = dst.parent / f".{dst.name}{TEMP_MARK}{os.getpid()}-{next(_sequence)}"
    try:
        try:
            os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
        except OSError as exc:
            raise ConversionError(f"{dst}: cannot write there: {exc.strerror}") from None
        try:
            yield tmp
            if durable:
                with open(tmp, "rb") as fh:
                    os.fsync(fh.fileno())
            os.chmod(tmp, 0o644)
            os.replace(tmp, dst)
        except OSError as exc:
            reason = exc.strerror or str(exc)
            raise ConversionError(f"{dst}: writing failed: {reason}") from None
        if durable:
            _fsync_dir(dst.parent)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
