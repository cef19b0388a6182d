"""``apr``: the model-file command line (inspect, convert, diff come with aprlib I/O)."""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from aprlib import __version__


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="apr",
        description="Model-file tools of provable. No subcommands are available yet: "
        "inspect/convert arrive with aprlib I/O, diff after it.",
    )
    parser.add_argument("--version", action="version", version=f"apr {__version__}")
    parser.parse_args(argv)
    parser.print_help()
    return 2
