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

from provable.contracts.evidence import (
    EVIDENCE_PROPERTY,
    MAX_MESSAGE_CHARS,
    Evidence,
    clean_message,
)
from provable.contracts.findings import display_path
from provable.contracts.lifecycle import (
    Raised,
    TestVerdict,
    after_rerun,
    classify_failure,
    worst,
)
from provable.contracts.registry import BindingError, Registry
from provable.plugin.session import FalsifierRun, SessionScope, TestResult, test_file

__all__ = ["FalsifierRun", "ProvablePlugin", "TestResult", "cuda_available", "evidence"]

EXAMPLES_OUTPUT = "provable_examples"
BOUND_OUTPUT = "provable_bound"
FILES_OUTPUT = "provable_files"
CUDA_SKIP_REASON = "no CUDA device"
#: a failed falsifier test's classification, on its report (pytest-xdist carries it)
VERDICT_PROPERTY = "provable.verdict"
#: what a not-checked or flaky test's error keeps: enough to act on, bounded
MAX_ERROR_CHARS = 500


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
    parser.addini(
        "provable_environment_errors",
        "exception classes (module:Qualname) that mean 'not checked', never 'refuted', when a "
        "falsifier test raises them",
        type="linelist",
        default=[],
    )


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "falsifies(*ids, environment=(), rerun=True): bind this test to falsifiers "
        "FALSIFY-<PREFIX>-<NNN> (or contract-id:FALSIFY-... where two contracts declare the "
        "ID); its outcome rewrites their status. environment: exception classes that mean "
        "'not checked'; rerun=False: a failure is recorded without the confirming re-run",
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
        self.outcome: Any = None  # the SessionOutcome of provable.plugin.update, at session finish
        self.last_failed_only = False  # --lf with failures to rerun (set at session start)
        self.collect_errors: dict[str, str] = {}  # test file -> why it did not import
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
                from provable.contracts.paths import project_root
                from provable.plugin.writer import recover

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

    def pytest_collectreport(self, report: pytest.CollectReport) -> None:
        """A test module that failed to import: its falsifiers were not checked."""
        if not self.is_worker and report.failed and "::" not in report.nodeid:
            self.collect_errors[report.nodeid] = report.longreprtext or "collection error"

    # --- running -----------------------------------------------------------------------

    @pytest.hookimpl(tryfirst=True)
    def pytest_runtest_protocol(self, item: pytest.Item, nextitem: pytest.Item | None) -> Any:
        """Re-run a refuting failure once, from fresh fixtures, before it is recorded.

        The whole protocol runs again (setup, call, teardown: function-scoped fixtures are
        made anew, as pytest-rerunfailures does), with the same inputs: parametrised values,
        seeds, and hypothesis replaying its failing example (derandomised falsifiers draw
        the same examples). Only the first attempt's reports are logged; the verdict of the
        pair rides on its call report and a section says what the re-run did, so a failure
        is never hidden. Tests bound to no falsifier, or with ``rerun=False``, run as usual.
        """
        if not _rerun_wanted(item):
            return None
        from _pytest.runner import runtestprotocol

        ihook = item.ihook
        ihook.pytest_runtest_logstart(nodeid=item.nodeid, location=item.location)
        reports = runtestprotocol(item, nextitem=nextitem, log=False)
        first = next((r for r in reports if r.when == "call" and r.failed), None)
        if first is not None and _verdict_of(first) is TestVerdict.REFUTED:
            first_raised = item.stash.get(_CALL_RAISED, ())
            again = runtestprotocol(item, nextitem=nextitem, log=False)
            second_call = next((r for r in again if r.when == "call"), None)
            failed = [r for r in again if r.failed]
            if not failed:
                verdict, said = TestVerdict.FLAKY, "passed"
            else:
                worst_report = (
                    second_call if second_call is not None and second_call.failed else failed[0]
                )
                second = _verdict_of(worst_report) or TestVerdict.NOT_CHECKED
                again_raised = (
                    item.stash.get(_CALL_RAISED, ()) if worst_report is second_call else ()
                )
                verdict = after_rerun(
                    first_raised[0] if first_raised else None,
                    second,
                    again_raised[0] if again_raised else None,
                )
                said = (
                    f"{again_raised[0].name}: {_first_line(again_raised[0].message)}"
                    if again_raised
                    else f"error in {worst_report.when}"
                )
            _set_verdict(first, verdict, said)
        for report in reports:
            ihook.pytest_runtest_logreport(report=report)
        ihook.pytest_runtest_logfinish(nodeid=item.nodeid, location=item.location)
        return True

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_makereport(self, item: pytest.Item, call: Any) -> Any:
        """Classify a falsifier test's failure where its exception is still at hand."""
        report = yield
        if not report.failed or item.get_closest_marker("falsifies") is None:
            return report
        raised = raised_from(call.excinfo.value) if call.excinfo is not None else ()
        if report.when == "call":
            item.stash[_CALL_RAISED] = raised
        verdict = classify_failure(report.when, raised, self._environment(item))
        error = {
            "type": raised[0].name if raised else "?",
            "message": _bounded(raised[0].message if raised else report.longreprtext),
            "when": report.when,
            "frame": _test_frame(call.excinfo, item.config.rootpath),
        }
        record = {"verdict": verdict.value, "error": error}
        report.user_properties = [*report.user_properties, (VERDICT_PROPERTY, record)]
        return report

    def _environment(self, item: pytest.Item) -> frozenset[str]:
        """Exception classes declared environmental for ``item`` (marker and ini)."""
        names = set(self.config.getini("provable_environment_errors"))
        for mark in item.iter_markers("falsifies"):
            declared = mark.kwargs.get("environment", ())
            if isinstance(declared, (type, str)):
                declared = (declared,)
            for cls in declared:
                names.add(cls if isinstance(cls, str) else f"{cls.__module__}:{cls.__qualname__}")
        return frozenset(names)

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
        self._join_collection_errors()
        if not self.runs and self.selected is None:
            try:
                if not self.registry.contracts:
                    return  # a project without contracts: stay out of the way
            except pytest.UsageError:
                return  # no test is bound, so an unreadable contract changes nothing here
        from provable.plugin.update import apply_session

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
        if session.exitstatus == pytest.ExitCode.OK and self._unsettled():
            # a not-checked, flaky or xfailed falsifier test: the verdict is not "all green",
            # so neither is the exit code
            session.exitstatus = pytest.ExitCode.TESTS_FAILED

    def _unsettled(self) -> bool:
        return any(
            r.outcome in (TestVerdict.NOT_CHECKED.value, TestVerdict.FLAKY.value) or r.hidden_xfail
            for run in self.runs.values()
            for r in run.results.values()
        )

    def _join_collection_errors(self) -> None:
        """Falsifiers bound in a module that did not import: not checked, by name."""
        from provable.plugin.markers import bound_ids

        for file, text in sorted(self.collect_errors.items()):
            try:
                source = Path(self.config.rootpath, file).read_text(encoding="utf-8")
            except (OSError, UnicodeDecodeError):
                continue
            try:
                ids = bound_ids(source)
            except (SyntaxError, ValueError):
                from provable.contracts.rules import FALSIFIER_REF  # a module that does not parse

                ids = set(FALSIFIER_REF.findall(source))
            for fid in sorted(ids):
                try:
                    qid = self.registry.resolve(fid)
                except (BindingError, pytest.UsageError):
                    continue
                run = self.runs.setdefault(qid, FalsifierRun(qid))
                nodeid = f"{file}::(collection error)"
                run.bound["cpu"].add(nodeid)
                last = [ln for ln in text.strip().splitlines() if ln.strip()]
                message = _bounded(last[-1] if last else "collection error")
                run.results[nodeid] = TestResult(
                    outcome=TestVerdict.NOT_CHECKED.value,
                    message=clean_message(text[-MAX_MESSAGE_CHARS:]),
                    error={
                        "type": "collection error",
                        "message": message,
                        "when": "collect",
                        "frame": file,
                    },
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

        from provable.plugin.markers import bound_ids

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
        from provable.plugin.summary import write_summary

        write_summary(terminalreporter, self.outcome)


def _apply_report(result: TestResult, report: pytest.TestReport, recorded: Any) -> None:
    """Fold one report (setup, call, teardown, or a lost worker's) into a test's result.

    The verdict that tells most wins (``lifecycle.VERDICT_RANK``): a refutation over an
    error over a flaky pass over a pass. A report without a classification (a worker that
    died mid-test, whose report xdist makes up) is classified by its phase alone.
    """
    result.duration += report.duration
    if recorded:
        result.recorded = recorded
    prop = next((v for k, v in report.user_properties if k == VERDICT_PROPERTY), None)
    text = report.longreprtext or ""
    if report.outcome == "rerun":  # pytest-rerunfailures: a failed attempt, re-run
        result.observed_failure = clean_message(text[-MAX_MESSAGE_CHARS:])
        return
    if hasattr(report, "wasxfail"):
        verdict = TestVerdict.REFUTED
        message = "xfail inside a falsifier test: a hidden refutation"
        result.hidden_xfail = True
        error = None
    elif report.failed:
        if isinstance(prop, dict) and prop.get("verdict") in _VERDICT_WORDS:
            verdict = TestVerdict(prop["verdict"])
            error = prop.get("error") if isinstance(prop.get("error"), dict) else None
        else:
            verdict = classify_failure(report.when, ())
            error = {
                "type": "worker crashed"
                if report.when not in ("setup", "call", "teardown")
                else "?",
                "message": _bounded(_first_line(clean_message(text) or "")),
                "when": report.when,
                "frame": report.nodeid,
            }
        message = text[-MAX_MESSAGE_CHARS:]
        if verdict is not TestVerdict.REFUTED and report.when != "call":
            message = f"error in {report.when}: {message}"
    elif report.when == "call" and report.passed:
        verdict, message, error = TestVerdict.PASSED, None, None
        if result.observed_failure:  # another plugin re-ran a failure and it passed
            verdict, message = TestVerdict.FLAKY, result.observed_failure
            error = {
                "type": "failed, then passed on a re-run",
                "message": _bounded(_first_line(message or "")),
                "when": "call",
                "frame": report.nodeid,
            }
    elif report.skipped:
        longrepr = report.longrepr
        verdict, error = TestVerdict.SKIPPED, None
        message = longrepr[2] if isinstance(longrepr, tuple) else str(longrepr)
    else:
        return
    before = TestVerdict(result.outcome) if result.outcome in _VERDICT_WORDS else None
    after = worst(before, verdict)
    if after is not before:
        result.outcome = after.value
        result.message = message
        result.error = error
        if after is TestVerdict.REFUTED:
            result.error = None


_VERDICT_WORDS = frozenset(v.value for v in TestVerdict)
_CALL_RAISED = pytest.StashKey[tuple[Raised, ...]]()


def _verdict_of(report: Any) -> TestVerdict | None:
    prop = next((v for k, v in report.user_properties if k == VERDICT_PROPERTY), None)
    word = prop.get("verdict") if isinstance(prop, dict) else None
    return TestVerdict(word) if word in _VERDICT_WORDS else None


def _set_verdict(report: Any, verdict: TestVerdict, said: str) -> None:
    """Put the re-run's conclusion on the first attempt's call report (what is logged)."""
    props = []
    for key, value in report.user_properties:
        if key == VERDICT_PROPERTY and isinstance(value, dict):
            error = dict(value.get("error") or {})
            error["rerun"] = said[:MAX_ERROR_CHARS]
            value = {**value, "verdict": verdict.value, "error": error}
        props.append((key, value))
    report.user_properties = props
    if verdict is TestVerdict.REFUTED:
        text = "re-run once with the same inputs: failed again the same way"
    else:
        meaning = verdict.value.replace("_", " ")
        text = f"re-run once with the same inputs: {said} — {meaning}, not a refutation"
    report.sections.append(("provable", text))


def raised_from(exc: BaseException) -> tuple[Raised, ...]:
    """An exception as data; an exception group as its leaves."""
    leaves = getattr(exc, "exceptions", None)
    if (
        isinstance(leaves, (list, tuple))
        and isinstance(exc, BaseException)
        and type(exc).__name__.endswith("ExceptionGroup")
    ):
        return tuple(r for leaf in leaves for r in raised_from(leaf))
    types = tuple(f"{c.__module__}:{c.__qualname__}" for c in type(exc).__mro__ if c is not object)
    errno = getattr(exc, "errno", None)
    return (Raised(types, _bounded(str(exc)), errno if isinstance(errno, int) else None),)


def _rerun_wanted(item: pytest.Item) -> bool:
    marks = list(item.iter_markers("falsifies"))
    return bool(marks) and all(m.kwargs.get("rerun", True) for m in marks)


def _first_line(text: str) -> str:
    return next((ln.strip() for ln in text.splitlines() if ln.strip()), "")


def _bounded(text: str | None) -> str:
    text = clean_message(text or "") or ""
    return text if len(text) <= MAX_ERROR_CHARS else text[: MAX_ERROR_CHARS - 1] + "…"


def _test_frame(excinfo: Any, root: Path) -> str | None:
    """The innermost frame of the project's own code (not a dependency's): ``file:line in f``."""
    if excinfo is None:
        return None
    found = None
    try:
        entries = list(excinfo.traceback)
    except Exception:  # pragma: no cover - a traceback pytest cannot walk
        return None
    for entry in entries:
        try:
            rel = Path(entry.path).resolve().relative_to(root)
        except (ValueError, OSError, TypeError):
            continue
        if any(
            part in ("site-packages", "dist-packages") or part.startswith(".venv")
            for part in rel.parts
        ):
            continue
        found = f"{rel.as_posix()}:{entry.lineno + 1} in {entry.name}"
    return found
