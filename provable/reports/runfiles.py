"""Reading what a run left below a folder, as untrusted input.

The readers every command uses for files a run left below a folder it was given
(``pv status``, ``pv dashboard``, ``pv merge``): ``open_below`` walks one safe name at a
time without following a symlink, so an id or a link cannot lead outside that folder, and
``load_json`` parses within bounds of size, nesting and item count.
"""

from __future__ import annotations

import errno
import json
import os
import stat
from collections.abc import Sequence
from pathlib import Path
from typing import Any

#: the bounds of JSON read from a run: an evidence record or a history line is a few kB
MAX_JSON_DEPTH = 64
MAX_JSON_ITEMS = 200_000


class RunFileError(ValueError):
    """A file of a run that is not read: too large, not UTF-8, not JSON, nested too deep
    (one line why, naming the path where there is one)."""


class RefusedPath(RunFileError):
    """A path that is never followed: a symlink (``link``), a name that is no single safe
    component, something that is not a regular file or folder where one is expected."""

    def __init__(self, message: str, link: bool = False) -> None:
        super().__init__(message)
        self.link = link


def _refusal(fd: int, name: str, where: Path, exc: OSError) -> RunFileError:
    try:
        info = os.stat(name, dir_fd=fd, follow_symlinks=False)
    except OSError:
        return RunFileError(f"{where}: cannot read: {exc.strerror or exc}")
    if stat.S_ISLNK(info.st_mode):
        return RefusedPath(f"{where}: is a symbolic link", link=True)
    return RefusedPath(f"{where}: {exc.strerror or exc}")


def _one_name(name: str) -> bool:
    """One component that stays in its folder: no separator, no NUL, not ``.`` or ``..``
    (the ids it is built from are checked by ``paths.is_safe_name`` first)."""
    return (
        bool(name)
        and name not in (".", "..")
        and not any(c in name for c in "/\\\0")
        and len(name.encode("utf-8", "surrogatepass")) <= 255
    )


def open_below(root: Path, names: Sequence[str], folder: bool = False) -> int | None:
    """A descriptor of ``root/names[0]/.../names[-1]`` (the caller closes it), or None when
    some component does not exist.

    ``root`` is the folder the caller was given (it may itself be a link); below it, each
    name must be one component (no separator, not ``..``) and is opened relative to its
    parent without following a symlink, so nothing outside ``root`` can be reached. The last
    one must be a regular file (a folder with ``folder``). Raises ``RefusedPath``.
    """
    where = Path(root)
    try:
        fd = os.open(
            root, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) | getattr(os, "O_CLOEXEC", 0)
        )
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise RefusedPath(f"{where}: {exc.strerror or exc}") from None
    try:
        for i, name in enumerate(names):
            where = where / name
            if not _one_name(name):
                raise RefusedPath(f"{where}: {name!r} is not one file name")
            last = i == len(names) - 1
            want_dir = folder or not last
            flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
            flags |= getattr(os, "O_DIRECTORY", 0) if want_dir else getattr(os, "O_NONBLOCK", 0)
            try:
                child = os.open(name, flags, dir_fd=fd)
            except FileNotFoundError:
                return None
            except OSError as exc:
                if exc.errno == errno.ENOENT:
                    return None
                raise _refusal(fd, name, where, exc) from None
            os.close(fd)
            fd = child
            mode = os.fstat(fd).st_mode
            if want_dir and not stat.S_ISDIR(mode):
                raise RefusedPath(f"{where}: not a folder")
            if not want_dir and not stat.S_ISREG(mode):
                raise RefusedPath(f"{where}: not a regular file (a FIFO, socket or device?)")
        result, fd = fd, -1
        return result
    finally:
        if fd >= 0:
            os.close(fd)


def read_below(root: Path, names: Sequence[str], max_bytes: int) -> bytes | None:
    """The bytes of a file below ``root`` (``open_below``), None when it does not exist;
    ``RunFileError`` when it holds more than ``max_bytes``."""
    fd = open_below(root, names)
    if fd is None:
        return None
    with open(fd, "rb") as fh:
        data = fh.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise RunFileError(
            f"over {max_bytes >> 20} MiB" if max_bytes >= 2**20 else f"over {max_bytes} bytes"
        )
    return data


def read_tail(root: Path, names: Sequence[str], max_bytes: int) -> tuple[bytes, int]:
    """(the last ``max_bytes`` of a file below ``root``, the offset they start at); empty
    when it does not exist. Raises ``RefusedPath`` as ``open_below`` does."""
    fd = open_below(root, names)
    if fd is None:
        return b"", 0
    with open(fd, "rb") as fh:
        start = max(0, os.fstat(fh.fileno()).st_size - max_bytes)
        fh.seek(start)
        return fh.read(max_bytes), start


def list_below(root: Path, names: Sequence[str]) -> list[tuple[str, str]] | None:
    """(name, kind) of each entry of a folder below ``root`` (``open_below``), sorted; kind
    is ``file``, ``folder``, ``link`` or ``other``, from the entry itself (never followed).
    None when the folder does not exist."""
    fd = open_below(root, names, folder=True)
    if fd is None:
        return None
    try:
        entries = []
        for name in sorted(os.listdir(fd)):
            try:
                mode = os.stat(name, dir_fd=fd, follow_symlinks=False).st_mode
            except OSError:
                continue  # gone since the listing
            kind = (
                "link"
                if stat.S_ISLNK(mode)
                else "folder"
                if stat.S_ISDIR(mode)
                else "file"
                if stat.S_ISREG(mode)
                else "other"
            )
            entries.append((name, kind))
        return entries
    finally:
        os.close(fd)


def load_json(data: bytes | str) -> Any:
    """JSON within bounds: at most ``MAX_JSON_ITEMS`` values (counted before anything is
    built) and ``MAX_JSON_DEPTH`` levels; raises ``RunFileError`` saying why. NaN and
    Infinity parse: the caller's typed check names the field that holds one."""
    raw = data.encode("utf-8", "surrogatepass") if isinstance(data, str) else data
    items = raw.count(b",") + raw.count(b":") + raw.count(b"[") + raw.count(b"{")
    if items > MAX_JSON_ITEMS:
        raise RunFileError(f"JSON with up to {items:,} values (at most {MAX_JSON_ITEMS:,})")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise RunFileError(f"not UTF-8 (byte {exc.start})") from None
    try:
        value = json.loads(text)
    except RecursionError:
        raise RunFileError(f"nested deeper than {MAX_JSON_DEPTH} levels") from None
    except ValueError as exc:
        raise RunFileError(f"not JSON ({exc})") from None
    if _depth(value) > MAX_JSON_DEPTH:
        raise RunFileError(f"nested deeper than {MAX_JSON_DEPTH} levels")
    return value


def _depth(value: Any) -> int:
    """Nesting depth, iteratively (no recursion on hostile input)."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        node, level = stack.pop()
        children = node.values() if isinstance(node, dict) else node
        if isinstance(node, (dict, list)):
            deepest = max(deepest, level)
            if level <= MAX_JSON_DEPTH:
                stack.extend((c, level + 1) for c in children if isinstance(c, (dict, list)))
    return deepest


def read_json_below(root: Path, names: Sequence[str], max_bytes: int) -> Any:
    """The JSON document at ``root/names...`` (``read_below`` + ``load_json``), or None when
    it does not exist; raises ``RefusedPath`` (a link, an unsafe name) or ``RunFileError``."""
    raw = read_below(root, names, max_bytes)
    return None if raw is None else load_json(raw)


def tail_lines(root: Path, names: Sequence[str], max_bytes: int) -> tuple[list[bytes], bool]:
    """The whole lines of the last ``max_bytes`` of a log below ``root`` (``read_tail``),
    and whether a partial first line was dropped (the file is longer than was read)."""
    data, start = read_tail(root, names, max_bytes)
    lines = data.split(b"\n")
    return (lines[1:] if start else lines), bool(start)


def json_object(line: bytes) -> dict[str, Any] | None:
    """One log line as a JSON object within bounds; None for a blank, unreadable or
    non-object line (a log is read line by line, each one untrusted)."""
    if not line.strip():
        return None
    try:
        item = load_json(line)
    except RunFileError:
        return None
    return item if isinstance(item, dict) else None
