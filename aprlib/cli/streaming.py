"""The forward commands' choice to stream a model's weights, and what a user sees of it.

``--stream-weights`` / ``--no-stream-weights`` force either way; by default a command
streams when holding every weight would take more than half the memory available
(``aprlib.forward.weights.choose_streaming``). A streamed command says what it will hold
before it starts, shows a bar over the layers on a terminal, and reports the peak
resident memory it reached in ``--json``.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from aprlib.forward.weights import StreamChoice

STREAM_HELP = (
    "read the weights a layer at a time (a model larger than memory runs); "
    "default: when holding them would take over half the available memory"
)


def add_stream_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--stream-weights", action=argparse.BooleanOptionalAction, default=None, help=STREAM_HELP
    )


def decide(force: bool | None, paths: list[Path], dtype: str = "float32") -> StreamChoice:
    """Stream or not; a streamed run announces its layers and peak on stderr."""
    import torch

    from aprlib.forward.weights import choose_streaming

    choice = choose_streaming(paths, getattr(torch, dtype), force)
    if choice.stream:
        print(f"apr: {choice.message}", file=sys.stderr, flush=True)
    return choice


@contextlib.contextmanager
def layer_bar(choice: StreamChoice, what: str = "layers") -> Iterator[None]:
    """A progress bar over the layers streamed, on a terminal only (stderr)."""
    if not (choice.stream and sys.stderr.isatty()):
        yield
        return
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

    from aprlib.forward.weights import layer_progress

    bar = Progress(
        "[progress.description]{task.description}",
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=Console(stderr=True),
        transient=True,
    )
    task = bar.add_task(what, total=choice.layers)

    def report(i: int) -> None:
        bar.update(task, completed=max(i + 1, bar.tasks[0].completed))

    layer_progress.append(report)
    try:
        with bar:
            yield
    finally:
        layer_progress.remove(report)


def with_peak(data: dict[str, Any]) -> dict[str, Any]:
    """A command's JSON document with the peak resident memory the process reached."""
    from aprlib.forward.weights import peak_rss_bytes

    return {**data, "peak_rss_bytes": peak_rss_bytes()}
