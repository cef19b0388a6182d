"""The forward-pass subcommands of ``apr``: logits, trace, bisect, qa.

Registered from ``aprlib/cli/main.py`` by ``register``; each handler returns the exit code:
0 = PASS / clean, 1 = FAIL / diverged / bad input file, 2 = usage error.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any

from aprlib.cli.streaming import add_stream_flag, decide, layer_bar, with_peak
from aprlib.formats import jsonout
from aprlib.forward.gates import EXPECT, MAX_ABSMAX_RATIO, MAX_STD_RATIO

EXIT_OK, EXIT_FAIL, EXIT_USAGE = 0, 1, 2
DTYPES = ("float32", "float64", "bfloat16", "float16")


def register(sub: Any) -> dict[str, Any]:
    """Add the subcommands to ``sub`` (argparse subparsers); returns name → handler."""
    lg = sub.add_parser(
        "logits",
        help="logits of a token sequence, saved or compared across backends",
        description="Logits (float32, every position, never truncated) of MODEL on --tokens. "
        "--compare OTHER (a model file or a saved .npy) prints NMSE (and dB), max abs diff, KL "
        "divergence with its direction, top-1 agreement, top-5 overlap and Δp percentiles, "
        "then a verdict from named gates. Exit 0 PASS, 1 FAIL or bad file, 2 usage (also "
        "when the token ids differ: nothing is compared).",
    )
    lg.add_argument("model", type=Path)
    lg.add_argument("--tokens", required=True, help="comma-separated token ids")
    lg.add_argument("--out", type=Path, help="write logits .npy (+ .npy.json with the tokens)")
    lg.add_argument(
        "--backend", default="reference", help="reference | llama.cpp | transformers | triton"
    )
    lg.add_argument("--compare", type=Path, help="model file or saved .npy to compare against")
    lg.add_argument("--compare-backend", help="backend for --compare (default: --backend)")
    lg.add_argument("--expect", choices=("f32", "bf16", "q8_0", "q4_k"), help="dtype gates")
    lg.add_argument("--max-kl", type=float, help="gate: mean KL(A||B) in nats")
    lg.add_argument("--min-top1", type=float, help="gate: top-1 agreement")
    lg.add_argument("--max-nmse", type=float, help="gate: NMSE")
    lg.add_argument("--json", action="store_true", help="one JSON document")
    add_stream_flag(lg)

    tr = sub.add_parser(
        "trace",
        help="per-point activation statistics (and compare two traces)",
        description="Statistics (mean, std, min, max, abs-max, L2, NaN/Inf) at every capture "
        "point, over all tokens and over the last token. --compare OTHER.json pairs points "
        "only by the same name and scope, names points one side lacks, and gives a VERDICT "
        "from named gates (points, finite, std_ratio, absmax_ratio): exit 0 PASS, 1 FAIL.",
    )
    tr.add_argument("model", type=Path, help="a model file, or a trace .json with --compare")
    tr.add_argument("--tokens", help="comma-separated token ids")
    tr.add_argument("--backend", default="reference")
    tr.add_argument("--dtype", default="float32", choices=DTYPES)
    tr.add_argument("--json", type=Path, dest="json_out", help="write the trace as JSON")
    add_stream_flag(tr)
    tr.add_argument("--compare", type=Path, help="another trace .json to compare with")
    tr.add_argument("--scope", choices=("all", "last"), default="all", help="rows shown")
    tr.add_argument(
        "--max-std-ratio",
        type=float,
        default=MAX_STD_RATIO,
        help=f"gate: B's std over A's (either way) at any point ({MAX_STD_RATIO:g})",
    )
    tr.add_argument(
        "--max-absmax-ratio",
        type=float,
        default=MAX_ABSMAX_RATIO,
        help=f"gate: B's abs-max over A's (either way) at any point ({MAX_ABSMAX_RATIO:g})",
    )

    bi = sub.add_parser(
        "bisect",
        help="the first capture point where a forward diverges, and in which side",
        description="Run A and B on the same tokens (B: another file; A on --backend-b / "
        "--dtype-b; an activation dump another engine wrote; llama.cpp's own graph on a "
        "GGUF with --backend-b llama.cpp; transformers' modules with --backend-b "
        "transformers), streaming. Each side is judged against a float64 run of the "
        "reference on its own weights, with the floor of a clean run in its own arithmetic "
        "(--expect): RMSE(side,ref64) > m*RMSE(clean,ref64) + atol + rtol*RMS(ref64). Two "
        "files are also compared weights against weights, configs first. Names the first "
        "point that INTRODUCES a divergence (inputs agree, output does not), per side. "
        "Exit 0 clean, 1 diverged or bad file.",
    )
    bi.add_argument("a", type=Path, help="a model file (HF folder, safetensors, APR, GGUF)")
    bi.add_argument(
        "b", type=Path, nargs="?", help="another model file, or an activation dump of A's weights"
    )
    bi.add_argument("--tokens", help="token ids (a dump carries its own)")
    bi.add_argument("--backend-a", default="reference")
    bi.add_argument(
        "--backend-b",
        default="reference",
        help="an Ops backend, or llama.cpp (B a GGUF, or A's GGUF) or transformers",
    )
    bi.add_argument("--dtype-a", default="float32", choices=DTYPES)
    bi.add_argument("--dtype-b", choices=DTYPES)
    for side in ("a", "b"):
        bi.add_argument(
            f"--expect-{side}",
            choices=EXPECT,
            help=f"the rounding side {side.upper()} is expected to show (sets its floor)",
        )
    bi.add_argument("--expect", choices=EXPECT, help="same as --expect-b")
    bi.add_argument("--map", type=Path, help="YAML map from a dump's engine names to points")
    bi.add_argument("--m", type=float, default=2.0, help="noise-floor multiplier (2)")
    bi.add_argument("--atol", type=float, default=0.0)
    bi.add_argument("--rtol", type=float, default=1e-6)
    bi.add_argument("--override", action="append", default=[], help="PATTERN=m:X[,atol:Y][,rtol:Z]")
    bi.add_argument("--bundle", type=Path, help="write a repro bundle for the first finding")
    bi.add_argument("--json", action="store_true")
    add_stream_flag(bi)

    qa = sub.add_parser(
        "qa",
        help="PASS/FAIL gates on a model (tensors, logits, loss, round trip, parity)",
        description="Gates: load, tensors, zeros, embedding_rows, std_range, logits, loss "
        "(with --stream), round_trip, backend_parity (llama.cpp, when installed). Exit 1 "
        "on any FAIL, naming the gate.",
    )
    qa.add_argument("model", type=Path)
    qa.add_argument("--stream", type=Path, help="token ids (comma/space separated) for loss")
    qa.add_argument("--max-loss", type=float, help="loss gate bound in nats (default ln(vocab))")
    qa.add_argument("--no-parity", action="store_true", help="skip the llama.cpp gate")
    qa.add_argument("--json", action="store_true")
    add_stream_flag(qa)
    return {"logits": _logits, "trace": _trace, "bisect": _bisect, "qa": _qa}


def _console() -> Any:
    from rich.console import Console

    return Console()


def _fmt(x: float) -> str:
    return f"{x:.4g}" if isinstance(x, float) and math.isfinite(x) else str(x)


# --- logits ------------------------------------------------------------------------------


def _logits(args: argparse.Namespace) -> int:
    from aprlib.forward.logits import (
        DTYPE_GATES,
        Gates,
        TokenMismatchError,
        compare_logits,
        is_npy,
        load_logits,
        save_logits,
    )
    from aprlib.forward.token_ids import parse_tokens

    tokens = parse_tokens(args.tokens)
    logits, stream = _model_logits(args.model, tokens, args.backend, args.stream_weights)
    if args.out:
        save_logits(args.out, logits, tokens, {"model": str(args.model), "backend": args.backend})
    if args.compare is None:
        if args.json:
            data = {"tokens": tokens, "shape": list(logits.shape), "out": str(args.out)}
            print(json.dumps(with_peak({**data, "streamed": stream})))
        else:
            print(
                f"logits {logits.shape[0]}x{logits.shape[1]} float32 ({args.backend})"
                + (f" -> {args.out}" if args.out else "")
            )
        return EXIT_OK
    if is_npy(args.compare):
        other, other_tokens = load_logits(args.compare)
    else:
        other_tokens = tokens
        backend = args.compare_backend or args.backend
        other, other_stream = _model_logits(args.compare, tokens, backend, args.stream_weights)
        stream = stream or other_stream
    base = DTYPE_GATES[args.expect] if args.expect else Gates()
    gates = Gates(
        max_kl=args.max_kl if args.max_kl is not None else base.max_kl,
        min_top1=args.min_top1 if args.min_top1 is not None else base.min_top1,
        max_nmse=args.max_nmse if args.max_nmse is not None else base.max_nmse,
    )
    try:
        c = compare_logits(logits, other, tokens, other_tokens, gates)
    except TokenMismatchError as exc:
        print(f"apr: refused: {exc}", file=sys.stderr)
        return EXIT_USAGE
    if args.json:
        print(jsonout.dumps(with_peak({**c.to_dict(), "streamed": stream})))
    else:
        _print_comparison(c, args)
    return EXIT_OK if c.verdict == "PASS" else EXIT_FAIL


def _model_logits(
    path: Path, tokens: list[int], backend: str, force: bool | None
) -> tuple[Any, bool]:
    """A model's logits on ``backend`` and whether its weights streamed (llama.cpp runs
    the file itself: nothing of ours to stream); transformers, which holds every weight,
    is refused for a model that must stream, with the memory it would need."""
    from aprlib.forward.logits import compute_logits

    if backend == "llama.cpp":
        return compute_logits(path, tokens, backend), False
    choice = decide(force, [path])
    if choice.stream and backend == "transformers":
        from aprlib.errors import ModelMemoryError
        from aprlib.forward.weights import gb

        raise ModelMemoryError(
            path,
            f"transformers holds every weight ({gb(choice.held)} in float32; "
            f"{gb(choice.available)} available) and has no way here to load them a layer at "
            "a time: use --backend reference (it streams), or --no-stream-weights to try",
        )
    with layer_bar(choice):
        return compute_logits(path, tokens, backend, choice.stream), choice.stream


def _print_comparison(c: Any, args: argparse.Namespace) -> None:
    from rich.table import Table

    console = _console()
    console.print(f"A: {args.model} ({args.backend})   B: {args.compare}")
    t = Table()
    for col in ("measure", "value", "gate"):
        t.add_column(col)
    rows = [
        ("NMSE", f"{c.nmse:.3g} ({c.nmse_db:.1f} dB)", "nmse"),
        ("max abs diff", _fmt(c.max_abs), "max_abs"),
        ("KL mean / max", f"{c.kl_mean:.3g} / {c.kl_max:.3g} nats", "kl_mean"),
        ("top-1 agreement", f"{c.top1:.2%}", "top1"),
        ("top-5 overlap", f"{c.top5_overlap:.2%}", ""),
        ("Δp p1/p5/p50/p95/p99", " / ".join(f"{v:+.3g}" for v in c.dp_percentiles.values()), ""),
        ("Δp rms", _fmt(c.dp_rms), ""),
    ]
    for name, value, gate in rows:
        g = c.gates.get(gate)
        mark = "" if g is None else f"{'ok' if g['pass'] else 'FAIL'} (bound {g['bound']:.3g})"
        t.add_row(name, value, mark)
    console.print(t)
    console.print(c.kl_direction)
    print(f"VERDICT: {c.verdict}" + (f" ({', '.join(c.failed)} failed)" if c.failed else ""))


# --- trace -------------------------------------------------------------------------------


def _trace(args: argparse.Namespace) -> int:
    from aprlib.forward.token_ids import parse_tokens
    from aprlib.forward.trace import (
        compare_traces,
        load_trace,
        save_trace,
        trace_file,
        trace_verdict,
    )

    if args.model.suffix == ".json":
        trace = load_trace(args.model)
    else:
        if not args.tokens:
            raise ValueError("--tokens is required to trace a model")
        choice = decide(args.stream_weights, [args.model], args.dtype)
        with layer_bar(choice):
            trace = trace_file(
                args.model, parse_tokens(args.tokens), args.backend, args.dtype, choice.stream
            )
        if args.json_out:
            save_trace(trace, args.json_out, with_peak({"streamed": choice.stream}))
    if args.compare is None:
        _print_trace(trace, args.scope)
        return EXIT_OK
    rows = compare_traces(trace, load_trace(args.compare))
    verdict = trace_verdict(rows, args.max_std_ratio, args.max_absmax_ratio)
    from rich.table import Table

    t = Table(title=f"{args.model} vs {args.compare} (scope {args.scope})")
    t.add_column("point", no_wrap=True)
    t.add_column("status", no_wrap=True)
    for col in ("std A", "std B", "ratio", "absmax ratio"):
        t.add_column(col)
    for r in rows:
        if r.scope != args.scope:
            continue
        std_a = _fmt(r.a.std) if r.a else "-"
        std_b = _fmt(r.b.std) if r.b else "-"
        ratio, absmax = r.ratio("std"), r.ratio("absmax")
        t.add_row(
            r.name,
            r.status,
            std_a,
            std_b,
            _fmt(ratio) if ratio is not None else "-",
            _fmt(absmax) if absmax is not None else "-",
        )
    _console().print(t)
    print(verdict.line())
    return EXIT_OK if verdict.verdict == "PASS" else EXIT_FAIL


def _print_trace(trace: Any, scope: str) -> None:
    from rich.table import Table

    t = Table(title=f"{trace.model} ({trace.backend}, {trace.dtype}) scope {scope}")
    t.add_column("point", no_wrap=True)
    for col in ("shape", "mean", "std", "min", "max", "absmax", "L2", "nan", "inf"):
        t.add_column(col)
    for p in trace.points:
        if p.scope == scope:
            t.add_row(
                p.name,
                "x".join(map(str, p.shape)),
                *(_fmt(getattr(p, s)) for s in ("mean", "std", "min", "max", "absmax", "l2")),
                str(p.nan),
                str(p.inf),
            )
    _console().print(t)


# --- bisect ------------------------------------------------------------------------------


def _bisect(args: argparse.Namespace) -> int:
    from aprlib.forward.bisect import Tolerance, bisect, parse_override, write_bundle

    tolerance = Tolerance(args.m, args.atol, args.rtol)
    overrides = dict(parse_override(o, tolerance) for o in args.override)
    side_a, side_b, tokens, choice = _bisect_sides(args)
    with layer_bar(choice):
        report = bisect(side_a, side_b, tokens, tolerance, overrides)
    data = with_peak({**report.to_dict(), "streamed": choice.stream})
    finding = report.first_nonfinite or (report.introduced[0] if report.introduced else None)
    if args.bundle and finding is not None and side_b.points is None and side_a.points is None:
        data["bundle"] = [
            str(p) for p in write_bundle(args.bundle, side_a.net, side_b.net, tokens, finding.name)
        ]
    if args.json:
        print(jsonout.dumps(data))
    else:
        _print_bisect(report)
    return EXIT_OK if report.clean else EXIT_FAIL


def _bisect_sides(args: argparse.Namespace) -> tuple[Any, Any, list[int], Any]:
    """The two sides the command line names, and the tokens they run on."""
    from aprlib.errors import ModelFileError
    from aprlib.forward import sides
    from aprlib.forward.dump import PointMap, is_dump
    from aprlib.forward.token_ids import check_token_ids, parse_tokens

    expect_b = args.expect_b or args.expect
    for path in (args.a, args.b):
        if path is not None and not path.exists():
            raise ModelFileError(path, "no such file or directory")
    if is_dump(args.a):
        raise ValueError(f"{args.a} is an activation dump: the model comes first (REF DUMP)")
    tokens = parse_tokens(args.tokens) if args.tokens else None
    dump = args.b is not None and is_dump(args.b)
    if args.map is not None and not dump:
        raise ValueError("--map applies to an activation dump given as B")
    if tokens is None and not dump:
        raise ValueError(
            "--tokens is required"
            + (f": {args.b} is not an activation dump (which carries its own)" if args.b else "")
        )
    if dump:
        given = [
            flag
            for flag, value in (
                ("--dtype-a", args.dtype_a != "float32"),
                ("--backend-b", args.backend_b != "reference"),
                ("--dtype-b", args.dtype_b is not None),
                ("--bundle", args.bundle is not None),
            )
            if value
        ]
        if given:
            raise ValueError(
                f"{', '.join(given)} cannot apply to an activation dump: it is judged on "
                "REF's weights as stored, its arithmetic set by --expect-b"
            )
    files = [args.a] + ([args.b] if args.b is not None and not dump else [])
    choice = decide(args.stream_weights, files, args.dtype_a)
    stream = choice.stream
    side_a = sides.file_side(args.a, args.backend_a, args.dtype_a, args.expect_a, stream)
    if dump:
        point_map = PointMap.load(args.map) if args.map else None
        side_b, held = sides.dump_side(side_a, args.b, point_map, expect_b)
        if tokens is not None and tokens != held.tokens:
            raise ValueError(f"--tokens differ from the tokens {args.b} was computed on")
        side_b.ignored = list(held.ignored)
        return side_a, side_b, held.tokens, choice
    assert tokens is not None
    check_token_ids(tokens, side_a.net.config.vocab_size, args.a)
    dtype_b = args.dtype_b or args.dtype_a
    if args.backend_b == "llama.cpp":
        side_b = sides.llamacpp_side(args.b or args.a, tokens, expect_b, stream)
    elif args.backend_b == "transformers":  # built from the file's weights in float32
        reference = sides.file_side(args.b or args.a, stream=stream)
        side_b = sides.transformers_side(reference, tokens, expect_b)
    elif args.b is not None:
        side_b = sides.file_side(args.b, args.backend_b, dtype_b, expect_b, stream)
    elif args.backend_b != args.backend_a or args.dtype_b:
        from aprlib.forward.bisect import twin

        net = twin(side_a.net, args.backend_b, args.dtype_b)
        label = f"{args.a} ({args.backend_b}, {dtype_b})"
        side_b = type(side_a)(label, net, weights=side_a.weights, expect=expect_b)
    else:
        raise ValueError("give B, or --backend-b / --dtype-b to run A another way")
    check_token_ids(tokens, side_b.net.config.vocab_size, args.b or args.a)
    return side_a, side_b, tokens, choice


def _print_bisect(report: Any) -> None:
    console = _console()
    console.print(f"A: {report.a}\nB: {report.b}\ntokens: {len(report.tokens)}")
    note = report.config_note()
    if note:
        console.print(f"[yellow]{note}[/]")
    if report.weights_differ:
        names = report.weights_differ
        console.print(
            f"weights differ in {len(names)} tensor{'s' if len(names) != 1 else ''}: "
            f"{', '.join(names[:3])}" + (" ..." if len(names) > 3 else "")
        )
    if report.same_weights:
        console.print("B's weights and config equal A's value for value: one reference")
    for side in report.trusted:
        console.print(f"{side}: the reference arithmetic itself (its own floor)")
    for label, names in report.ignored.items():
        console.print(
            f"[yellow]{label}: {len(names)} tensors name no capture point (ignored):[/] "
            + ", ".join(names[:5])
            + (" ..." if len(names) > 5 else "")
        )
    for check in report.checks:
        absent = [p.name for p in check.points if p.role == "absent"]
        console.print(f"[bold]{check.title}[/]: {check.subject}; floor: {check.floor}")
        if absent:
            console.print(
                f"  {len(absent)} points not held (absent, not judged): "
                + ", ".join(absent[:4])
                + (" ..." if len(absent) > 4 else "")
            )
        nonfinite = check.first_nonfinite
        if nonfinite is not None:
            console.print(
                f"  [red]first NaN/Inf[/] at {nonfinite.name}: {nonfinite.nonfinite_b} NaN/Inf "
                f"values in {check.title}, {nonfinite.nonfinite_a} in the clean run"
            )
        overflow = check.floor_not_finite
        if overflow is not None:
            console.print(
                f"  [yellow]the clean run is not finite at {overflow.name}[/] "
                f"({overflow.nonfinite_a} NaN/Inf values): its floor there counts finite "
                "positions only; a wider --expect (f32, bf16) gives a usable one"
            )
        if not check.introduced:
            if nonfinite is None:
                console.print("  every held point within its noise floor")
            continue
        first = check.introduced[0]
        for label, p in (("point before", check.before(first)), ("INTRODUCED at", first)):
            if p is None:
                continue
            called = f" ({p.engine_name})" if p.engine_name else ""
            console.print(
                f"  {label} {p.name}{called}: RMSE(clean,ref64) {p.rmse_a:.3g}  "
                f"RMSE(side,ref64) {p.rmse_b:.3g}  bound {p.bound:.3g}  "
                f"({'diverged' if p.diverged else 'agrees'})"
                + ("  [last token only]" if p.scope == "last" else "")
            )
        console.print(
            f"  inputs {', '.join(first.inputs) or '(none)'} agree; would have passed with "
            f"m >= {first.needed['m']:.3g} or atol >= {first.needed['atol']:.3g}"
        )
        inherited = [p.name for p in check.points if p.role == "inherited"]
        console.print(
            f"  {len(inherited)} later points inherit it"
            + (f" (first: {inherited[0]})" if inherited else "")
        )
        others = [p.name for p in check.introduced[1:]]
        if others:
            console.print(f"  also introduced independently: {', '.join(others[:5])}")
    findings = report.findings()
    held = [p for c in report.checks for p in c.points if p.role != "absent"]
    total = sum(len(c.points) for c in report.checks)
    if not report.checks:
        print("BISECT: CLEAN — nothing to judge: both sides are the reference arithmetic")
    elif not findings and len(held) < total:
        print(f"BISECT: CLEAN — every held point within its noise floor ({len(held)} of {total})")
    elif not findings:
        print("BISECT: CLEAN — every point within its noise floor")
    else:
        print("BISECT: DIVERGED — " + "; ".join(findings))


# --- qa ----------------------------------------------------------------------------------


def _qa(args: argparse.Namespace) -> int:
    from aprlib.forward.qa import gates_json, run_qa
    from aprlib.forward.token_ids import parse_tokens

    stream = None
    if args.stream:
        text = args.stream.read_text(encoding="utf-8").replace("\n", ",").replace(" ", ",")
        stream = parse_tokens(text)
    choice = decide(args.stream_weights, [args.model])
    with layer_bar(choice):
        gates = run_qa(
            args.model, stream, not args.no_parity, args.max_loss, stream_weights=choice.stream
        )
    data = with_peak({**gates_json(gates), "streamed": choice.stream})
    if args.json:
        print(jsonout.dumps(data))
    else:
        from rich.table import Table

        t = Table(title=f"apr qa {args.model}")
        for col in ("gate", "status", "detail"):
            t.add_column(col)
        colour = {"PASS": "green", "FAIL": "red", "SKIP": "yellow"}
        for g in gates:
            t.add_row(g.name, f"[{colour[g.status]}]{g.status}[/]", g.detail)
        _console().print(t)
        print(
            f"QA: {data['verdict']}" + (f" ({', '.join(data['failed'])})" if data["failed"] else "")
        )
    return EXIT_FAIL if data["failed"] else EXIT_OK
