"""``apr``: inspect and convert model files (safetensors, GGUF, APR).

Errors in the file are one line naming the file, the tensor and the field, and exit 1;
usage errors exit 2. A closed stdout (``apr inspect --json | head``) ends quietly with 0.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from aprlib.cli.finetune_command import register as register_finetune
from aprlib.cli.model_commands import register as register_model_commands
from aprlib.formats import jsonout
from aprlib.version import __version__

EXIT_OK, EXIT_BAD_FILE, EXIT_USAGE = 0, 1, 2
INSPECT_ROWS = 200


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="apr", description="Model-file tools of provable.")
    parser.add_argument("--version", action="version", version=f"apr {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    i = sub.add_parser(
        "inspect",
        help="format, metadata and a table of tensors",
        description="Show a model file's format, config and tensors (dtype, shape, bytes), "
        "dtype totals and checksum status, then every config field the weights contradict "
        "(CONFIG_CONTRADICTS_WEIGHTS, exit 1). The format is read from the magic bytes.",
    )
    i.add_argument("file", type=Path, help="safetensors file or folder, GGUF or APR file")
    i.add_argument("--json", action="store_true", help="one JSON document")
    i.add_argument(
        "--limit",
        type=int,
        default=INSPECT_ROWS,
        help=f"table rows ({INSPECT_ROWS}); --json always lists every tensor",
    )
    c = sub.add_parser(
        "convert",
        help="convert between safetensors, APR and GGUF",
        description="Convert SRC to DST (format from DST's suffix or --format). dtypes are "
        "kept unless --dtype is given. A failed conversion leaves no output file.",
    )
    c.add_argument("src", type=Path)
    c.add_argument(
        "dst", help="output file, or a folder (existing, or ending in /): an HF folder inside it"
    )  # a str: Path would drop the trailing '/' that names a folder
    c.add_argument("--dtype", help="f32, f16, bf16, q8_0 or q4_k")
    c.add_argument("--format", choices=("apr", "gguf", "safetensors"), help="output format")
    c.add_argument("--json", action="store_true", help="the report (notes, fallbacks) as JSON")
    d = sub.add_parser(
        "diff",
        help="compare two model files and name the root cause in one line",
        description="Compare A and B (any formats) tensor by tensor by canonical name, tag "
        "each pair (IDENTICAL, EQUIVALENT, TRANSPOSED, DTYPE_MISLABEL, SCALED, SHIFTED, "
        "PERMUTED, QUANT_NOISE, VALUE_DRIFT, SHAPE_MISMATCH, MISSING, EXTRA), compare configs, "
        "and print one DIAGNOSIS line. Exit 0 when every pair is IDENTICAL or EQUIVALENT (or "
        "QUANT_NOISE under --expect quantized), 1 when anything else was found, 2 on error.",
    )
    d.add_argument("a", type=Path)
    d.add_argument("b", type=Path)
    d.add_argument("--values", action="store_true", help="show first elements and statistics")
    d.add_argument("--limit", type=int, default=20, help="table rows, worst first (20)")
    d.add_argument("--atol", type=float, default=1e-6, help="absolute tolerance (SCALED/SHIFTED)")
    d.add_argument("--rtol", type=float, default=1e-5, help="relative tolerance (SCALED/SHIFTED)")
    d.add_argument("--json", action="store_true", help="one JSON document")
    d.add_argument(
        "--expect",
        choices=("quantized",),
        help="quantized: B is a quantised copy of A (or A of B); QUANT_NOISE pairs within "
        "their dtype's rounding bound then exit 0",
    )
    d.add_argument(
        "--threads",
        type=_positive_int,
        default=None,
        help="tensor pairs compared at once (default: the CPUs available, at most 4); "
        "the report is the same for any number",
    )
    parser.set_defaults(model_commands=register_model_commands(sub))
    register_finetune(sub)
    return parser


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be 1 or more, not {value}")
    return value


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return EXIT_USAGE
    from aprlib.config.modelconfig import ConfigError
    from aprlib.errors import ConversionError, ModelFileError, OracleError

    bad_file = EXIT_USAGE if args.command == "diff" else EXIT_BAD_FILE  # diff: 1 = findings
    try:
        if hasattr(args, "handler"):  # subcommands that live in their own module
            return args.handler(args)
        return {"inspect": _inspect, "convert": _convert, "diff": _diff, **args.model_commands}[
            args.command
        ](args)
    except BrokenPipeError:
        _quiet_stdout()
        return EXIT_OK
    except (ModelFileError, ConversionError, ConfigError) as exc:
        print(f"apr: error: {exc}", file=sys.stderr)
        return bad_file
    except OracleError as exc:  # llama.cpp crashed or hung: no answer, one line
        print(f"apr: error: {exc}", file=sys.stderr)
        return EXIT_BAD_FILE
    except MemoryError:
        print(
            "apr: error: out of memory (a tensor larger than this process may hold)",
            file=sys.stderr,
        )
        return bad_file
    except OSError as exc:  # anything the readers and writers did not name themselves
        where = f"{exc.filename}: " if exc.filename else ""
        print(f"apr: error: {where}{exc.strerror or exc}", file=sys.stderr)
        return bad_file
    except ValueError as exc:
        print(f"apr: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:  # pragma: no cover
        return 130


def _quiet_stdout() -> None:
    """The reader of stdout went away: point stdout at /dev/null so the interpreter's
    final flush does not raise again."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)


def inspect_model(path: Path) -> dict[str, Any]:
    """Everything ``apr inspect`` shows, as plain data."""
    from aprlib.compare.consistency import findings
    from aprlib.errors import AprFormatError, FileChangedError
    from aprlib.formats.filesource import paused_gc
    from aprlib.formats.io import open_model

    with open_model(path, any_architecture=True) as model, paused_gc():
        tensors: list[dict[str, Any]] = []
        totals: dict[str, int] = {}
        counts: dict[str, int] = {}
        checksums = "verified" if model.format == "apr" else "none in this format"
        for t in model:
            try:
                t.verify()  # APR: each tensor's CRC32, in flat memory
            except FileChangedError:
                raise
            except AprFormatError:
                if not checksums.startswith("MISMATCH"):
                    checksums = f"MISMATCH in {t.name}"
            tensors.append(
                {"name": t.name, "dtype": t.dtype.name, "shape": list(t.shape), "bytes": t.nbytes}
            )
            totals[t.dtype.name] = totals.get(t.dtype.name, 0) + t.nbytes
            counts[t.dtype.name] = counts.get(t.dtype.name, 0) + 1
        return {
            "path": str(path),
            "format": model.format,
            "config": model.config.to_dict() if model.config else None,
            "tied": model.tied,
            "metadata": {
                k: v for k, v in model.metadata.items() if k not in ("config", "tokenizer")
            },
            "tokenizer": bool(model.tokenizer),
            "tensors": tensors,
            "dtype_totals": totals,
            # the type mix, most tensors first: "Q4_K x169, Q6_K x25, F32 x97"
            "dtype_counts": dict(sorted(counts.items(), key=lambda kv: -kv[1])),
            "checksums": checksums,
            # what the loaders refuse: config fields the weights contradict (exit 1)
            "findings": findings(model),
            # a family this library cannot run: listed as stored, nothing more
            "unsupported": model.metadata.get("aprlib.unsupported"),
        }


def _inspect(args: argparse.Namespace) -> int:
    info = inspect_model(args.file)
    bad = info["checksums"].startswith("MISMATCH") or bool(info["findings"])
    if args.json:
        print(jsonout.dumps(info))
        return EXIT_BAD_FILE if bad else EXIT_OK
    from rich.console import Console
    from rich.table import Table

    console = Console()
    cfg = info["config"]
    console.print(
        f"[bold]{info['path']}[/]  format: {info['format']}  tensors: "
        f"{len(info['tensors'])}  checksums: {info['checksums']}"
    )
    if cfg:
        console.print("config: " + ", ".join(f"{k}={v}" for k, v in cfg.items() if v is not None))
    if info["unsupported"]:
        print(f"unsupported: {info['unsupported']} (tensors listed as stored)")
    table = Table(show_lines=False)
    for col in ("tensor", "dtype", "shape", "bytes"):
        table.add_column(col, justify="right" if col == "bytes" else "left")
    shown = info["tensors"][: max(args.limit, 0)]
    for t in shown:
        table.add_row(t["name"], t["dtype"], "×".join(map(str, t["shape"])), f"{t['bytes']:,}")
    console.print(table)
    if len(shown) < len(info["tensors"]):
        console.print(
            f"... {len(info['tensors']) - len(shown):,} more tensors (--limit N, or --json)"
        )
    console.print(
        "types: "
        + ", ".join(
            f"{k} ×{n} ({info['dtype_totals'][k] / 2**20:.1f} MiB)"
            for k, n in info["dtype_counts"].items()
        )
    )
    for f in info["findings"]:  # plain lines: one finding is one line, never wrapped
        print(f"{f['class']} {f['message']}")
    if info["findings"]:
        print(f"FINDINGS: {len(info['findings'])} config field(s) contradicted by the weights")
    return EXIT_BAD_FILE if bad else EXIT_OK


def _convert(args: argparse.Namespace) -> int:
    from aprlib.formats.conversion import convert
    from aprlib.formats.dtypes import DType
    from aprlib.formats.io import open_model

    dtype = DType.parse(args.dtype) if args.dtype else None
    if args.src.resolve() == Path(args.dst).resolve():
        raise ValueError("source and destination are the same file")
    progress = None
    if sys.stderr.isatty():
        from rich.progress import BarColumn, DownloadColumn, Progress, TransferSpeedColumn

        with open_model(args.src) as model:
            total = sum(t.nbytes for t in model)
        bar = Progress(
            "[progress.description]{task.description}",
            BarColumn(),
            DownloadColumn(),
            TransferSpeedColumn(),
            transient=True,
        )
        task = bar.add_task("converting", total=total)
        bar.start()

        def progress(name, done):
            return bar.update(
                task,
                completed=done,
                description=name[-40:],
            )

    try:
        report = convert(args.src, args.dst, dtype=dtype, fmt=args.format, progress=progress)
    finally:
        if progress is not None:
            bar.stop()
    if args.json:
        print(jsonout.dumps(report.as_dict()))
        return EXIT_OK
    print(
        f"{report.source} ({report.source_format}) -> {report.destination} "
        f"({report.target_format}): {report.tensors} tensors, "
        f"{report.bytes_written / 2**20:.1f} MiB"
    )
    for note in report.notes:
        print(f"note: {note}")
    return EXIT_OK


def _diff(args: argparse.Namespace) -> int:
    from aprlib.compare.classify import Tolerance
    from aprlib.compare.diff import diff_models
    from aprlib.compare.report import CLEAN
    from aprlib.formats.io import open_model

    with open_model(args.a) as a, open_model(args.b) as b:
        report = diff_models(
            a, b, Tolerance(args.atol, args.rtol), values=args.values, workers=args.threads
        )
    passes = report.passes(expect_quantized=args.expect == "quantized")
    if args.json:
        print(jsonout.dumps({**report.as_dict(), "passes": passes}))
        return EXIT_OK if passes else EXIT_BAD_FILE
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    console = Console(highlight=False)
    if not console.is_terminal:
        console = Console(width=200, highlight=False)
    findings = sorted((p for p in report.pairs if p.tag not in CLEAN), key=lambda p: -p.score)
    style = {
        "TRANSPOSED": "red",
        "DTYPE_MISLABEL": "red",
        "SHAPE_MISMATCH": "red",
        "MISSING": "red",
        "EXTRA": "red",
        "VALUE_DRIFT": "yellow",
        "NAN": "red",
        "INF": "red",
        "SWAPPED": "red",
        "PERMUTED": "magenta",
        "SCALED": "magenta",
        "SHIFTED": "magenta",
        "QUANT_NOISE": "cyan",
    }
    if findings:
        table = Table(
            title=f"{len(findings)} of {len(report.pairs)} tensors differ "
            f"(worst first, {min(args.limit, len(findings))} shown)",
            title_justify="left",
        )
        for col in ("tag", "tensor", "A", "B", "detail"):
            table.add_column(col, overflow="fold")
        if args.values:
            table.add_column("A first values", overflow="fold")
            table.add_column("B first values", overflow="fold")
            table.add_column("stats", overflow="fold")
        for p in findings[: args.limit]:
            cells = [
                f"[{style.get(p.tag, '')}]{p.tag}[/]",
                p.name,
                _side(p.a),
                _side(p.b),
                escape(p.detail),
            ]
            if args.values:
                cells += [
                    _first_values(p, "a"),
                    _first_values(p, "b"),
                    ", ".join(f"{k} {v:.3g}" for k, v in p.stats.items()),
                ]
            table.add_row(*cells)
        console.print(table)
    for c in report.config:
        console.print(f"[red]CONFIG_MISMATCH[/] {c.field}: {c.a!r} vs {c.b!r}")
    for k in report.contradictions:
        console.print(f"[red]CONFIG_CONTRADICTS_WEIGHTS[/] in {k.side}: {escape(k.message)}")
    for line in report.tokenizer:
        console.print(f"[red]TOKENIZER_MISMATCH[/] {escape(line)}")
    counts: dict[str, int] = {}
    for p in report.pairs:
        counts[p.tag] = counts.get(p.tag, 0) + 1
    console.print(
        f"{len(report.pairs)} tensors: "
        + ", ".join(f"{n} {t}" for t, n in sorted(counts.items(), key=lambda kv: -kv[1]))
    )
    print(report.diagnosis["line"])
    if passes and not report.clean:
        print("PASS: only quantisation noise within each dtype's bound, as --expect quantized says")
    return EXIT_OK if passes else EXIT_BAD_FILE


def _side(side: dict[str, Any] | None) -> str:
    if side is None:
        return "-"
    text = f"{side['dtype']} {'x'.join(map(str, side['shape']))}"
    return text + (" (tied)" if side.get("tied_to") else "")


def _first_values(pair: Any, which: str) -> str:
    return ", ".join(f"{v:.4g}" for v in pair.values.get(which, []))


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
