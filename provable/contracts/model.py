"""Typed view of a contract, built from a YAML document without trusting its types.

The model is built even from a contract that fails the schema (fields of the wrong type are
left out), so that one run reports every problem instead of stopping at the first. Every
node keeps its source line for ``path:line`` messages.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

from provable.contracts.findings import display_path
from provable.contracts.yamlsource import YamlDocument, read_yaml

KNOWN_SECTIONS = (
    "metadata",
    "equations",
    "proof_obligations",
    "falsification_tests",
    "kani_harnesses",
    "enforcement",
    "qa_gate",
    "verification_summary",
    "kernel_structure",
    "simd_dispatch",
    "changelog",
)

#: The newer dialect's names for falsifier fields → ours.
FALSIFIER_ALIASES = {
    "description": "rule",
    "expected": "prediction",
    "command": "test",
    "fails_if": "if_fails",
}


def _str(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def _list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


@dataclass
class Falsifier:
    id: str
    line: int
    index: int
    rule: str | None = None
    prediction: str | None = None
    test: str | None = None
    if_fails: str | None = None
    hosts: tuple[str, ...] = ("cpu",)
    status: str | None = None
    evidence: str | None = None
    hosts_declared: bool = False


@dataclass
class ChangelogEntry:
    version: str | None
    date: str | None
    change: str | None
    line: int


@dataclass
class Contract:
    """One contract file. ``id`` is ``metadata.id`` when present, else the file stem."""

    path: Path
    doc: YamlDocument
    id: str
    version: str | None
    status: str | None
    description: str | None
    depends_on: list[str]
    falsifiers: list[Falsifier]
    changelog: list[ChangelogEntry]

    @property
    def data(self) -> dict[str, Any]:
        return self.doc.data

    stamp: tuple[int, int, int] | None = None

    @cached_property
    def shown_path(self) -> str:
        return display_path(self.path)

    def line_of(self, *path: Any) -> int:
        return self.doc.line_of(path)

    def falsifier(self, falsifier_id: str) -> Falsifier | None:
        for f in self.falsifiers:
            if f.id == falsifier_id:
                return f
        return None


def is_binding_registry(data: Any) -> bool:
    """The public dialect ships ``binding.yaml`` files (contract → implementation maps)."""
    return isinstance(data, dict) and "bindings" in data and "metadata" not in data


def contract_from_document(doc: YamlDocument) -> Contract:
    """Build the model; the caller has checked that ``doc.data`` is a mapping."""
    data = doc.data
    meta = _dict(data.get("metadata"))
    falsifiers = []
    for i, raw in enumerate(_list(data.get("falsification_tests"))):
        if not isinstance(raw, dict) or not isinstance(raw.get("id"), str):
            continue
        fields = {ours: _str(raw.get(ours)) for ours in FALSIFIER_ALIASES.values()}
        for alias, ours in FALSIFIER_ALIASES.items():
            if fields[ours] is None:
                fields[ours] = _str(raw.get(alias))
        hosts_raw = raw.get("hosts")
        hosts = tuple(h for h in _list(hosts_raw) if isinstance(h, str)) or ("cpu",)
        falsifiers.append(
            Falsifier(
                id=raw["id"],
                line=doc.line_of(("falsification_tests", i)),
                index=i,
                hosts=hosts,
                hosts_declared=isinstance(hosts_raw, list),
                status=_str(raw.get("status")),
                evidence=_str(raw.get("evidence")),
                **fields,
            )
        )
    changelog = [
        ChangelogEntry(
            version=_str(e.get("version")),
            date=_str(e.get("date")),
            change=_str(e.get("change")),
            line=doc.line_of(("changelog", i)),
        )
        for i, e in enumerate(_list(data.get("changelog")))
        if isinstance(e, dict)
    ]
    return Contract(
        path=doc.path,
        doc=doc,
        id=_str(meta.get("id")) or doc.path.stem,
        version=_str(meta.get("version")),
        status=_str(meta.get("status")),
        description=_str(meta.get("description")),
        depends_on=[d for d in _list(meta.get("depends_on")) if isinstance(d, str)],
        falsifiers=falsifiers,
        changelog=changelog,
    )


def file_stamp(path: Path) -> tuple[int, int, int]:
    """(inode, size, mtime in ns): tells whether a file was replaced since it was read."""
    st = os.stat(path)
    return st.st_ino, st.st_size, st.st_mtime_ns


class NotAMapping(ValueError):
    """The file is YAML, but its top level is not a mapping (so not a contract)."""

    def __init__(self, data: Any) -> None:
        kind = "list" if isinstance(data, list) else type(data).__name__
        super().__init__(f"top level is a {kind}, not a mapping")


@dataclass(frozen=True)
class BindingRegistryFile:
    """A ``binding.yaml`` of the public dialect: read, recognised, and skipped."""

    path: Path
    bindings: int


def read_contract(path: Path) -> Contract | BindingRegistryFile:
    """The one way a contract file is parsed (validate, registry, plugin). The ``pv``
    commands read through ``provable.contracts.loading.read_checked``: this and validate's checks.

    Raises ``YamlSourceError`` (unreadable, hostile or not YAML) or ``NotAMapping``.
    """
    path = Path(path)
    doc = read_yaml(path)
    try:
        stamp: tuple[int, int, int] | None = file_stamp(path)
    except OSError:
        stamp = None
    if is_binding_registry(doc.data):
        bindings = doc.data["bindings"]
        return BindingRegistryFile(path, len(bindings) if isinstance(bindings, list) else 0)
    if not isinstance(doc.data, dict):
        raise NotAMapping(doc.data)
    contract = contract_from_document(doc)
    contract.stamp = stamp
    return contract


def load_contract(path: Path) -> Contract:
    """Read and model one contract; raises ``YamlSourceError`` or ``ValueError``."""
    contract = read_contract(path)
    if isinstance(contract, BindingRegistryFile):
        raise ValueError("a binding registry, not a contract")
    return contract
