"""The lock: the exact versions the suite passed with, and the job that watches upstream.

    python3 ci/lockfile.py write [--no-tests]   # newest versions, the suite, then the lock
    python3 ci/lockfile.py latest               # newest versions, the suite, what moved

Both build a fresh virtual environment (``.venv-latest``) with no version pinned but torch's
(``torch==2.13.0``: an unpinned torch pulls a multi-GB CUDA build) and an empty pip cache,
so the resolver takes what a new user would get today. ``write`` runs the README's test
command there and writes ``requirements.lock`` only when it passes: the lock always holds a
set of versions that was proven. ``latest`` is the weekly canary (``ci/run-latest``,
scheduled in the workflow): when the suite fails on today's versions, it names the
packages whose versions differ from the lock, so an upstream break is seen here first.

``pyproject.toml`` keeps loose ranges (users install provable into their own environment);
the README's two commands and ``.ci/run`` install with ``-r requirements.lock``.

Standard library only: it runs before anything is installed.
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LOCK = ROOT / "requirements.lock"
VENV = ROOT / ".venv-latest"
TORCH = "torch==2.13.0"

#: llama.cpp built for any x86-64 CPU with AVX2: no ``-march=native`` (which compiles AMX
#: and AVX-512 code that dies with SIGILL where the OS or hypervisor does not enable it)
PORTABLE_LLAMA_CPP = {
    "GGML_NATIVE": "OFF",
    "GGML_AVX": "ON",
    "GGML_AVX2": "ON",
    "GGML_FMA": "ON",
    "GGML_F16C": "ON",
    "GGML_BMI2": "ON",
    "GGML_AVX512": "OFF",
    "GGML_AMX_TILE": "OFF",
    "GGML_AMX_INT8": "OFF",
    "GGML_AMX_BF16": "OFF",
    # the multimodal library (libmtmd): nothing here uses it, and it is a third of the build
    "LLAVA_BUILD": "OFF",
}
#: pip's per-requirement build options (scikit-build-core's ``cmake.define``), which a
#: requirements file carries and a constraints file cannot
PER_REQUIREMENT_OPTIONS = {
    "llama-cpp-python": [
        f"--config-settings=cmake.define.{k}={v}" for k, v in PORTABLE_LLAMA_CPP.items()
    ]
}
#: installed by venv itself, not by the project
NOT_LOCKED = {"pip", "setuptools", "wheel", "provable"}
#: environment markers a pin keeps (pyproject.toml's own: triton is Linux-only)
MARKERS = {"triton": 'platform_system == "Linux"'}

_PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;]+)")


def canonical(name: str) -> str:
    """PEP 503 name: ``Llama_CPP.python`` → ``llama-cpp-python``."""
    return re.sub(r"[-_.]+", "-", name).lower()


def parse_pins(text: str) -> dict[str, str]:
    """``name==version`` lines of a freeze or a lock (comments and options ignored)."""
    pins: dict[str, str] = {}
    for line in text.splitlines():
        m = _PIN.match(line.strip())
        if m:
            pins[canonical(m.group(1))] = m.group(2)
    return pins


def render_lock(pins: dict[str, str], header: str) -> str:
    """The lock's text: a header, then one pin a line in name order, each with its options."""
    lines = [f"# {line}" if line else "#" for line in header.splitlines()]
    for name in sorted(pins):
        if name in NOT_LOCKED:
            continue
        # a local version label (torch's ``+cpu``) names one index's build: ``==2.13.0``
        # matches it there and the plain release elsewhere (PEP 440)
        pin = f"{name}=={pins[name].split('+', 1)[0]}"
        if name in MARKERS:
            pin += f" ; {MARKERS[name]}"
        options = PER_REQUIREMENT_OPTIONS.get(name, [])
        lines.append(" ".join([pin, *options]))
    return "\n".join(lines) + "\n"


def moved(locked: dict[str, str], now: dict[str, str]) -> list[str]:
    """What differs between the lock and an environment, one line a package."""
    out = []
    for name in sorted(set(locked) | set(now)):
        if name in NOT_LOCKED:
            continue
        was, is_ = locked.get(name), now.get(name)
        if was == is_:
            continue
        if was is None:
            out.append(f"{name}: new, {is_}")
        elif is_ is None:
            out.append(f"{name}: {was}, gone")
        else:
            out.append(f"{name}: {was} -> {is_}")
    return out


def _run(cmd: list[str], **kw: object) -> int:
    print("+", " ".join(cmd), flush=True)
    return subprocess.run(cmd, cwd=ROOT, **kw).returncode  # type: ignore[call-overload]


def fresh_environment() -> Path:
    """A new venv with the newest versions pyproject.toml admits, built from an empty cache."""
    shutil.rmtree(VENV, ignore_errors=True)
    if _run([sys.executable, "-m", "venv", str(VENV)]):
        sys.exit("could not create the virtual environment")
    pip = str(VENV / "bin" / "pip")
    portable = [o for opts in PER_REQUIREMENT_OPTIONS.values() for o in opts]
    env = {**os.environ, "PIP_NO_CACHE_DIR": "1", "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
    # llama-cpp-python first, on its own, so its build options apply to it alone
    if _run([pip, "install", "-q", *portable, "llama-cpp-python"], env=env):
        sys.exit("llama-cpp-python did not build")
    if _run([pip, "install", "-q", TORCH, "-e", ".[test]"], env=env):
        sys.exit("the project did not install")
    return VENV


def freeze(venv: Path) -> dict[str, str]:
    out = subprocess.run(
        [str(venv / "bin" / "pip"), "freeze", "--exclude-editable"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return parse_pins(out)


def run_suite(venv: Path, extra: list[str]) -> int:
    """The README's test command in ``venv``, reading statuses only (a canary writes none)."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    return _run(
        [str(venv / "bin" / "pytest"), "-p", "no:cacheprovider", "--no-status-write", *extra],
        env=env,
    )


def header() -> str:
    return (
        "The exact versions the suite passed with, made by `python3 ci/lockfile.py write`:\n"
        "a fresh venv, the newest versions pyproject.toml admits, the suite run, pip freeze.\n"
        "Do not edit by hand. pyproject.toml keeps the loose ranges; this file is what the\n"
        "README's commands and .ci/run install. llama-cpp-python is built for any x86-64 CPU\n"
        "with AVX2 (the options on its line).\n"
        f"Made on {platform.system()} {platform.machine()}, Python {platform.python_version()}."
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="ci/lockfile.py", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    write = sub.add_parser("write", help="write requirements.lock from a passing run")
    write.add_argument("--no-tests", action="store_true", help="write without running the suite")
    sub.add_parser("latest", help="run the suite on the newest versions; name what moved")
    args, pytest_args = parser.parse_known_args(argv)

    venv = fresh_environment()
    now = freeze(venv)
    if args.command == "write":
        if not args.no_tests and (code := run_suite(venv, pytest_args)):
            print(f"suite failed ({code}): {LOCK.name} left as it was", file=sys.stderr)
            return code
        text = render_lock(now, header())
        LOCK.write_text(text, encoding="utf-8")
        print(f"wrote {LOCK.name}: {len(parse_pins(text))} pins")
        return 0
    code = run_suite(venv, pytest_args)
    locked = parse_pins(LOCK.read_text(encoding="utf-8")) if LOCK.exists() else {}
    changes = moved(locked, now)
    if code:
        print(f"the suite fails on today's versions (pytest exit {code}).", file=sys.stderr)
        print("packages whose versions differ from requirements.lock:", file=sys.stderr)
        for line in changes or ["(none: the break is not a version change)"]:
            print(f"  {line}", file=sys.stderr)
    else:
        print(f"the suite passes on today's versions ({len(changes)} differ from the lock)")
    return code


if __name__ == "__main__":
    sys.exit(main())
