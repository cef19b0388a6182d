"""requirements.lock: generated, complete for pyproject.toml, portable for llama.cpp; and the
weekly canary names what moved when today's versions break the suite."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.version import Version

tomllib = pytest.importorskip("tomllib", reason="reading pyproject.toml needs Python 3.11+")
ROOT = Path(__file__).resolve().parents[1]
LOCK = ROOT / "requirements.lock"


def _lockfile():
    spec = importlib.util.spec_from_file_location("ci_lockfile", ROOT / "ci" / "lockfile.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules["ci_lockfile"] = module
    spec.loader.exec_module(module)
    return module


lockfile = _lockfile()


def _body(text: str) -> list[str]:
    return [ln for ln in text.splitlines() if ln and not ln.startswith("#")]


def test_the_lock_is_what_the_generator_writes():
    """Not edited by hand: rendering its own pins again gives the same lines."""
    text = LOCK.read_text(encoding="utf-8")
    assert _body(lockfile.render_lock(lockfile.parse_pins(text), "h")) == _body(text)


def test_the_lock_satisfies_every_requirement_of_pyproject():
    config = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    project = config["project"]
    pins = lockfile.parse_pins(LOCK.read_text(encoding="utf-8"))
    wanted = [*project["dependencies"], *project["optional-dependencies"]["test"]]
    missing = []
    for line in wanted:
        req = Requirement(line)
        if req.marker is not None and not req.marker.evaluate():
            continue
        pin = pins.get(lockfile.canonical(req.name))
        if pin is None or not req.specifier.contains(Version(pin), prereleases=True):
            missing.append(f"{line} (lock: {pin})")
    assert missing == []


def test_llama_cpp_is_built_for_any_x86_64_cpu():
    line = next(ln for ln in _body(LOCK.read_text()) if ln.startswith("llama-cpp-python=="))
    assert "cmake.define.GGML_NATIVE=OFF" in line
    for feature in ("AVX512", "AMX_TILE", "AMX_INT8", "AMX_BF16"):
        assert f"cmake.define.GGML_{feature}=OFF" in line
    assert "cmake.define.GGML_AVX2=ON" in line


def test_torch_is_the_cpu_release_without_a_local_label():
    assert "torch==2.13.0" in _body(LOCK.read_text())
    assert _body(lockfile.render_lock({"torch": "2.13.0+cpu"}, "")) == ["torch==2.13.0"]


def test_moved_names_every_difference():
    assert lockfile.moved(
        {"transformers": "5.24.0", "gone": "1.0", "same": "2"},
        {"transformers": "5.25.0", "kernels": "0.19.1", "same": "2", "pip": "26"},
    ) == ["gone: 1.0, gone", "kernels: new, 0.19.1", "transformers: 5.24.0 -> 5.25.0"]


def test_the_canary_names_the_packages_that_moved_when_the_suite_fails(
    monkeypatch, tmp_path, capsys
):
    lock = tmp_path / "requirements.lock"
    lock.write_text("transformers==5.24.0\nnumpy==2.4.6\n")
    monkeypatch.setattr(lockfile, "LOCK", lock)
    monkeypatch.setattr(lockfile, "fresh_environment", lambda: tmp_path)
    monkeypatch.setattr(
        lockfile, "freeze", lambda venv: {"transformers": "5.25.0", "numpy": "2.4.6"}
    )
    monkeypatch.setattr(lockfile, "run_suite", lambda venv, extra: 1)
    assert lockfile.main(["latest"]) == 1
    err = capsys.readouterr().err
    assert "transformers: 5.24.0 -> 5.25.0" in err and "numpy" not in err
    # and `write` leaves the lock alone when the suite fails
    assert lockfile.main(["write"]) == 1
    assert lock.read_text() == "transformers==5.24.0\nnumpy==2.4.6\n"


@pytest.mark.parametrize("script", ["lock", "run-latest"])
def test_the_ci_scripts_call_the_generator(script):
    text = (ROOT / "ci" / script).read_text()
    assert "ci/lockfile.py" in text and (ROOT / "ci" / script).stat().st_mode & 0o111
