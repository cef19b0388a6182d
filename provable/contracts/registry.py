"""Which contract declares which falsifier: the table that test markers are resolved in."""

from __future__ import annotations

import difflib
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from provable.contracts.discovery import Discovery, walk_folder
from provable.contracts.findings import display_path
from provable.contracts.model import BindingRegistryFile, Contract, NotAMapping, read_contract
from provable.contracts.yamlsource import YamlSourceError


class BindingError(Exception):
    """A marker or option names a falsifier that cannot be resolved to one contract."""


@dataclass
class Registry:
    folder: Path
    contracts: dict[str, Contract] = field(default_factory=dict)
    declared_by: dict[str, list[str]] = field(default_factory=lambda: defaultdict(list))

    @classmethod
    def load(cls, folder: Path) -> Registry:
        registry = cls(Path(folder))
        if not registry.folder.is_dir():
            return registry
        found = Discovery()
        walk_folder(registry.folder, found)
        for path in found.files:
            try:
                contract = read_contract(path)
            except YamlSourceError as exc:
                raise BindingError(
                    f"{display_path(path)}:{exc.line}: {exc.message} (run pv validate)"
                ) from None
            except NotAMapping as exc:
                raise BindingError(f"{display_path(path)}:1: {exc} (run pv validate)") from None
            if isinstance(contract, BindingRegistryFile):
                continue
            if contract.id in registry.contracts:
                other = display_path(registry.contracts[contract.id].path)
                raise BindingError(
                    f"{display_path(path)}: contract id {contract.id!r} is also used by {other}"
                )
            registry.contracts[contract.id] = contract
            for fid in dict.fromkeys(f.id for f in contract.falsifiers):
                registry.declared_by[fid].append(contract.id)
        return registry

    def resolve(self, ref: str) -> str:
        """``FALSIFY-X-001`` or ``contract-id:FALSIFY-X-001`` → ``contract-id:FALSIFY-X-001``."""
        if ":" in ref:
            cid, fid = ref.split(":", 1)
            contract = self.contracts.get(cid)
            if contract is None:
                raise BindingError(f"{ref}: no contract {cid!r} in {display_path(self.folder)}")
            if contract.falsifier(fid) is None:
                raise BindingError(f"{ref}: contract {cid} declares no falsifier {fid}")
            return ref
        owners = self.declared_by.get(ref, [])
        if len(owners) == 1:
            return f"{owners[0]}:{ref}"
        if owners:
            choices = ", ".join(f"'{cid}:{ref}'" for cid in owners)
            raise BindingError(
                f"{ref} is declared by {len(owners)} contracts; bind it qualified, one of {choices}"
            )
        near = difflib.get_close_matches(ref, list(self.declared_by), n=3)
        hint = f"; did you mean {', '.join(near)}?" if near else ""
        raise BindingError(f"{ref} is declared by no contract in {display_path(self.folder)}{hint}")

    def falsifier_ids(self, contract_id: str) -> list[str]:
        return [f"{contract_id}:{f.id}" for f in self.contracts[contract_id].falsifiers]
