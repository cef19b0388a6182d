"""What each command imports before it does its work: a list of modules, not a timing.

``apr --help`` run in a loop while bisecting a bug must not pay for torch (about 1 s) or the
diff engine; ``apr diff``/``inspect``/``convert`` need numpy and nothing heavier; only the
commands that run a forward import torch. Each case runs the CLI in a fresh interpreter and
lists the heavy modules it loaded; bench/bench_startup.py gives the times.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

#: modules no command may import unless it runs a forward (or, for the diff engine, a diff)
HEAVY = ("torch", "transformers", "triton", "provable_kernels", "rich", "numpy")
DIFF_ENGINE = "aprlib.compare.diff"

PROBE = """
import json, sys
entry = sys.argv[1]
args = json.loads(sys.argv[2])
if entry == "apr":
    from aprlib.cli.main import main
else:
    from provable.cli.main import main
import contextlib, io
with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
    try:
        code = main(args)
    except SystemExit as exit:
        code = exit.code
tops = {m.split(".")[0] for m in sys.modules}
loaded = sorted(tops | {m for m in sys.modules if m.startswith("aprlib.")})
print(json.dumps({"code": code, "loaded": loaded}))
"""


def loaded_by(entry: str, args: list[str]) -> tuple[object, set[str]]:
    proc = subprocess.run(
        [sys.executable, "-c", PROBE, entry, json.dumps(args)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    return out["code"], set(out["loaded"])


@pytest.mark.parametrize(
    "entry, args",
    [
        ("apr", ["--help"]),
        ("apr", ["--version"]),
        ("apr", []),  # usage: no command
        ("apr", ["diff"]),  # usage error: missing files
        ("apr", ["bisect", "--help"]),
        ("apr", ["finetune", "--help"]),
        ("pv", ["--help"]),
        ("pv", ["--version"]),
    ],
)
def test_help_version_and_usage_errors_import_nothing_heavy(entry, args):
    code, loaded = loaded_by(entry, args)
    assert code in (0, 2)
    assert loaded.isdisjoint(HEAVY), sorted(loaded & set(HEAVY))
    assert DIFF_ENGINE not in loaded


def test_file_commands_import_numpy_but_never_torch(tiny_qwen2, tmp_path):
    apr = str(tiny_qwen2.safetensors)
    for args in (
        ["inspect", apr],
        ["diff", apr, apr],
        ["convert", apr, str(tmp_path / "out.gguf")],
    ):
        code, loaded = loaded_by("apr", args)
        assert code == 0, args
        assert "numpy" in loaded
        assert loaded.isdisjoint({"torch", "transformers", "triton", "provable_kernels"}), (
            args,
            sorted(loaded & {"torch", "transformers", "triton"}),
        )
    _, loaded = loaded_by("apr", ["inspect", apr])
    assert DIFF_ENGINE not in loaded  # inspect checks one file; it needs no pair classifier


def test_the_probe_sees_a_heavy_import(tiny_qwen2):
    """The probe is not blind: a command that runs a forward does import torch."""
    _, loaded = loaded_by("apr", ["logits", str(tiny_qwen2.safetensors), "--tokens", "1,2"])
    assert "torch" in loaded
