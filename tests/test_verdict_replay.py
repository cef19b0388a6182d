"""The incident of 2026-12-05, replayed: transformers cannot be imported, and the real
falsifiers run. Then every claim that needs it is "not checked" — and every contract file
and every committed evidence file stays byte-identical (it had turned 62 claims FALSIFIED).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
#: falsifiers whose fixtures or bodies import transformers (setup and call errors both)
FILES = [
    "falsifiers/test_tensor_layout_v1.py",
    "falsifiers/test_tied_embeddings_v1.py",
    "falsifiers/test_forward_parity_hf_v1.py",
]
#: what the new transformers release did: an ImportError out of ``import transformers``
BLOCKER = """\
import sys


class _Blocked:
    def find_spec(self, name, path=None, target=None):
        if name == "transformers" or name.startswith("transformers."):
            raise ImportError("cannot import name 'CUDAProperties' from 'kernels'")
        return None


sys.meta_path.insert(0, _Blocked())
"""


def copy_project(dest: Path) -> None:
    for name in ("contracts", "evidence"):
        shutil.copytree(ROOT / name, dest / name, ignore=shutil.ignore_patterns("history.jsonl"))
    (dest / "falsifiers").mkdir()
    for path in (ROOT / "falsifiers").glob("*.py"):
        shutil.copy(path, dest / "falsifiers" / path.name)
    for name in ("conftest.py", "pyproject.toml"):
        shutil.copy(ROOT / name, dest / name)
    (dest / "block_transformers.py").write_text(BLOCKER)


def committed(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes()
        for folder in ("contracts", "evidence")
        for p in sorted((root / folder).rglob("*"))
        if p.is_file() and p.name != "history.jsonl" and not p.name.startswith(".")
    }


def test_a_dependency_that_fails_to_import_refutes_nothing(tmp_path):
    copy_project(tmp_path)
    before = committed(tmp_path)
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-p",
            "no:cacheprovider",
            "-p",
            "block_transformers",
            "-q",
            *FILES,
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
        env={"PYTHONPATH": str(tmp_path), "HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"},
    )
    out = run.stdout
    assert run.returncode != 0, out[-3000:]  # red: nothing was checked
    assert "not checked:" in out, out[-3000:]
    assert "FALSIFIED" not in out.split("contract status")[-1], out[-3000:]
    assert "CUDAProperties" in out  # each not-checked falsifier names the import that failed
    assert committed(tmp_path) == before
