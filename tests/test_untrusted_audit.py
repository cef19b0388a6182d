"""``pv audit --binding``: a bound module never decides audit's result.

Bound modules are imported in a child process. One that exits (``sys.exit``, ``os._exit``),
dies by a signal, hangs or prints is a finding about that binding, named with what it did;
audit's exit code and stdout stay its own (``--json`` always parses), and the other bindings
are still checked.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

from falsifiers.mini_project import BROKEN_CHAIN, env, make_project, run_pv
from provable.contracts.loading import load_contracts
from provable.reports.binding import check_bindings, load_binding_file

#: checked before and after the hostile one: their verdicts must survive it
GOOD_A = "def f(x: int) -> int:\n    return x\n"
GOOD_B = "def g(y: int) -> int:\n    return y\n"
ENTRY = (
    "  - {{contract: broken-v1.yaml, equation: used, module_path: {module}, "
    'function: {function}, signature: "{signature}", status: implemented}}\n'
)


def project(tmp_path: Path, hostile: dict[str, str]) -> Path:
    """The broken-chain project (errors of its own, so audit exits 1), no pytest config (no
    collection: faster), and a binding file: good_a.f (right signature), each hostile module's
    f, then good_b.g declared with a wrong parameter name."""
    root = make_project(tmp_path, BROKEN_CHAIN, None, name="broken-v1", with_git=False)
    (root / "pyproject.toml").unlink()
    (root / "good_a.py").write_text(GOOD_A)
    (root / "good_b.py").write_text(GOOD_B)
    body = 'version: "1.0.0"\nbindings:\n'
    body += ENTRY.format(module="good_a", function="f", signature="def f(x: int) -> int")
    for name, source in hostile.items():
        (root / f"{name}.py").write_text(textwrap.dedent(source))
        body += ENTRY.format(module=name, function="f", signature="(x)")
    body += ENTRY.format(module="good_b", function="g", signature="(z)")
    (root / "binding.yaml").write_text(body)
    return root


def audit_json(root: Path, *extra: str) -> tuple[subprocess.CompletedProcess[str], dict]:
    result = run_pv(root, "audit", "contracts", "--binding", "binding.yaml", "--json", *extra)
    assert result.returncode == 1, (result.returncode, result.stdout, result.stderr)
    try:
        doc = json.loads(result.stdout)
    except json.JSONDecodeError:
        raise AssertionError(f"--json output does not parse: {result.stdout!r}") from None
    return result, doc


def binding_messages(doc: dict) -> list[tuple[str, str, str]]:
    return [
        (f["severity"], f["rule"], f["message"])
        for f in doc["findings"]
        if f["rule"].startswith("binding")
    ]


def assert_others_checked(doc: dict) -> None:
    """The contracts' own findings are there, good_a has none, good_b's mismatch is found."""
    rules = {f["rule"] for f in doc["findings"] if f["severity"] == "error"}
    assert {"trace-equation", "trace-obligation", "trace-link"} <= rules, rules
    messages = binding_messages(doc)
    assert not [m for m in messages if "good_a" in m[2]], messages
    assert any(
        rule == "binding-signature" and "good_b.g" in msg and "parameters (y), declared (z)" in msg
        for _, rule, msg in messages
    ), messages
    assert doc["summary"]["errors"] >= 4


def only(messages: list[tuple[str, str, str]], needle: str) -> tuple[str, str, str]:
    hits = [m for m in messages if needle in m[2]]
    assert len(hits) == 1, (needle, messages)
    return hits[0]


def test_sys_exit_zero_at_import_is_a_finding_not_audits_exit(tmp_path):
    root = project(tmp_path, {"exits_zero": "import sys\nsys.exit(0)\n"})
    _, doc = audit_json(root, "--strict")
    severity, rule, message = only(binding_messages(doc), "exits_zero")
    assert (severity, rule) == ("error", "binding-import")
    assert "bound module exits_zero exited with status 0 during import" in message
    assert_others_checked(doc)


def test_os_exit_at_import_is_a_finding_and_hides_no_other_verdict(tmp_path):
    """Two modules that end the child with ``os._exit``: each is named, each binding around
    them is still checked (the remaining entries run in a fresh child)."""
    root = project(
        tmp_path,
        {"hard_exit": "import os\nos._exit(0)\n", "hard_exit_3": "import os\nos._exit(3)\n"},
    )
    _, doc = audit_json(root, "--strict")
    messages = binding_messages(doc)
    assert (
        "bound module hard_exit exited with status 0 during import"
        in only(messages, "hard_exit ")[2]
    )
    assert (
        "bound module hard_exit_3 exited with status 3 during import"
        in only(messages, "hard_exit_3")[2]
    )
    assert_others_checked(doc)


def test_print_at_import_keeps_json_parseable_and_is_named(tmp_path):
    root = project(
        tmp_path,
        {
            "chatty": """\
            import os, sys
            print("hello from import")
            os.write(1, b"raw bytes on fd 1\\n")
            print("to stderr", file=sys.stderr)

            def f(x):
                return x
            """
        },
    )
    result, doc = audit_json(root)
    assert "hello from import" not in result.stdout.replace(
        "printed to stdout during import: 'hello from import", ""
    )
    assert "raw bytes on fd 1" not in result.stdout.split('"findings"')[0]
    severity, rule, message = only(binding_messages(doc), "chatty")
    assert (severity, rule) == ("warning", "binding-import")
    assert "bound module chatty printed to stdout during import: 'hello from import" in message
    assert_others_checked(doc)


def test_sleep_past_the_timeout_is_a_finding_and_audit_finishes(tmp_path):
    root = project(tmp_path, {"sleepy": "import time\ntime.sleep(120)\n"})
    script = (
        "from pathlib import Path\n"
        "from provable.reports.audit import audit\n"
        "report = audit(['contracts'], binding=Path('binding.yaml'), binding_timeout=1.0)\n"
        "print(report.render_json())\n"
    )
    started = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-c", script],
        cwd=root,
        env=env(),
        capture_output=True,
        text=True,
        timeout=90,
    )
    assert result.returncode == 0, result.stderr
    assert time.monotonic() - started < 30
    doc = json.loads(result.stdout)
    severity, rule, message = only(binding_messages(doc), "sleepy")
    assert (severity, rule) == ("error", "binding-import")
    assert "bound module sleepy did not finish importing within 1 s" in message
    assert_others_checked(doc)


def test_sigsegv_at_import_is_a_finding(tmp_path):
    root = project(
        tmp_path, {"segfaults": "import os, signal\nos.kill(os.getpid(), signal.SIGSEGV)\n"}
    )
    _, doc = audit_json(root, "--strict")
    severity, rule, message = only(binding_messages(doc), "segfaults")
    assert (severity, rule) == ("error", "binding-import")
    assert "bound module segfaults was killed by signal SIGSEGV during import" in message
    assert_others_checked(doc)


def test_keyboard_interrupt_at_import_is_an_import_error(tmp_path):
    """A BaseException that is not an Exception ended audit itself."""
    root = project(tmp_path, {"interrupts": "raise KeyboardInterrupt\n"})
    _, doc = audit_json(root)
    severity, rule, message = only(binding_messages(doc), "interrupts")
    assert (severity, rule) == ("error", "binding-unresolved")
    assert "cannot import interrupts: KeyboardInterrupt" in message
    assert_others_checked(doc)


def test_non_daemon_thread_left_behind_does_not_hang_audit(tmp_path):
    root = project(
        tmp_path,
        {
            "lingers": """\
            import threading, time
            threading.Thread(target=time.sleep, args=(600,)).start()

            def f(x):
                return x
            """
        },
    )
    result = run_pv_within(root, 60, "audit", "contracts", "--binding", "binding.yaml", "--json")
    assert result.returncode == 1, result.stderr
    doc = json.loads(result.stdout)
    assert not [m for m in binding_messages(doc) if "lingers" in m[2]]
    assert_others_checked(doc)


def run_pv_within(root: Path, seconds: float, *args: str) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(
            [sys.executable, "-m", "provable.cli.main", *args],
            cwd=root,
            env=env(),
            capture_output=True,
            text=True,
            timeout=seconds,
        )
    except subprocess.TimeoutExpired:
        raise AssertionError(f"pv {' '.join(args)} did not finish within {seconds} s") from None


# --- in-process API: the bound module's code never runs in audit's own process ----------


def contracts_of(root: Path) -> dict:
    contracts, _ = load_contracts([str(root / "contracts")])
    return {c.id: c for c in contracts}


def test_module_raising_at_import_is_unresolved_and_its_side_effects_stay_out(
    tmp_path, monkeypatch
):
    root = project(
        tmp_path,
        {
            "raises_at_import": """\
            import os
            os.environ["PV_BOUND_MODULE_RAN_HERE"] = "1"
            raise RuntimeError("boom")
            """
        },
    )
    monkeypatch.syspath_prepend(str(root))
    monkeypatch.delenv("PV_BOUND_MODULE_RAN_HERE", raising=False)
    try:
        findings = check_bindings(load_binding_file(root / "binding.yaml"), contracts_of(root))
        ran_here = os.environ.get("PV_BOUND_MODULE_RAN_HERE")
    finally:
        for name in ("good_a", "good_b", "raises_at_import"):
            sys.modules.pop(name, None)
    hits = [f for f in findings if "raises_at_import" in f.message]
    assert len(hits) == 1 and hits[0].rule == "binding-unresolved", findings
    assert "cannot import raises_at_import: RuntimeError: boom" in hits[0].message
    assert ran_here is None, "the bound module ran in audit's own process"


def test_fine_module_resolves_without_being_imported_by_audit(tmp_path, monkeypatch):
    root = project(tmp_path, {"fine_mod": "def f(x):\n    return x\n"})
    monkeypatch.syspath_prepend(str(root))
    try:
        findings = check_bindings(load_binding_file(root / "binding.yaml"), contracts_of(root))
        imported_here = [n for n in ("good_a", "good_b", "fine_mod") if n in sys.modules]
    finally:
        for name in ("good_a", "good_b", "fine_mod"):
            sys.modules.pop(name, None)
    assert [f.message for f in findings if "good_b.g" not in f.message] == []
    assert [f.rule for f in findings] == ["binding-signature"]
    assert imported_here == [], "audit imported bound modules into its own process"


def test_the_child_runs_audits_provable_not_one_in_the_audited_folder(tmp_path, monkeypatch):
    """A ``provable/`` in the folder audit runs in (the project's, or a hostile one) is not
    the code that imports the bound modules and writes their verdicts."""
    root = project(tmp_path, {"fine_mod": "def f(x):\n    return x\n"})
    (root / "provable").mkdir()
    (root / "provable" / "__init__.py").write_text("import os\nos._exit(7)\n")
    monkeypatch.chdir(root)
    monkeypatch.syspath_prepend(str(root))
    try:
        findings = check_bindings(load_binding_file(root / "binding.yaml"), contracts_of(root))
    finally:
        for name in ("good_a", "good_b", "fine_mod"):
            sys.modules.pop(name, None)
    assert [(f.rule, f.message) for f in findings if "good_b.g" not in f.message] == []


def test_exit_death_and_print_while_resolving_the_function_are_named(tmp_path):
    """Past the import, walking to the function runs module code too (``__getattr__``)."""
    root = project(
        tmp_path,
        {
            "lazy": """\
            import os, sys

            def __getattr__(name):
                if name == "exits":
                    sys.exit(4)
                if name == "dies":
                    os._exit(5)
                if name == "chats":
                    print("looked up")
                    return lambda x: x
                raise AttributeError(name)
            """
        },
    )
    text = (root / "binding.yaml").read_text()
    for function in ("exits", "dies", "chats"):
        text += ENTRY.format(module="lazy", function=function, signature="(x)")
    (root / "binding.yaml").write_text(text)
    _, doc = audit_json(root)
    messages = binding_messages(doc)
    assert only(messages, "lazy.f")[1] == "binding-unresolved"  # no attribute f
    assert (
        "bound function lazy.exits exited with status 4 while being resolved"
        in only(messages, "lazy.exits")[2]
    )
    assert (
        "bound function lazy.dies exited with status 5 while being resolved"
        in only(messages, "lazy.dies")[2]
    )
    severity, rule, message = only(messages, "lazy.chats")
    assert (severity, rule) == ("warning", "binding-import")
    assert "printed to stdout while being resolved: 'looked up\\n'" in message
    assert_others_checked(doc)


def test_a_module_that_removes_the_childs_files_is_named_not_a_traceback(tmp_path):
    """The report and stdout files vanish under audit: still a named finding (the step the
    child was in is known from what was read before), the rest checked in a fresh child."""
    root = project(
        tmp_path,
        {
            "vandal": """\
            import os, shutil
            for fd in range(3, 64):  # the report the child holds open, and its folder
                try:
                    path = os.readlink(f"/proc/self/fd/{fd}")
                except OSError:
                    continue
                if "pv-binding-" in path:
                    shutil.rmtree(os.path.dirname(path), ignore_errors=True)
                    break
            os._exit(0)
            """
        },
    )
    result = run_pv_within(root, 120, "audit", "contracts", "--binding", "binding.yaml", "--json")
    assert result.returncode == 1, result.stderr
    doc = json.loads(result.stdout)
    assert (
        "bound module vandal exited with status 0 during import"
        in only(binding_messages(doc), "vandal")[2]
    )
    assert_others_checked(doc)
