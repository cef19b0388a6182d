"""No top-level import name of ours is one another distribution installs.

pytest puts the repository root first on ``sys.path``, so a folder of ours named like another
package (our Triton package was ``kernels``, the import name of Hugging Face's ``kernels``
distribution, which transformers 5.25 requires) hides that package from everything in the
run — and outside the checkout the reverse happens and our code loads theirs.
"""

from __future__ import annotations

import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest

tomllib = pytest.importorskip("tomllib", reason="reading pyproject.toml needs Python 3.11+")
ROOT = Path(__file__).resolve().parents[1]


def our_top_level_names() -> set[str]:
    """The packages our wheel installs: the ``packages.find`` include patterns, as folders."""
    config = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    patterns = config["tool"]["setuptools"]["packages"]["find"]["include"]
    names = {p.rstrip("*").rstrip(".") for p in patterns}
    assert all((ROOT / n / "__init__.py").is_file() for n in names), names
    return names


def owners_elsewhere(names: set[str]) -> dict[str, list[str]]:
    """Installed distributions other than ours that provide one of ``names``."""
    found = metadata.packages_distributions()
    return {
        n: sorted(d for d in found.get(n, []) if d.lower() != "provable")
        for n in names
        if any(d.lower() != "provable" for d in found.get(n, []))
    }


def test_no_top_level_name_is_owned_by_another_installed_distribution():
    names = our_top_level_names()
    assert "provable_kernels" in names and "kernels" not in names
    assert owners_elsewhere(names) == {}


def test_the_check_goes_red_on_a_name_another_distribution_owns():
    """The sensitivity of the check above: ``kernels``, our old name, is caught where HF's
    kernels is installed (it is: transformers requires it), and so is ``numpy``."""
    assert owners_elsewhere({"numpy"}) == {"numpy": ["numpy"]}
    if "kernels" in metadata.packages_distributions():
        assert owners_elsewhere({"kernels"}) == {"kernels": ["kernels"]}


@pytest.mark.parametrize("cwd", ["root", "elsewhere"])
def test_transformers_model_classes_import_beside_our_packages(cwd, tmp_path):
    """From the repository root (where pytest runs) and from any other folder: transformers'
    model classes import, ``kernels`` is whatever distribution owns it, and our Triton
    package is the checkout's."""
    code = (
        "import importlib.util, sys\n"
        "from transformers import LlamaForCausalLM, Qwen2ForCausalLM\n"
        "import transformers.activations\n"
        "import provable_kernels\n"
        "spec = importlib.util.find_spec('kernels')\n"
        "print(provable_kernels.__file__)\n"
        "print(spec.origin if spec else None)\n"
    )
    folder = ROOT if cwd == "root" else tmp_path
    run = subprocess.run(
        [sys.executable, "-c", code], cwd=folder, capture_output=True, text=True, timeout=300
    )
    assert run.returncode == 0, run.stderr[-3000:]
    ours, theirs = run.stdout.splitlines()
    assert Path(ours).resolve().parent == ROOT / "provable_kernels"
    assert theirs == "None" or not Path(theirs).resolve().is_relative_to(ROOT / "kernels")
