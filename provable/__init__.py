"""provable: contract-driven falsification.

A generic contract engine: YAML contracts state claims, each claim carries falsifiers, a
pytest plugin binds falsifiers to tests and rewrites statuses with evidence. It knows
nothing about models; that is ``aprlib``'s business.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

from provable.version import __version__

#: the documented API, name -> module; imported on first use so ``pv --help`` stays fast
_API = {
    "Contract": "provable.contracts.model",
    "read_contract": "provable.contracts.model",
    "load_contract": "provable.contracts.model",
    "Registry": "provable.contracts.registry",
    "BindingError": "provable.contracts.registry",
    "Finding": "provable.contracts.findings",
    "Report": "provable.contracts.validate",
    "validate_paths": "provable.contracts.validate",
    "discover": "provable.contracts.validate",
    "FalsifierStatus": "provable.contracts.lifecycle",
    "ContractStatus": "provable.contracts.lifecycle",
    "Outcome": "provable.contracts.lifecycle",
    "promote": "provable.contracts.lifecycle",
    "derive_contract_status": "provable.contracts.lifecycle",
    "parse_falsifier_status": "provable.contracts.lifecycle",
    "TestVerdict": "provable.contracts.lifecycle",
    "Raised": "provable.contracts.lifecycle",
    "classify_failure": "provable.contracts.lifecycle",
    "after_rerun": "provable.contracts.lifecycle",
    "falsifier_outcome": "provable.contracts.lifecycle",
    "not_yet_written": "provable.plugin.outcomes",
    "NotYetWritten": "provable.plugin.outcomes",
    "EnvironmentFault": "provable.plugin.outcomes",
    "TestResult": "provable.plugin.session",
    "FalsifierRun": "provable.plugin.session",
    "SessionScope": "provable.plugin.session",
    "aggregate": "provable.plugin.plan",
    "plan_contract": "provable.plugin.plan",
    "ContractChange": "provable.plugin.plan",
    "apply_session": "provable.plugin.update",
    "commit_files": "provable.plugin.writer",
    "recover": "provable.plugin.writer",
    "Evidence": "provable.contracts.evidence",
    "YamlSourceError": "provable.contracts.yamlsource",
    "read_yaml": "provable.contracts.yamlsource",
}
__all__ = [
    "BindingError",
    "Contract",
    "ContractChange",
    "ContractStatus",
    "EnvironmentFault",
    "Evidence",
    "FalsifierRun",
    "FalsifierStatus",
    "Finding",
    "NotYetWritten",
    "Outcome",
    "Raised",
    "Registry",
    "Report",
    "SessionScope",
    "TestResult",
    "TestVerdict",
    "YamlSourceError",
    "__version__",
    "after_rerun",
    "aggregate",
    "apply_session",
    "classify_failure",
    "commit_files",
    "derive_contract_status",
    "discover",
    "falsifier_outcome",
    "load_contract",
    "not_yet_written",
    "parse_falsifier_status",
    "plan_contract",
    "promote",
    "read_contract",
    "read_yaml",
    "recover",
    "validate_paths",
]

if TYPE_CHECKING:
    from provable.contracts.evidence import Evidence
    from provable.contracts.findings import Finding
    from provable.contracts.lifecycle import (
        ContractStatus,
        FalsifierStatus,
        Outcome,
        Raised,
        TestVerdict,
        after_rerun,
        classify_failure,
        derive_contract_status,
        falsifier_outcome,
        parse_falsifier_status,
        promote,
    )
    from provable.contracts.model import Contract, load_contract, read_contract
    from provable.contracts.registry import BindingError, Registry
    from provable.contracts.validate import Report, discover, validate_paths
    from provable.contracts.yamlsource import YamlSourceError, read_yaml
    from provable.plugin.outcomes import EnvironmentFault, NotYetWritten, not_yet_written
    from provable.plugin.plan import ContractChange, aggregate, plan_contract
    from provable.plugin.session import FalsifierRun, SessionScope, TestResult
    from provable.plugin.update import apply_session
    from provable.plugin.writer import commit_files, recover


def __getattr__(name: str) -> Any:
    module = _API.get(name)
    if module is None:
        raise AttributeError(f"module 'provable' has no attribute {name!r}")
    value = getattr(import_module(module), name)
    globals()[name] = value
    return value
