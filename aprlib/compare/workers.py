"""Comparing pairs on several threads with the report the same for any number of them."""

from __future__ import annotations

import os
from collections.abc import Callable

from aprlib.compare.report import Pair


def default_workers() -> int:
    """Threads ``diff_models`` uses unless told: the CPUs this process may use, at most 4
    (each holds two 16 MiB read buffers and its pieces; measured only up to 2 here)."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - platforms without affinity
        cpus = os.cpu_count() or 1
    return max(1, min(cpus, 4))


def in_order(work: Callable[[str], Pair], names: list[str], workers: int) -> list[Pair]:
    """``[work(n) for n in names]`` on ``workers`` threads; the first error stops the rest
    (a damaged tensor ends the diff with its own error, not after every other pair)."""
    if workers <= 1 or len(names) < 2:
        return [work(n) for n in names]
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(workers, thread_name_prefix="apr-diff") as pool:
        futures = [pool.submit(work, n) for n in names]
        try:
            return [f.result() for f in futures]
        except BaseException:
            for f in futures:
                f.cancel()
            raise
