"""Apply a session's file changes as one unit, as far as a filesystem allows.

Every new file is first written to a temp file beside its target and fsynced; then a
journal (``.provable-journal.json`` beside the contracts, git-ignored) names every
temp → target rename; then the renames run (evidence first, contracts last) and the
journal goes. A process killed before the journal exists leaves only temps, which the next
holder of the lock deletes; one killed after it leaves a journal, which the next reader
rolls forward. Either way no reader after recovery sees a contract whose evidence
disagrees with it.

All of this runs under the lock file beside the contracts (``.provable.lock``), so two
runs on one folder serialise whatever their ``TMPDIR``.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

from provable.contracts.atomic import fsync_dir, temp_beside

LOCK_NAME = ".provable.lock"
JOURNAL_NAME = ".provable-journal.json"
#: ``atomic.temp_beside``'s names, ``.<name>.<8 random characters>.tmp``
_OUR_TEMP = re.compile(r"^\..+\.[a-z0-9_]{8}\.tmp\Z")
LOCK_TIMEOUT_S = 120.0


def lock_for(folder: Path, timeout: float = LOCK_TIMEOUT_S) -> Any:
    """The lock every process that rewrites the contracts below ``folder`` takes.

    It lives beside the contracts, so every run on that folder meets it whatever its temp
    folder; the OS drops it when its holder dies.
    """
    from filelock import FileLock

    return FileLock(str(Path(folder) / LOCK_NAME), timeout=timeout)


class OutsideRoot(OSError):
    """A path that would write outside the contracts or evidence folder (an id or a
    symlink from an untrusted contract): nothing of the session is written."""


def _temp_beside(target: Path, data: bytes) -> Path:
    target.parent.mkdir(parents=True, exist_ok=True)  # a new contract's evidence folder
    return temp_beside(target, data)


def commit_files(
    folder: Path, evidence: Sequence[tuple[Path, str]], contracts: Sequence[tuple[Path, str]]
) -> None:
    """Write every file of a session as one unit. The caller holds ``lock_for(folder)``.

    Evidence is renamed before contracts, so a contract never names evidence that is not
    there yet; the journal makes the whole set roll forward after a crash.
    """
    writes = [*evidence, *contracts]
    if not writes:
        return
    from provable.contracts.paths import inside, project_root

    allowed = {"evidence": project_root(folder) / "evidence", "contract": Path(folder)}
    for kind, items in (("evidence", evidence), ("contract", contracts)):
        for target, _ in items:
            if not inside(Path(target).parent, allowed[kind]) or Path(target).is_symlink():
                raise OutsideRoot(f"refused to write {target}: not a file below {allowed[kind]}")
    temps: list[tuple[Path, Path]] = []
    try:
        for target, text in writes:
            temps.append((_temp_beside(Path(target), text.encode("utf-8")), Path(target)))
    except BaseException:
        for temp, _ in temps:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(temp)
        raise
    for parent in {t.parent for t, _ in temps}:
        fsync_dir(parent)
    journal = Path(folder) / JOURNAL_NAME
    body = json.dumps({"renames": [[str(t), str(p)] for t, p in temps]})
    journal_temp = _temp_beside(journal, body.encode("utf-8"))
    os.replace(journal_temp, journal)
    fsync_dir(journal.parent)
    _roll_forward(temps)
    journal.unlink()
    fsync_dir(journal.parent)


def _roll_forward(renames: Iterable[tuple[Path, Path]]) -> None:
    parents = set()
    for temp, target in renames:
        if temp.exists():
            os.replace(temp, target)
        parents.add(target.parent)
    for parent in parents:
        fsync_dir(parent)


def recover(folder: Path, evidence_root: Path | None = None, locked: bool = False) -> list[str]:
    """Finish what a killed writer started; delete temps of dead runs.

    Takes the lock unless the caller holds it (``locked``). Returns one line per action (for
    a log). A folder nobody writes is left alone: nothing happens without a journal or a
    stale temp, and the lock is taken only then.
    """
    folder = Path(folder)
    journal = folder / JOURNAL_NAME
    if not journal.exists() and not any(_stale_temps(folder, evidence_root)):
        return []
    if locked:
        return _recover_locked(folder, evidence_root)
    actions: list[str] = []
    try:
        with lock_for(folder, timeout=LOCK_TIMEOUT_S):
            actions.extend(_recover_locked(folder, evidence_root))
    except OSError:  # a read-only checkout: report what is there, change nothing
        return []
    return actions


def _recover_locked(folder: Path, evidence_root: Path | None) -> list[str]:
    actions: list[str] = []
    journal = folder / JOURNAL_NAME
    if journal.exists():
        try:
            renames = [
                (Path(t), Path(p)) for t, p in json.loads(journal.read_text("utf-8"))["renames"]
            ]
        except (OSError, ValueError, KeyError, TypeError):
            renames = []  # a torn journal: its temps are not all there, drop them all
        refused = [(t, p) for t, p in renames if not _ours(t, p, folder, evidence_root)]
        if refused:  # a journal we did not write (committed, planted): touch nothing it names
            actions.append(f"ignored a journal naming {len(refused)} files outside our folders")
            renames = []
        _roll_forward(renames)
        journal.unlink()
        fsync_dir(folder)
        actions.append(f"finished an interrupted write of {len(renames)} files")
    for temp in list(_stale_temps(folder, evidence_root)):
        with contextlib.suppress(FileNotFoundError):
            temp.unlink()
        actions.append(f"removed stale temp {temp.name}")
    return actions


def _ours(temp: Path, target: Path, folder: Path, evidence_root: Path | None) -> bool:
    """A rename this module could have journaled: our temp name, beside its target, both
    below the contracts or the evidence folder, the target no symlink."""
    from provable.contracts.paths import inside

    roots = [r for r in (folder, evidence_root) if r is not None]
    return (
        bool(_OUR_TEMP.match(temp.name))
        and temp.parent == target.parent
        and not target.is_symlink()
        and any(inside(target.parent, r) for r in roots)
    )


def _stale_temps(folder: Path, evidence_root: Path | None) -> Iterator[Path]:
    """Our temps (``.<name>.<random>.tmp``) below the contracts and evidence folders."""
    for base in (folder, evidence_root):
        if base is None or not base.is_dir():
            continue
        for dirpath, dirnames, filenames in os.walk(base, followlinks=False):
            dirnames[:] = [d for d in dirnames if not d.startswith(".")]
            for name in filenames:
                if _OUR_TEMP.match(name):
                    yield Path(dirpath) / name


def recover_around(folders: Iterable[Path]) -> list[str]:
    """``recover`` every folder named (and its ancestors up to the project root) that holds
    a journal or our lock: what ``pv validate``/``pv status`` run before reading."""
    from provable.contracts.paths import project_root

    actions: list[str] = []
    seen: set[Path] = set()
    for start in folders:
        start = Path(start)
        folder = start if start.is_dir() else start.parent
        root = project_root(folder)
        for candidate in (folder, *folder.parents):
            if candidate in seen:
                break
            seen.add(candidate)
            if (candidate / JOURNAL_NAME).exists() or (candidate / LOCK_NAME).exists():
                actions.extend(recover(candidate, root / "evidence"))
            if candidate == root:
                break
    return actions
