"""Run the catalogue: per defect, inject it, run ``apr diff`` and the falsifiers, record.

Falsifiers run in this process (``pytest.main`` with ``--no-status-write -p
no:cacheprovider``): the defect is a monkeypatch, and a subprocess would not see it. The
clean run is the same suite with nothing injected; every red there is a false alarm.
"""

from __future__ import annotations

import contextlib
import io
import json
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from bench.defects.injections import install_seam
from bench.defects.registry import CATALOGUE, Defect

ROOT = Path(__file__).resolve().parents[2]

#: the clean models every file-level defect starts from (built once per run)
MODELS: dict[str, dict[str, Any]] = {
    "qwen2": {"architecture": "qwen2"},
    "qwen2-tied": {"architecture": "qwen2", "tied": True},
    "llama": {"architecture": "llama"},
    "qwen2-bf16": {"architecture": "qwen2", "dtype": "bfloat16"},
    "qwen2-f16": {"architecture": "qwen2", "dtype": "float16"},
    # rows of 256: wide enough for Q4_K super-blocks (the 64-wide models stay F32 in Q4_K)
    "qwen2-wide": {"architecture": "qwen2", "hidden_size": 256, "intermediate_size": 512},
    # its folder carries a byte-level BPE (tokenizer.json) trained in the run, qwen2 split
    "qwen2-tokenizer": {"architecture": "qwen2", "tokenizer": "qwen2"},
}


@dataclass
class Result:
    id: str
    title: str
    design_row: str
    status: str  # killed | survived | not yet runnable | clean
    red: list[str] = field(default_factory=list)  # falsifiers that failed
    ran: list[str] = field(default_factory=list)  # falsifiers that ran
    diff_class: str | None = None
    diff_line: str | None = None
    diagnosis_right: bool | None = None
    first_red_s: float | None = None
    seconds: float = 0.0
    reason: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


class _Collector:
    """A pytest plugin: which falsifiers' tests failed, and when the first one did."""

    def __init__(self, start: float) -> None:
        self.start = start
        self.first_red: float | None = None
        self.red: set[str] = set()
        self.ran: set[str] = set()
        self.ids: dict[str, list[str]] = {}
        self.errors = 0

    def pytest_collection_modifyitems(self, items: list[pytest.Item]) -> None:
        for item in items:
            self.ids[item.nodeid] = [
                str(a) for m in item.iter_markers("falsifies") for a in m.args
            ] or ["(unbound)"]

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        ids = self.ids.get(report.nodeid, ["(unbound)"])
        if report.when == "call" or report.failed:
            self.ran.update(ids)
        if report.failed:
            self.red.update(ids)
            if self.first_red is None:
                self.first_red = time.perf_counter() - self.start

    def pytest_collectreport(self, report: pytest.CollectReport) -> None:
        if report.failed:
            self.errors += 1
            self.red.add(f"(collection error {report.nodeid})")


def _known_falsifiers() -> dict[str, str]:
    """Falsifier ID -> contract id, from the contracts through provable's loader."""
    from provable.contracts.model import load_contract

    known: dict[str, str] = {}
    for path in sorted((ROOT / "contracts").glob("*.yaml")):
        try:
            contract = load_contract(path)
        except Exception:
            continue
        for f in contract.falsifiers:
            known[f.id] = contract.id
    return known


def _files_with(words: tuple[str, ...]) -> list[str]:
    return [
        str(p)
        for p in sorted((ROOT / "falsifiers").glob("test_*.py"))
        if any(w in p.read_text(encoding="utf-8") for w in words)
    ]


def run_falsifiers(defect: Defect, known: dict[str, str], start: float) -> _Collector:
    """The defect's falsifiers (those that exist in the contracts), in this process."""
    collector = _Collector(start)
    ids = [f for f in defect.falsifiers if f in known]
    files = sorted(
        {str(ROOT / "falsifiers" / f"test_{known[f].replace('-', '_')}.py") for f in ids}
        | set(_files_with(defect.falsifier_files_with) if defect.falsifier_files_with else [])
    )
    files = [f for f in files if Path(f).exists()]
    if not files:
        return collector
    args = [*files, "-q", "--no-status-write", "-p", "no:cacheprovider", "-p", "no:randomly"]
    args += ["-o", "addopts=", "--no-header", "--tb=no", "-W", "ignore"]
    for f in ids:
        args += ["--falsifier", f]
    with contextlib.redirect_stdout(io.StringIO()):
        pytest.main(args, plugins=[collector])
    return collector


def run_diff(defect: Defect, source: Path, work: Path, start: float) -> tuple[int, str, str]:
    """Convert ``source`` with the converter as it now is; ``apr diff`` source vs output.

    Returns (exit code, diagnosis class, diagnosis line); a typed error is FILE_ERROR.
    """
    from aprlib.cli.main import main as apr

    suffix = {"apr": "model.apr", "gguf": "model.gguf", "safetensors": "model.safetensors"}
    dst = work / suffix[defect.fmt or "apr"]
    args = ["convert", str(source), str(dst)]
    if defect.dtype:
        args += ["--dtype", defect.dtype]
    err = io.StringIO()
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(err):
        code = apr(args)
    if code != 0:
        return code, "CONVERT_ERROR", err.getvalue().strip()
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = apr(["diff", str(source), str(dst), "--json"])
    if code == 2:
        return code, "FILE_ERROR", err.getvalue().strip()
    try:
        report = json.loads(out.getvalue())
        diagnosis = report.get("diagnosis", {})
        return code, str(diagnosis.get("class")), str(diagnosis.get("line"))
    except json.JSONDecodeError:
        return code, "UNREADABLE", out.getvalue()[-300:]


def _right(defect: Defect, result: Result) -> bool:
    if defect.fmt is not None and defect.expect:
        line = result.diff_line or ""
        return result.diff_class in defect.expect and (
            not defect.where or any(w in line for w in defect.where)
        )
    if defect.right_falsifiers == ("*",):
        return bool(result.red)
    return any(f in result.red for f in defect.right_falsifiers)


def run_one(defect: Defect, sources: dict[str, Path], known: dict[str, str], work: Path) -> Result:
    result = Result(defect.id, defect.title, defect.design_row, "survived")
    missing = defect.missing()
    if missing or defect.pending:
        result.status = "not yet runnable"
        result.reason = f"needs {', '.join(missing)}" if missing else defect.pending
        return result
    start = time.perf_counter()
    first_red: list[float] = []
    with pytest.MonkeyPatch.context() as mp:
        if defect.transform is not None or defect.file_bytes is not None:
            install_seam(mp, defect.transform, defect.file_bytes)
        if defect.patch is not None:
            defect.patch(mp)
        if defect.fmt is not None:
            code, cls, line = run_diff(defect, sources[defect.model], work, start)
            result.diff_class, result.diff_line = cls, line
            if code != 0:
                first_red.append(time.perf_counter() - start)
        collector = run_falsifiers(defect, known, start)
    result.red = sorted(collector.red)
    result.ran = sorted(collector.ran)
    if collector.first_red is not None:
        first_red.append(collector.first_red)
    result.seconds = round(time.perf_counter() - start, 2)
    result.first_red_s = round(min(first_red), 2) if first_red else None
    caught = bool(first_red)
    result.status = "killed" if caught else "survived"
    result.diagnosis_right = _right(defect, result) if caught else False
    return result


def run_clean(
    defects: list[Defect], sources: dict[str, Path], known: dict[str, str], work: Path
) -> Result:
    """The same checks with nothing injected: every red is a false alarm."""
    start = time.perf_counter()
    red: list[str] = []
    ran: set[str] = set()
    runnable = [d for d in defects if not d.missing() and not d.pending]
    seen: set[tuple[str, str | None, str | None]] = set()
    for d in runnable:
        key = (d.model, d.fmt, d.dtype)
        if d.fmt is None or key in seen:
            continue
        seen.add(key)
        folder = work / f"clean-{len(seen)}"
        folder.mkdir()
        code, cls, line = run_diff(d, sources[d.model], folder, start)
        ran.add(f"apr diff {d.model} -> {d.fmt}{' ' + d.dtype if d.dtype else ''}")
        if code != 0 and not (d.dtype and cls == "QUANT_NOISE"):
            red.append(f"apr diff {d.model} -> {d.fmt}: {line}")
    suite = Defect(
        "clean",
        "the clean models",
        runnable[0].design_row if runnable else "dtype mislabel",
        tuple(sorted({f for d in runnable for f in d.falsifiers})),
        falsifier_files_with=tuple(sorted({w for d in runnable for w in d.falsifier_files_with})),
    )
    collector = run_falsifiers(suite, known, start)
    red += sorted(collector.red)
    ran |= collector.ran
    # the injection seam itself, passing every file through unchanged, must raise nothing
    seam = Defect("seam", "identity", suite.design_row, suite.falsifiers)
    with pytest.MonkeyPatch.context() as mp:
        install_seam(mp, lambda arrays, config, fmt: (arrays, config), None)
        collector = run_falsifiers(seam, known, start)
    red += [f"{f} (identity seam)" for f in sorted(collector.red)]
    ran |= {f"{f} (identity seam)" for f in collector.ran}
    status = "clean" if not red else "false alarm"
    return Result(
        "clean",
        "the same suite on the clean models",
        "-",
        status,
        red=red,
        ran=sorted(ran),
        seconds=round(time.perf_counter() - start, 2),
    )


def build_sources(work: Path) -> dict[str, Path]:
    from conftest import build_tiny

    sources = {}
    for name, spec in MODELS.items():
        spec = dict(spec)
        pre = spec.pop("tokenizer", None)
        if pre is not None:
            spec.setdefault("vocab_size", _tokenizer_fixture().VOCAB)
        with contextlib.redirect_stderr(io.StringIO()):  # transformers' progress bars
            model = build_tiny(work / "sources" / name, **spec)
        sources[name] = model.safetensors
        if pre is not None:
            folder, _ = _tokenizer_fixture().hf_folder_with_tokenizer(
                model, pre, work / "sources" / f"{name}-folder"
            )
            sources[name] = folder / "model.safetensors"
    return sources


def _tokenizer_fixture() -> Any:
    """The tokenizer-fidelity falsifiers' own fixture (a BPE trained with ``tokenizers`` on
    their corpus), so the bench injects into the tokenizer those falsifiers check."""
    import importlib

    return importlib.import_module("falsifiers.test_tokenizer_fidelity_v1")


def no_shrinking() -> None:
    """A defect needs one counterexample, not the smallest: hypothesis stops at the first.

    Loaded before the falsifier modules are imported, so their settings inherit it; the
    time to the first red is then the time to the first failing example."""
    from hypothesis import Phase, settings

    settings.register_profile("defects", phases=[Phase.explicit, Phase.reuse, Phase.generate])
    settings.load_profile("defects")


def run_catalogue(only: list[str] | None = None) -> dict[str, Any]:
    import bench.defects.catalogue  # noqa: F401 - registers the entries

    no_shrinking()
    defects = [d for d in CATALOGUE.values() if not only or d.id in only]
    start = time.perf_counter()
    known = _known_falsifiers()
    with tempfile.TemporaryDirectory(prefix="defects-") as tmp:
        work = Path(tmp)
        sources = build_sources(work)
        results = []
        for d in defects:
            folder = work / d.id
            folder.mkdir()
            results.append(run_one(d, sources, known, folder))
        clean = run_clean(defects, sources, known, work)
    return summarise(results, clean, time.perf_counter() - start)


def summarise(results: list[Result], clean: Result, seconds: float) -> dict[str, Any]:
    runnable = [r for r in results if r.status != "not yet runnable"]
    killed = [r for r in runnable if r.status == "killed"]
    right = [r for r in runnable if r.diagnosis_right]
    false_alarms = len(clean.red)
    line = (
        f"killed {len(killed)}/{len(runnable)} · diagnosis right {len(right)}/{len(runnable)} "
        f"· false alarms {false_alarms} · {seconds:.0f} s"
    )
    return {
        "summary": line,
        "killed": len(killed),
        "runnable": len(runnable),
        "catalogue": len(results),
        "not_yet_runnable": len(results) - len(runnable),
        "diagnosis_right": len(right),
        "false_alarms": false_alarms,
        "seconds": round(seconds, 1),
        "defects": [r.as_dict() for r in results],
        "clean": clean.as_dict(),
    }
