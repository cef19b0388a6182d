"""Evidence: what a falsifier run measured, where, and at which commit.

Two files per contract folder under ``evidence/<contract-id>/``:

* ``<FALSIFY-ID>.json`` (committed) holds what matters and changes only when it changes:
  the outcome, the tests, the values they recorded, the failure and its counterexample, the
  host, and the commit at which this outcome was first observed. A repeat run with the same
  outcome and values rewrites nothing, so ``git status`` stays clean.
* ``history.jsonl`` (ignored by git) gets one line per falsifier per run, with durations and
  a timestamp: everything that varies run to run.
"""

from __future__ import annotations

import datetime as _dt
import json
import math
import os
import platform
import re
import subprocess
import sys
from collections.abc import Mapping
from functools import lru_cache
from importlib import metadata
from pathlib import Path
from typing import Any

from provable.contracts.atomic import fsync_dir, write_atomic

SCHEMA = "provable-evidence/1"
EVIDENCE_PROPERTY = "provable.contracts.evidence"
MAX_MESSAGE_CHARS = 6000
_VOLATILE = ("commit", "dirty", "observed_at", "host")

#: ``<object at 0x7f3a...>``: differs every run, says nothing about the failure
_ADDRESS = re.compile(r"\b0x[0-9a-fA-F]{6,16}\b")
#: pytest-xdist's first line of a worker's report: ``[gw2] linux -- Python 3.11.7 /path``
_XDIST_HEADER = re.compile(r"^\[gw\d+\] [^\n]* -- Python [^\n]*\n", re.MULTILINE)


def clean_message(message: str | None) -> str | None:
    """A failure message as it reads on any machine and in any run: no memory addresses,
    no xdist worker header, so an identical failure stores identical bytes."""
    if message is None:
        return None
    message = _XDIST_HEADER.sub("", message).lstrip("\n")
    return _ADDRESS.sub("0x…", message)


def json_safe(value: Any, _depth: int = 0) -> Any:
    """Make a measured value JSON-safe: numpy/torch scalars, NaN and inf as strings."""
    if _depth > 20:
        return repr(value)
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return value
    if isinstance(value, Mapping):
        return {str(k): json_safe(v, _depth + 1) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        items = sorted(value, key=repr) if isinstance(value, (set, frozenset)) else value
        return [json_safe(v, _depth + 1) for v in items]
    if isinstance(value, Path):
        return str(value)
    item = getattr(value, "item", None)  # numpy and torch scalars, 0-d arrays
    size = getattr(value, "size", None)
    numel = size if isinstance(size, int) else getattr(value, "numel", lambda: None)()
    if callable(item) and numel == 1:
        return json_safe(item(), _depth + 1)
    tolist = getattr(value, "tolist", None)
    if callable(tolist) and isinstance(numel, int) and numel <= 64:
        return json_safe(tolist(), _depth + 1)
    if hasattr(value, "shape") and hasattr(value, "dtype"):
        return {"shape": list(value.shape), "dtype": str(value.dtype)}
    return repr(value)


class Evidence:
    """The ``evidence`` fixture: ``evidence.record(max_abs_diff=..., tolerance=...)``.

    Values travel on the test report (``user_properties``), so they reach the controller
    under ``pytest -n N`` like any other result.
    """

    def __init__(self, node: Any) -> None:
        self._node = node
        self.values: dict[str, Any] = {}

    def record(self, **values: Any) -> None:
        self.values.update({k: json_safe(v) for k, v in values.items()})
        props = self._node.user_properties
        props[:] = [p for p in props if p[0] != EVIDENCE_PROPERTY]
        props.append((EVIDENCE_PROPERTY, dict(self.values)))


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


#: distributions whose version can change a verdict: the oracles the falsifiers compare
#: against and the frameworks they run on (recorded when installed; pip names)
VERDICT_PACKAGES = (
    "numpy",
    "torch",
    "triton",
    "transformers",
    "tokenizers",
    "safetensors",
    "gguf",
    "llama_cpp_python",
    "hypothesis",
    "pytest",
)
#: CPU flags that decide which kernels a library runs (an AMX build dies where AMX is off)
KERNEL_CPU_FLAGS = (
    "sse4_2",
    "avx",
    "avx2",
    "fma",
    "f16c",
    "avx512f",
    "avx512bw",
    "avx512_vnni",
    "avx512_bf16",
    "amx_tile",
    "amx_int8",
    "amx_bf16",
    "asimd",
    "sve",
)
#: extra facts a project adds to the host block (``add_host_facts``): e.g. how its oracle
#: was built
_EXTRA_HOST_FACTS: dict[str, Any] = {}


def add_host_facts(**facts: Any) -> None:
    """Record more about the machine in every evidence written from now on in this process
    (a conftest calls it, e.g. ``add_host_facts(llama_cpp_system_info=...)``). A value may be
    a function: it is called once, when evidence is first written, so a session that writes
    none does not pay for asking."""
    _EXTRA_HOST_FACTS.update(facts)
    host_info.cache_clear()


def _host_fact(value: Any) -> Any:
    if callable(value):
        try:
            value = value()
        except Exception as exc:  # a fact that cannot be had is itself a fact
            value = f"unavailable: {type(exc).__name__}: {exc}"
    return json_safe(value)


@lru_cache(maxsize=1)
def host_info() -> dict[str, Any]:
    """The machine and the versions a verdict was measured with, without importing torch
    (a CPU-only run must not pay for it)."""
    packages = {name: _version(name) for name in VERDICT_PACKAGES}
    info: dict[str, Any] = {
        "os": f"{platform.system()} {platform.release()}",
        "machine": platform.machine(),
        "cpu": _cpu_name(),
        "cpu_flags": " ".join(_cpu_flags()) or None,
        "python": platform.python_version(),
        "packages": {k: v for k, v in packages.items() if v is not None},
        **{k: _host_fact(v) for k, v in _EXTRA_HOST_FACTS.items()},
    }
    torch = sys.modules.get("torch")
    if torch is not None:
        try:
            if torch.cuda.is_available():
                info["cuda_device"] = torch.cuda.get_device_name(0)
                info["cuda_runtime"] = torch.version.cuda
                info["cuda_driver"] = _nvidia_driver()
        except Exception:  # pragma: no cover - a broken CUDA setup must not stop the report
            pass
    return {k: v for k, v in info.items() if v is not None}


def _cpu_flags() -> list[str]:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                if line.startswith(("flags", "Features")):
                    have = set(line.split(":", 1)[1].split())
                    return [f for f in KERNEL_CPU_FLAGS if f in have]
    except OSError:
        pass
    return []


def recorded_packages(record: Mapping[str, Any] | None) -> dict[str, str]:
    """The package versions an evidence record was measured with (every host section)."""
    found: dict[str, str] = {}
    runs = (record or {}).get("runs")
    if not isinstance(runs, dict):
        return found
    for section in runs.values():
        host = section.get("host") if isinstance(section, dict) else None
        if not isinstance(host, dict):
            continue
        packages = host.get("packages")
        if isinstance(packages, dict):
            found.update({str(k): str(v) for k, v in packages.items()})
        for old in ("numpy", "torch", "triton"):  # the host block before packages existed
            if isinstance(host.get(old), str):
                found.setdefault(old, host[old])
    return found


def moved_packages(previous: Mapping[str, Any] | None) -> tuple[str, ...]:
    """``name old -> new`` for each package whose version differs between the run that
    recorded ``previous`` and this one: what to suspect first when a verdict flips."""
    before = recorded_packages(previous)
    now = host_info().get("packages", {})
    out = []
    for name in sorted(set(before) | set(now)):
        if before.get(name) != now.get(name) and name in before:
            out.append(f"{name} {before.get(name)} -> {now.get(name) or 'not installed'}")
    return tuple(out)


#: how much of a refutation a later pass keeps on record (it must stay small and stable)
MAX_REFUTATION_CHARS = 2000


def refutation_on_record(previous: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """The counterexample a passing run must keep: from a FALSIFIED record, its failure
    (commit, message, recorded values); from a record that already kept one, that one.

    Built only from the committed record, so a repeat run writes the same bytes.
    """
    if not isinstance(previous, Mapping):
        return None
    kept = previous.get("refuted_before")
    if previous.get("outcome") != "failed":
        return kept if isinstance(kept, dict) else None
    runs = previous.get("runs")
    for kind, section in sorted(runs.items()) if isinstance(runs, dict) else ():
        failure = section.get("failure") if isinstance(section, dict) else None
        if not isinstance(failure, dict):
            continue
        recorded = (section.get("recorded") or {}).get(failure.get("nodeid"))
        out: dict[str, Any] = {
            "commit": section.get("commit"),
            "observed_at": section.get("observed_at"),
            "host": kind,
            "nodeid": failure.get("nodeid"),
            "message": _tail(failure.get("message")),
        }
        if failure.get("falsifying_example"):
            out["falsifying_example"] = _tail(failure["falsifying_example"])
        if recorded is not None:
            text = json.dumps(recorded, ensure_ascii=False)
            out["recorded"] = recorded if len(text) <= MAX_REFUTATION_CHARS else _tail(text)
        return out
    return kept if isinstance(kept, dict) else None


def _tail(text: Any) -> str | None:
    if not isinstance(text, str):
        return None
    return text if len(text) <= MAX_REFUTATION_CHARS else "…" + text[-MAX_REFUTATION_CHARS:]


def _cpu_name() -> str | None:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or None


def _nvidia_driver() -> str | None:  # pragma: no cover - GPU hosts only
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=10,
        )
        return out.stdout.strip().splitlines()[0] if out.returncode == 0 else None
    except (OSError, subprocess.SubprocessError, IndexError):
        return None


@lru_cache(maxsize=8)
def git_state(root: Path) -> tuple[str | None, bool]:
    """(commit, dirty) of the repository at ``root``; (None, False) outside git.

    Cached: asked once per project per session, not once per contract."""
    env = {**os.environ, "GIT_OPTIONAL_LOCKS": "0"}
    try:
        head = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=root,
            capture_output=True,
            text=True,
            env=env,
            timeout=20,
        )
        if head.returncode != 0:
            return None, False
        status = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=root,
            capture_output=True,
            text=True,
            env=env,
            timeout=20,
        )
        return head.stdout.strip(), bool(status.stdout.strip())
    except (OSError, subprocess.SubprocessError):
        return None, False


def now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


#: an evidence file is a few kB of JSON; anything larger is not one of ours
MAX_EVIDENCE_BYTES = 4 * 1024 * 1024


class EvidenceUnreadable(Exception):
    """An evidence file that is missing, too large, not UTF-8 or not JSON (one line why)."""


def load_evidence(path: Path) -> Any:
    """The JSON of an evidence file, read within bounds; raises ``EvidenceUnreadable``.

    The one reader of evidence (validate, audit, the plugin's write phase): a file edited
    by hand or by an attacker may be huge or nested thousands deep, which ``json`` meets
    with a RecursionError that would otherwise end a test session in an INTERNALERROR.
    """
    try:
        with open(path, "rb") as fh:
            raw = fh.read(MAX_EVIDENCE_BYTES + 1)
        if len(raw) > MAX_EVIDENCE_BYTES:
            raise EvidenceUnreadable(f"over {MAX_EVIDENCE_BYTES >> 20} MiB")
        return json.loads(raw.decode("utf-8"))
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise EvidenceUnreadable(f"unreadable: {exc}") from None


def read_evidence(path: Path) -> dict[str, Any] | None:
    """The evidence record at ``path``, or None when there is no readable one."""
    try:
        data = load_evidence(path)
    except EvidenceUnreadable:
        return None
    return data if isinstance(data, dict) else None


def merge_record(
    previous: dict[str, Any] | None,
    new: dict[str, Any],
    passed_kinds: list[str],
    keep_previous_runs: bool,
) -> dict[str, Any]:
    """The evidence to write: ``new``'s fields, with per-host ``runs`` merged.

    ``new["runs"]`` holds a section per host kind that ran now. Sections of other kinds are
    kept from ``previous`` while its passes still count (``keep_previous_runs``); a section
    whose content did not change keeps its original commit and time, so that a repeat run
    writes identical bytes.
    """
    runs: dict[str, Any] = {}
    old_runs = (previous or {}).get("runs") or {}
    if keep_previous_runs:
        runs.update({k: v for k, v in old_runs.items() if isinstance(v, dict)})
    for kind, section in new["runs"].items():
        old = old_runs.get(kind)
        if isinstance(old, dict) and _stable(old) == _stable(section):
            runs[kind] = old
        else:
            runs[kind] = section
    record = {**new, "runs": dict(sorted(runs.items()))}
    record["passed_on"] = sorted(set(passed_kinds))
    return record


def _stable(section: dict[str, Any]) -> dict[str, Any]:
    """What must match for a section to count as unchanged.

    The host, the commit and the time never count. In a passing section measured values
    do not count either: a max-abs-diff that moves at the 1e-7 level inside its bound, the
    seeds a property test drew on this machine, how many fuzz cases each error class took:
    all the same outcome (every run's values go to ``history.jsonl``). The names a test
    recorded still count, and so does every requirement (a key naming a tolerance, bound or
    limit, at any depth), whose change is a change of the claim.
    """
    stable = {k: v for k, v in section.items() if k not in _VOLATILE}
    if "failure" not in section and "recorded" in stable:
        recorded = stable["recorded"]  # {node id: what that test recorded}
        stable["recorded"] = (
            {nodeid: _claims(v) for nodeid, v in recorded.items()}
            if isinstance(recorded, dict)
            else None
        )
    return stable


#: recorded keys that state the requirement, not a measurement: their value always counts
_REQUIREMENT_KEY = re.compile(r"tol|bound|limit|threshold|require|allow|expect", re.IGNORECASE)
#: ... unless the key says it measures against one (``worst_share_of_bound``)
_MEASURED_KEY = re.compile(r"worst|share|ratio|_over_|_of_|measured|observed", re.IGNORECASE)


def _is_requirement(key: object) -> bool:
    return bool(_REQUIREMENT_KEY.search(str(key))) and not _MEASURED_KEY.search(str(key))


def _claims(value: Any) -> Any:
    """What of a test's recorded values states the claim: the names it recorded, and the
    value of every requirement key however deep. Measurements (and the keys of dicts of
    measurements, such as counts per error class) are left out."""
    if not isinstance(value, dict):
        return None
    return {"recorded": sorted(map(str, value)), "requirements": _requirements(value)}


def _requirements(value: dict[Any, Any]) -> dict[str, Any]:
    found: dict[str, Any] = {}
    for key, item in value.items():
        if _is_requirement(key):
            found[str(key)] = item
        elif isinstance(item, dict) and (inner := _requirements(item)):
            found[str(key)] = inner
        elif isinstance(item, list):
            inner_list = [_requirements(x) for x in item if isinstance(x, dict)]
            if any(inner_list):
                found[str(key)] = inner_list
    return found


def evidence_text(record: dict[str, Any]) -> str:
    """The committed form of an evidence record."""
    return json.dumps(record, indent=2, sort_keys=False, ensure_ascii=False) + "\n"


def write_evidence(
    path: Path, record: dict[str, Any], previous: dict[str, Any] | None = None
) -> bool:
    """Write ``record`` atomically unless the file already holds exactly it.

    ``previous`` is the file's parsed content when the caller has it: equal data is the
    common repeat run and needs no serialising at all.
    """
    if previous is not None and previous == record:
        return False
    text = evidence_text(record)
    try:
        if path.read_text(encoding="utf-8") == text:
            return False
    except (OSError, UnicodeDecodeError):
        pass
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, text, sync_dir=False)  # the caller syncs the folder once
    return True


def sync_folder(folder: Path) -> None:
    if folder.is_dir():
        fsync_dir(folder)


def append_history(folder: Path, lines: list[dict[str, Any]]) -> None:
    if not lines:
        return
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / "history.jsonl", "a", encoding="utf-8") as fh:
        for line in lines:
            fh.write(json.dumps(line, ensure_ascii=False) + "\n")
