"""Writes that never leave a half-written file: temp file in the same folder, fsync, rename."""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path


def write_atomic(
    path: Path, data: str | bytes, *, exclusive: bool = False, sync_dir: bool = True
) -> None:
    """Replace ``path`` with ``data`` in one rename; readers see the old or the new file.

    With ``exclusive`` the write fails with ``FileExistsError`` instead of replacing. A
    caller writing many files into one folder may pass ``sync_dir=False`` and call
    ``fsync_dir`` once at the end.
    """
    path = Path(path)
    payload = data.encode("utf-8") if isinstance(data, str) else data
    tmp = temp_beside(path, payload)
    try:
        if exclusive:
            os.link(tmp, path)  # atomic create-if-absent
            os.unlink(tmp)
        else:
            os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    if sync_dir:
        fsync_dir(path.parent)


def temp_beside(path: Path, payload: bytes) -> Path:
    """``payload`` durably in a fresh temp file in ``path``'s folder, with the permissions
    ``path`` has (or would get): ready to be renamed onto it. Nothing is left on failure."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(payload)
            fh.flush()
            os.fsync(fh.fileno())
        with contextlib.suppress(OSError):  # the old file's permissions, or the umask's
            os.chmod(tmp, _mode_for(path))
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    return Path(tmp)


def _mode_for(path: Path) -> int:
    """The replaced file's permissions; for a new file what ``open()`` would give it
    (mkstemp makes 0600 whatever the umask)."""
    try:
        return os.stat(path).st_mode & 0o7777
    except OSError:
        mask = os.umask(0)
        os.umask(mask)
        return 0o666 & ~mask


def fsync_dir(folder: Path) -> None:
    """Make renames in ``folder`` durable."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory fds
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(fd)
