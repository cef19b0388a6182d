"""Fixtures for the unit tests of provable's internals."""

from __future__ import annotations

import textwrap
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.contract_samples import CLEAN_CONTRACT

SHARED_CONTRACTS = Path(__file__).resolve().parents[2] / "shared" / "compat" / "provable-contracts"


@pytest.fixture
def write_contract(tmp_path: Path) -> Callable[..., Path]:
    """Write a contract file (the clean one by default) and return its path."""

    def write(text: str | None = None, name: str = "clean-v1", folder: Path | None = None) -> Path:
        folder = folder or tmp_path / "contracts"
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{name}.yaml"
        body = CLEAN_CONTRACT.format(id=name) if text is None else textwrap.dedent(text)
        path.write_text(body, encoding="utf-8")
        return path

    return write
