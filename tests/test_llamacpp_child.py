"""llama.cpp runs in a child process: its crash or hang is a typed error, never ours.

The crashes are planted: a fake ``llama_cpp`` package first on the child's PYTHONPATH,
whose ``Llama()`` kills itself with SIGILL (what a natively built llama.cpp does on a CPU
with AMX it was not built for), sleeps, or raises. Only the child sees it: the parent never
imports ``llama_cpp``.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from aprlib import ModelFileError, OracleCrashed, OracleError, OracleTimeout, convert
from aprlib.forward import llamacpp
from aprlib.forward.logits import compute_logits, llamacpp_logits, reference_logits
from falsifiers.llamacpp_oracle import require_llama_cpp

REPO = Path(__file__).resolve().parents[1]
TOKENS = [3, 1, 4, 1, 5, 9, 2, 6]

FAKE = """\
import os, signal, time
__version__ = "0.0.0-planted"


class Llama:
    def __init__(self, *args, **kwargs):
        with open({pid_file!r}, "w") as fh:
            fh.write(str(os.getpid()))
        {body}
"""

BODIES = {
    "sigill": "os.kill(os.getpid(), signal.SIGILL)",
    "hang": "time.sleep(3600)",
    "raise": 'raise ValueError("Failed to load model from file: planted")',
}


@pytest.fixture(scope="module")
def tiny_gguf(tmp_path_factory, tiny_factory) -> Path:
    path = tmp_path_factory.mktemp("gguf") / "tiny.gguf"
    convert(tiny_factory("qwen2").safetensors, path)
    return path


def fresh_copy(src: Path, folder: Path, name: str) -> Path:
    """A path no child has been started for (children are kept per resolved path)."""
    dst = folder / name
    shutil.copyfile(src, dst)
    return dst


def plant(monkeypatch, folder: Path, kind: str) -> Path:
    """A fake llama_cpp first on the child's PYTHONPATH (and findable here, so the
    installed-or-not check passes without the real one); returns the file its pid goes to."""
    pid_file = folder / "child.pid"
    package = folder / "fake" / "llama_cpp"
    package.mkdir(parents=True)
    body = FAKE.format(pid_file=str(pid_file), body=BODIES[kind])
    (package / "__init__.py").write_text(body)
    fake = str(folder / "fake")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([fake, os.environ.get("PYTHONPATH", "")]))
    monkeypatch.syspath_prepend(fake)  # found here (never imported), installed or not
    return pid_file


def is_dead(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def test_a_sigill_in_llama_cpp_is_a_typed_error_and_the_caller_carries_on(
    tiny_gguf, tmp_path, monkeypatch
):
    gguf = fresh_copy(tiny_gguf, tmp_path, "planted-sigill.gguf")
    pid_file = plant(monkeypatch, tmp_path, "sigill")
    want = "llama.cpp died with SIGILL (illegal instruction) on planted-sigill.gguf"
    with pytest.raises(OracleCrashed) as first:
        llamacpp_logits(gguf, TOKENS)
    assert str(first.value) == want
    assert first.value.signal == signal.SIGILL and first.value.signal.name == "SIGILL"
    assert first.value.path == gguf
    assert isinstance(first.value, OracleError) and not isinstance(first.value, ModelFileError)
    assert any("Fatal Python error" in ln for ln in first.value.stderr_tail), (
        first.value.stderr_tail
    )  # faulthandler's stack of the crash, kept out of the one-line message
    dead = int(pid_file.read_text())
    assert is_dead(dead)
    with pytest.raises(OracleCrashed, match="SIGILL") as second:  # a new child, same death
        compute_logits(gguf, TOKENS, backend="llama.cpp")
    assert int(pid_file.read_text()) != dead and second.value.pid != dead
    assert llamacpp.child_pid(gguf) is None
    assert np.isfinite(reference_logits(gguf, TOKENS)).all()  # this process is fine


def test_a_sigill_through_the_cli_is_one_line_and_exit_1(tiny_gguf, tmp_path, monkeypatch):
    gguf = fresh_copy(tiny_gguf, tmp_path, "cli.gguf")
    plant(monkeypatch, tmp_path, "sigill")
    argv = ["logits", str(gguf), "--tokens", "1,2,3", "--backend", "llama.cpp"]
    proc = subprocess.run(
        [sys.executable, "-m", "aprlib.cli.main", *argv],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "PYTHONPATH": os.environ["PYTHONPATH"] + os.pathsep + str(REPO)},
        cwd=tmp_path,
    )
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stdout + proc.stderr
    assert proc.stderr == (
        "apr: error: llama.cpp died with SIGILL (illegal instruction) on cli.gguf\n"
    ), proc.stderr
    assert proc.stdout == ""


def test_a_hang_is_killed_at_the_timeout(tiny_gguf, tmp_path, monkeypatch):
    gguf = fresh_copy(tiny_gguf, tmp_path, "hang.gguf")
    pid_file = plant(monkeypatch, tmp_path, "hang")
    start = time.monotonic()
    with pytest.raises(OracleTimeout) as info:
        llamacpp_logits(gguf, TOKENS, timeout=2)
    assert time.monotonic() - start < 30
    assert str(info.value) == "llama.cpp gave no answer within 2 s on hang.gguf"
    assert info.value.signal is None and info.value.path == gguf
    assert is_dead(int(pid_file.read_text()))
    assert llamacpp.child_pid(gguf) is None


def test_the_timeout_comes_from_the_environment(tiny_gguf, tmp_path, monkeypatch):
    gguf = fresh_copy(tiny_gguf, tmp_path, "hang-env.gguf")
    plant(monkeypatch, tmp_path, "hang")
    monkeypatch.setenv(llamacpp.TIMEOUT_ENV, "1.5")
    with pytest.raises(OracleTimeout, match=r"within 1\.5 s on hang-env\.gguf"):
        compute_logits(gguf, TOKENS, backend="llama.cpp")
    monkeypatch.setenv(llamacpp.TIMEOUT_ENV, "soon")
    with pytest.raises(ValueError, match="APRLIB_LLAMACPP_TIMEOUT"):
        llamacpp.default_timeout()


def test_an_exception_in_the_child_comes_back_as_itself(tiny_gguf, tmp_path, monkeypatch):
    """llama.cpp refusing a file is a failed load, not a crash."""
    gguf = fresh_copy(tiny_gguf, tmp_path, "refused.gguf")
    plant(monkeypatch, tmp_path, "raise")
    with pytest.raises(ValueError, match="Failed to load model from file: planted") as info:
        llamacpp_logits(gguf, TOKENS)
    assert not isinstance(info.value, OracleError)
    assert "Llama" in str(info.value.__cause__)  # the child's traceback, as the cause
    pid = llamacpp.child_pid(gguf)
    assert pid is not None  # the child lives on after an exception
    with pytest.raises(ValueError):
        llamacpp_logits(gguf, TOKENS)
    assert llamacpp.child_pid(gguf) == pid
    llamacpp.kill(gguf)  # the planted child has no further use


def test_the_errors_pickle_as_themselves():
    import pickle

    crash = OracleCrashed.from_returncode(Path("m.gguf"), -signal.SIGSEGV, ["last"], 7)
    back = pickle.loads(pickle.dumps(crash))
    assert type(back) is OracleCrashed and str(back) == str(crash)
    assert back.signal == signal.SIGSEGV and back.stderr_tail == ["last"] and back.pid == 7
    assert str(crash) == "llama.cpp died with SIGSEGV (segmentation fault) on m.gguf"
    lib = OracleCrashed.from_returncode(None, 3)
    assert str(lib) == "llama.cpp exited with status 3 on the ggml library"
    bad = ModelFileError("m.gguf", "token id 99 >= vocab_size 96", field="tokens")
    assert str(pickle.loads(pickle.dumps(bad))) == str(bad)


# --- the real llama.cpp --------------------------------------------------------------------

IN_PROCESS = """\
import sys, time, numpy as np, llama_cpp
path, out = sys.argv[1], sys.argv[2]
tokens = [int(t) for t in sys.argv[3].split(",")]
llm = llama_cpp.Llama(path, logits_all=True, type_k=0, type_v=0, n_ctx=64, n_threads=2,
                      verbose=False)
llm.eval(tokens)
np.save(out, np.array(llm.scores[: len(tokens)], dtype=np.float32))
"""


def test_real_llama_cpp_in_the_child_gives_the_in_process_logits(tiny_gguf, tmp_path):
    require_llama_cpp()  # the real one, found and never imported here
    out = tmp_path / "in-process.npy"
    subprocess.run(  # "before": llama.cpp in-process, in a process of its own
        [sys.executable, "-c", IN_PROCESS, str(tiny_gguf), str(out), ",".join(map(str, TOKENS))],
        check=True,
        timeout=300,
    )
    got = llamacpp_logits(tiny_gguf, TOKENS)
    assert got.dtype == np.float32 and got.shape == (len(TOKENS), 96)
    assert np.array_equal(got, np.load(out))
    pid = llamacpp.child_pid(tiny_gguf)
    assert pid is not None
    again = compute_logits(tiny_gguf, TOKENS, backend="llama.cpp")
    assert llamacpp.child_pid(tiny_gguf) == pid  # the same child, reused
    assert np.array_equal(again, got)
    with pytest.raises(ModelFileError, match="token id 500 >= vocab_size 96") as info:
        llamacpp_logits(tiny_gguf, [*TOKENS, 500])
    assert info.value.path == tiny_gguf and llamacpp.child_pid(tiny_gguf) == pid


def test_real_ggml_quantise_and_dequantise_in_the_child_match_gguf_quants():
    require_llama_cpp()
    quants = pytest.importorskip("gguf.quants")
    from gguf import GGMLQuantizationType

    x = np.random.default_rng(3).standard_normal((4, 512)).astype(np.float32)
    for kind in ("Q8_0", "Q4_K"):
        qtype = GGMLQuantizationType[kind]
        raw = llamacpp.ggml_quantize(x, kind)
        if kind == "Q8_0":  # gguf.quants quantises Q8_0 like ggml; Q4_K it only reads
            assert np.array_equal(raw, quants.quantize(x, qtype))
        back = llamacpp.ggml_dequantize(raw, kind, x.size)
        want = quants.dequantize(raw, qtype).reshape(-1)
        assert np.array_equal(back, want), kind
    assert llamacpp.child_pid() is not None


def test_the_library_child_can_be_killed_and_comes_back():
    require_llama_cpp()
    x = np.ones((1, 32), dtype=np.float32)
    llamacpp.ggml_quantize(x, "Q8_0")
    pid = llamacpp.child_pid()
    assert pid is not None
    llamacpp.kill()
    deadline = time.monotonic() + 10
    while llamacpp.child_pid() is not None and time.monotonic() < deadline:
        time.sleep(0.01)
    assert llamacpp.child_pid() is None
    assert llamacpp.ggml_quantize(x, "Q8_0").shape == (1, 34)
    assert llamacpp.child_pid() not in (None, pid)


def test_qa_reports_a_crashed_oracle_as_not_checked_never_as_a_model_fail(
    tiny_gguf, tmp_path, monkeypatch
):
    from aprlib.forward.qa import gates_json, run_qa

    plant(monkeypatch, tmp_path, "sigill")
    gates = {g.name: g for g in run_qa(tiny_gguf)}
    parity = gates["backend_parity"]
    assert parity.status == "SKIP", parity
    assert parity.detail.startswith(
        "not checked: llama.cpp died with SIGILL (illegal instruction) on copy.gguf"
    ), parity.detail
    assert parity.numbers == {"oracle_error": "OracleCrashed", "signal": "SIGILL"}
    assert "backend_parity" not in gates_json(list(gates.values()))["failed"]


def test_the_childs_block_table_agrees_with_aprlibs_dtypes():
    """The child keeps its own small table (importing aprlib.formats.dtypes would cost every child
    a quarter second): it must say what DType says."""
    from aprlib.formats.dtypes import DType
    from aprlib.forward.llamacpp_child import BLOCK, GGML_TYPES

    for kind, ggml_id in GGML_TYPES.items():
        info = DType[kind].info
        assert (DType[kind].value, (info.block_elements, info.block_bytes)) == (
            ggml_id,
            BLOCK[kind],
        )


def test_the_child_never_forks_gdb_on_a_llamacpp_abort(monkeypatch, tmp_path):
    """A GGML_ASSERT makes ggml fork gdb to print a backtrace where gdb is installed; in CI
    that ran past the 300 s timeout, turning an abort (a counterexample) into not checked."""
    from aprlib.forward import llamacpp

    seen: dict[str, str] = {}

    class Recorded(Exception):
        pass

    def popen(*args, **kwargs):
        seen.update(kwargs["env"])
        raise Recorded

    monkeypatch.delenv("GGML_NO_BACKTRACE", raising=False)
    monkeypatch.setattr(llamacpp.subprocess, "Popen", popen)
    with pytest.raises(Recorded):
        llamacpp.Child(tmp_path / "m.gguf")._start()
    assert seen.get("GGML_NO_BACKTRACE") == "1"
