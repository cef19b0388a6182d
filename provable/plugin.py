"""The pytest plugin: bind ``FALSIFY-*`` IDs to tests, run them, rewrite contract statuses.

Results travel on test reports (``user_properties``), which pytest-xdist serialises, and
only the controller writes; workers send their binding table through ``workeroutput``.
"""

from __future__ import annotations

import difflib
import os
from pathlib import Path
from typing import Any

import pytest

from provable.evidence import EVIDENCE_PROPERTY, MAX_MESSAGE_CHARS, Evidence
from provable.findings import display_path
from provable.registry import BindingError, Registry
from provable.session import FalsifierRun, SessionScope, TestResult, test_file

__all__ = ["FalsifierRun", "ProvablePlugin", "TestResult", "cuda_available", "evidence"]

EXAMPLES_OUTPUT = "provable_examples"
BOUND_OUTPUT = "provable_bound"
FILES_OUTPUT = "provable_files"
CUDA_SKIP_REASON = "no CUDA device"


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("provable", "contract falsification (provable)")
    group.addoption(
        "--contract",
        action="append",
        default=[],
        metavar="ID",
        help="run only the tests bound to this contract's falsifiers (repeatable)",
    )
    group.addoption(
        "--falsifier",
        action="append",
        default=[],
        metavar="FALSIFY-ID",
        help="run only the tests bound to this falsifier (repeatable; contract-id:ID to qualify)",
    )
    group.addoption(
        "--no-status-write",
        action="store_true",
        default=False,
        help="touch no contract or evidence file; print what would change",
    )
    parser.addini("contracts_dir", "folder of contract YAML files", default="contracts")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "falsifies(*ids): bind this test to falsifiers FALSIFY-<PREFIX>-<NNN> (or "
        "contract-id:FALSIFY-... where two contracts declare the ID); its outcome rewrites "
        "their status",
    )
    config.addinivalue_line(
        "markers",
        f"cuda: needs a CUDA device; skipped with '{CUDA_SKIP_REASON}' elsewhere, "
        "select with -m cuda on a GPU host",
    )
    config.pluginmanager.register(ProvablePlugin(config), "provable-session")


class _CurrentTestEvidence:
    """The ``evidence`` object: records into whichever test is running now.

    Session-scoped, so that a ``@given`` test may take it without tripping hypothesis's
    function-scoped-fixture health check; each test starts with no recorded values.
    """

    def __init__(self) -> None:
        self._current: Evidence | None = None

    def start(self, item: pytest.Item) -> None:
        self._current = Evidence(item)

    @property
    def values(self) -> dict[str, Any]:
        return self._current.values if self._current else {}

    def record(self, **values: Any) -> None:
        if self._current is None:
            raise RuntimeError("evidence.record() outside a running test")
        self._current.record(**values)


_EVIDENCE_KEY = pytest.StashKey[_CurrentTestEvidence]()


@pytest.fixture(scope="session")
def evidence(request: pytest.FixtureRequest) -> _CurrentTestEvidence:
    """Record measured values for the falsifier evidence file: ``evidence.record(x=...)``."""
    return request.config.stash.setdefault(_EVIDENCE_KEY, _CurrentTestEvidence())


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    item.config.stash.setdefault(_EVIDENCE_KEY, _CurrentTestEvidence()).start(item)


_cuda_available: bool | None = None


def cuda_available() -> bool:
    """Whether torch sees a CUDA device (torch is imported only when a cuda test asks)."""
    global _cuda_available
    if _cuda_available is None:
        try:
            import torch
        except ImportError:
            _cuda_available = False
        else:
            _cuda_available = bool(torch.cuda.is_available())
    return _cuda_available


class ProvablePlugin:
    def __init__(self, config: pytest.Config) -> None:
        self.config = config
        self.is_worker = hasattr(config, "workerinput")
        self.contracts_dir = Path(config.rootpath, config.getini("contracts_dir"))
        self._registry: Registry | None = None
        self.runs: dict[str, FalsifierRun] = {}
        self._resolved: dict[str, str] = {}
        self.results: dict[str, TestResult] = {}  # nodeid -> outcome, every test
        self.examples: dict[str, str] = {}  # nodeid -> hypothesis counterexample
        self.selected: set[str] | None = None
        self.collected_files: set[str] = set()  # test files whose collection ran
        self.outcome: Any = None  # the SessionOutcome of provable.update, at session finish
        self.last_failed_only = False  # --lf with failures to rerun (set at session start)
        opts = config.option
        if (opts.contract or opts.falsifier) and not self.registry.contracts:
            raise pytest.UsageError(
                f"--contract/--falsifier given, but no contract was found in "
                f"{display_path(self.contracts_dir)}"
            )
        if opts.contract or opts.falsifier:
            self.selected = self._selection(opts.contract, opts.falsifier)

    # --- contracts ---------------------------------------------------------------------

    @property
    def registry(self) -> Registry:
        if self._registry is None:
            if not self.config.option.no_status_write and self.contracts_dir.is_dir():
                from provable.paths import project_root
                from provable.writer import recover

                recover(self.contracts_dir, project_root(self.contracts_dir) / "evidence")
            try:
                self._registry = Registry.load(self.contracts_dir)
            except BindingError as exc:
                raise pytest.UsageError(str(exc)) from None
        return self._registry

    def _selection(self, contracts: list[str], falsifiers: list[str]) -> set[str]:
        selected: set[str] = set()
        known = sorted(self.registry.contracts)
        for cid in contracts:
            if cid not in self.registry.contracts:
                near = difflib.get_close_matches(cid, known, n=1)
                hint = f" Did you mean {near[0]!r}?" if near else ""
                raise pytest.UsageError(
                    f"--contract {cid}: no such contract in {display_path(self.contracts_dir)}."
                    f"{hint} Known: {', '.join(known)}"
                )
            selected.update(f"{cid}:{f.id}" for f in self.registry.contracts[cid].falsifiers)
        for ref in falsifiers:
            try:
                selected.add(self.registry.resolve(ref))
            except BindingError as exc:
                raise pytest.UsageError(f"--falsifier {ref}: {exc}") from None
        return selected

    # --- collection --------------------------------------------------------------------

    def pytest_sessionstart(self, session: pytest.Session) -> None:
        """Whether ``--lf`` will narrow collection: it has failures to rerun (read now, as it
        forgets each one that passes during the run)."""
        last_failed = self.config.pluginmanager.get_plugin("lfplugin")
        self.last_failed_only = bool(
            self.config.getoption("lf", False) and getattr(last_failed, "lastfailed", None)
        )

    @pytest.hookimpl(tryfirst=True)
    def pytest_collection_modifyitems(
        self, session: pytest.Session, config: pytest.Config, items: list[pytest.Item]
    ) -> None:
        keep: list[pytest.Item] = []
        deselected: list[pytest.Item] = []
        self.collected_files.update(test_file(item.nodeid) for item in items)
        for item in items:
            marks = list(item.iter_markers())  # one walk over the node chain
            names = {m.name for m in marks}
            if "cuda" in names and not cuda_available():
                item.add_marker(pytest.mark.skip(reason=CUDA_SKIP_REASON))
            if "falsifies" not in names:
                (deselected if self.selected is not None else keep).append(item)
                continue
            try:
                falsifies = [m for m in marks if m.name == "falsifies"]
                qids = self._bind(falsifies, "xfail" in names)
            except BindingError as exc:
                self._collection_error(item, str(exc))
                continue
            kind = "cuda" if "cuda" in names else "cpu"
            for qid in qids:
                self.runs.setdefault(qid, FalsifierRun(qid)).bound[kind].add(item.nodeid)
            if self.selected is None or self.selected.intersection(qids):
                keep.append(item)
            else:
                deselected.append(item)
        if deselected:
            config.hook.pytest_deselected(items=deselected)
        items[:] = keep

    def _bind(self, marks: list[pytest.Mark], xfail: bool) -> list[str]:
        if xfail:
            raise BindingError(
                "xfail on a falsifier test would hide a refutation; remove the xfail "
                "(a known-false claim is FALSIFIED, not expected to fail)"
            )
        qids: list[str] = []
        for mark in marks:
            if not mark.args:
                raise BindingError("@pytest.mark.falsifies needs at least one FALSIFY-* ID")
            for ref in mark.args:
                if not isinstance(ref, str):
                    raise BindingError(f"falsifies({ref!r}): IDs are strings")
                qid = self._resolved.get(ref) or self._resolved.setdefault(
                    ref, self.registry.resolve(ref)
                )
                if qid not in qids:
                    qids.append(qid)
        return qids

    def _collection_error(self, item: pytest.Item, message: str) -> None:
        path, line, _ = item.location
        report = pytest.CollectReport(
            item.nodeid,
            "failed",
            f"{path}:{(line or 0) + 1}: {item.name}: {message}",
            [],
        )
        item.ihook.pytest_collectreport(report=report)

    # --- running -----------------------------------------------------------------------

    def pytest_exception_interact(self, node: Any, call: Any, report: Any) -> None:
        """Keep a hypothesis counterexample (the exception's notes) of a failed test.

        Called for failures only (a hook wrapper on every report would cost every test);
        workers send what they kept through ``workeroutput`` at the end.
        """
        notes = getattr(call.excinfo.value, "__notes__", None) if call.excinfo else None
        if notes:
            self.examples[report.nodeid] = "\n".join(str(n) for n in notes)[:4000]

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        """Keep every test's outcome by node id; bindings are joined at the end.

        Bindings come from the collection table (here, or from xdist workers), so reports
        carry nothing extra but the values a test recorded.
        """
        if self.is_worker or (report.passed and report.when != "call"):
            return  # a passing setup/teardown changes nothing
        result = self.results.get(report.nodeid)
        if result is None:
            result = self.results[report.nodeid] = TestResult()
        recorded = None
        for key, value in report.user_properties:
            if key == EVIDENCE_PROPERTY:
                recorded = value
        _apply_report(result, report, recorded)

    def pytest_sessionfinish(self, session: pytest.Session, exitstatus: int) -> None:
        if self.is_worker:
            self.config.workeroutput[BOUND_OUTPUT] = {  # type: ignore[attr-defined]
                qid: {kind: sorted(ids) for kind, ids in run.bound.items()}
                for qid, run in self.runs.items()
            }
            self.config.workeroutput[EXAMPLES_OUTPUT] = self.examples  # type: ignore[attr-defined]
            self.config.workeroutput[FILES_OUTPUT] = sorted(self.collected_files)  # type: ignore[attr-defined]
            return
        self._join_results()
        if not self.runs and self.selected is None:
            try:
                if not self.registry.contracts:
                    return  # a project without contracts: stay out of the way
            except pytest.UsageError:
                return  # no test is bound, so an unreadable contract changes nothing here
        from provable.update import apply_session

        opts = self.config.option
        whole_suite = not (opts.file_or_dir or opts.keyword or opts.markexpr)
        self.outcome = apply_session(
            registry=self.registry,
            runs=self.runs,
            selected=self.selected,
            whole_suite=whole_suite,
            interrupted=exitstatus == pytest.ExitCode.INTERRUPTED,
            write=not self.config.option.no_status_write,
            scope=self._scope(),
        )

    def _scope(self) -> SessionScope:
        """Test files this session collected whole: a file named with ``::`` was narrowed
        to some of its tests, so its other tests may still exist unseen."""
        root = self.config.rootpath
        narrowed = set()
        if self.last_failed_only:
            # --lf drops a file's passing tests while collecting it (no deselection event,
            # no ``::`` argument): every file it collected may hold bound tests not seen
            narrowed.update(self.collected_files)
        for arg in self.config.args:
            if "::" in arg:
                path = Path(self.config.invocation_params.dir, test_file(arg))
                try:
                    narrowed.add(path.resolve().relative_to(root).as_posix())
                except ValueError:
                    narrowed.add(test_file(arg))
        return SessionScope(
            root,
            frozenset(self.collected_files),
            frozenset(narrowed),
            uncollected_bindings=self._uncollected_bindings(),
        )

    def _uncollected_bindings(self) -> dict[str, frozenset[str]]:
        """Falsifier IDs bound, by their source, in test files this session did not collect.

        Read from the files' syntax (no import), below ``testpaths`` (else the rootdir),
        skipping what pytest's ``norecursedirs`` skips.
        """
        from fnmatch import fnmatch

        from provable.skeleton import bound_ids

        root = self.config.rootpath
        patterns = self.config.getini("python_files")
        skip_dirs = self.config.getini("norecursedirs")
        bases = [root / p for p in self.config.getini("testpaths")] or [root]
        found: dict[str, set[str]] = {}
        for base in bases:
            for dirpath, dirnames, filenames in os.walk(base):
                dirnames[:] = [d for d in dirnames if not any(fnmatch(d, p) for p in skip_dirs)]
                for name in filenames:
                    if not name.endswith(".py") or not any(fnmatch(name, p) for p in patterns):
                        continue
                    path = Path(dirpath, name)
                    try:
                        rel = path.relative_to(root).as_posix()
                    except ValueError:
                        continue
                    if rel in self.collected_files:
                        continue
                    try:
                        source = path.read_text(encoding="utf-8")
                        ids = bound_ids(source) if "falsifies" in source else set()
                    except (OSError, UnicodeDecodeError, SyntaxError, ValueError):
                        continue
                    for fid in ids:
                        found.setdefault(fid, set()).add(rel)
        return {fid: frozenset(files) for fid, files in found.items()}

    def _join_results(self) -> None:
        """Give each falsifier the results of the tests bound to it, with their host kind."""
        for run in self.runs.values():
            for kind, nodeids in run.bound.items():
                for nodeid in nodeids:
                    result = self.results.get(nodeid)
                    if result is None or result.outcome == "pending":
                        continue
                    result.kind = kind
                    result.example = self.examples.get(nodeid, result.example)
                    run.results[nodeid] = result

    @pytest.hookimpl(optionalhook=True)  # defined by pytest-xdist, which may be absent
    def pytest_testnodedown(self, node: Any, error: Any) -> None:
        """xdist controller: take the binding table and counterexamples of a worker."""
        output = getattr(node, "workeroutput", {})
        self.examples.update(output.get(EXAMPLES_OUTPUT, {}))
        self.collected_files.update(output.get(FILES_OUTPUT, []))
        for qid, kinds in output.get(BOUND_OUTPUT, {}).items():
            run = self.runs.setdefault(qid, FalsifierRun(qid))
            for kind, nodeids in kinds.items():
                run.bound[kind].update(nodeids)

    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        if self.is_worker or self.outcome is None:
            return
        from provable.summary import write_summary

        write_summary(terminalreporter, self.outcome)


def _apply_report(result: TestResult, report: pytest.TestReport, recorded: Any) -> None:
    result.duration += report.duration
    if recorded:
        result.recorded = recorded
    if hasattr(report, "wasxfail"):
        result.outcome = "failed"
        result.message = "xfail inside a falsifier test: a hidden refutation"
        return
    if report.failed:
        result.outcome = "failed"
        text = report.longreprtext or ""
        if report.when != "call":
            text = f"error in {report.when}: {text}"
        result.message = text[-MAX_MESSAGE_CHARS:]
    elif report.when == "call" and report.passed and result.outcome == "pending":
        result.outcome = "passed"
    elif report.skipped and result.outcome != "failed":
        result.outcome = "skipped"
        longrepr = report.longrepr
        result.message = longrepr[2] if isinstance(longrepr, tuple) else str(longrepr)
