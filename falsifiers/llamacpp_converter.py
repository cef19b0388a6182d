"""llama.cpp's own converter (``convert_hf_to_gguf.py``) as an outside oracle.

The script ships inside llama-cpp-python's source distribution (``vendor/llama.cpp``, with
its ``conversion`` package and ``gguf-py``). It is taken, in this order, from
``$APRLIB_LLAMA_CPP_SRC`` (a ``vendor/llama.cpp`` folder), from the extracted copy cached in
``~/.cache/aprlib``, or from ``pip download --no-binary :all: --no-deps`` of the installed
llama-cpp-python version (the pip cache keeps the sdist after the first download); where
none works the tests skip and say why. It runs in a subprocess with this interpreter; its
pre-tokenizer check (a hash over known hub tokenizers) is wrapped to name the split of the
tokenizer the test trained.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tarfile
import tempfile
from functools import lru_cache
from pathlib import Path

import pytest

from provable.plugin.outcomes import EnvironmentFault

WRAPPER = """
import runpy, sys
vendor, pre = sys.argv[1], sys.argv[2]
sys.path.insert(0, vendor)
sys.path.insert(1, vendor + "/gguf-py")
import conversion.base as base
base.TextModel.get_vocab_base_pre = lambda self, tokenizer: pre
sys.argv = [vendor + "/convert_hf_to_gguf.py", *sys.argv[3:]]
runpy.run_path(vendor + "/convert_hf_to_gguf.py", run_name="__main__")
"""
NEEDED = ("convert_hf_to_gguf.py", "conversion/", "gguf-py/")


def _cache_root() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "aprlib"


def _extract(sdist: Path, dest: Path) -> Path:
    with tarfile.open(sdist) as tar:
        members = [
            m
            for m in tar.getmembers()
            if "/vendor/llama.cpp/" in m.name
            and m.name.split("/vendor/llama.cpp/", 1)[1].startswith(NEEDED)
            and (m.isfile() or m.isdir())
        ]
        tar.extractall(dest, members=members, filter="data")
    found = sorted(dest.glob("*/vendor/llama.cpp/convert_hf_to_gguf.py"))
    if not found:
        raise FileNotFoundError(f"{sdist.name} holds no vendor/llama.cpp/convert_hf_to_gguf.py")
    return found[0].parent


@lru_cache(maxsize=1)
def converter_source() -> Path | str:
    """The ``vendor/llama.cpp`` folder, or the reason there is none (a string)."""
    if os.environ.get("APRLIB_LLAMA_CPP_SRC"):
        return Path(os.environ["APRLIB_LLAMA_CPP_SRC"])
    from importlib import metadata

    try:  # the version only: importing llama_cpp would load libllama into this process
        version = metadata.version("llama_cpp_python")
    except metadata.PackageNotFoundError:
        return "llama-cpp-python is not installed"
    cache = _cache_root() / f"llama-cpp-python-{version}"
    cached = sorted(cache.glob("*/vendor/llama.cpp/convert_hf_to_gguf.py"))
    if cached:
        return cached[0].parent
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-binary", ":all:", "--no-deps"]
        cmd += ["-d", tmp, f"llama-cpp-python=={version}"]
        try:
            run = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
        except (OSError, subprocess.TimeoutExpired) as exc:
            return f"pip download of llama-cpp-python=={version} failed: {exc}"
        sdists = sorted(Path(tmp).glob("llama_cpp_python-*.tar.gz"))
        if run.returncode or not sdists:
            return f"pip download of llama-cpp-python=={version} failed: {run.stderr[-300:]}"
        try:
            return _extract(sdists[0], cache)
        except (OSError, tarfile.TarError) as exc:
            return f"cannot extract {sdists[0].name}: {exc}"


def require_converter() -> Path:
    source = converter_source()
    if isinstance(source, str):
        pytest.skip(f"llama.cpp's convert_hf_to_gguf.py is unavailable: {source}")
    pytest.importorskip("sentencepiece", reason="llama.cpp's converter imports sentencepiece")
    return source


class ConverterFailed(EnvironmentFault):
    """llama.cpp's converter did not run to the end: the fixture could not be made, which
    says nothing about the claim a test was checking (never a refutation)."""


def convert_hf_to_gguf(folder: Path, out: Path, pre: str, outtype: str = "f32") -> Path:
    """Run llama.cpp's converter on an HF folder (tokenizer split named ``pre``)."""
    source = require_converter()
    args = [str(source), pre, str(folder), "--outfile", str(out), "--outtype", outtype]
    run = subprocess.run(
        [sys.executable, "-c", WRAPPER, *args],
        capture_output=True,
        text=True,
        timeout=600,
    )
    if run.returncode != 0:
        raise ConverterFailed(f"convert_hf_to_gguf.py failed:\n{run.stderr[-3000:]}")
    return out


FACTORS = """
import json, sys
vendor = sys.argv[1]
sys.path.insert(0, vendor)
sys.path.insert(1, vendor + "/gguf-py")
from conversion.llama import LlamaModel

class Hparams:  # the two attributes generate_extra_tensors reads, and its tensor namer
    def __init__(self, rope, head_dim):
        self.rope_parameters, self.hparams = rope, {"head_dim": head_dim}
    def format_tensor_name(self, key):
        return "rope_freqs.weight"

out = []
for theta, head_dim, scaling in json.load(sys.stdin):
    model = Hparams({"rope_theta": theta, **scaling}, head_dim)
    made = list(LlamaModel.generate_extra_tensors(model))
    out.append(made[0][1].numpy().tolist() if made else None)
json.dump(out, sys.stdout)
"""


def llama3_rope_factors_by_converter(cases: list[tuple[float, int, dict]]) -> list[list[float]]:
    """``rope_freqs.weight`` as the converter's own ``LlamaModel.generate_extra_tensors``
    computes it, for each (rope_theta, head_dim, rope_scaling); one subprocess for all."""
    import json

    source = require_converter()
    run = subprocess.run(
        [sys.executable, "-c", FACTORS, str(source)],
        input=json.dumps(cases),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, f"generate_extra_tensors failed:\n{run.stderr[-3000:]}"
    return json.loads(run.stdout)
