"""provable: contract-driven falsification.

A generic contract engine: YAML contracts state claims, each claim carries falsifiers, a
pytest plugin binds falsifiers to tests and rewrites statuses with evidence. It knows
nothing about models; that is ``aprlib``'s business.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

#: the documented API, name -> module; imported on first use so ``pv --help`` stays fast
_API = {
    "Contract": "provable.model",
    "read_contract": "provable.model",
    "load_contract": "provable.model",
    "Registry": "provable.registry",
    "BindingError": "provable.registry",
    "Finding": "provable.findings",
    "Report": "provable.validate",
    "validate_paths": "provable.validate",
    "discover": "provable.validate",
    "FalsifierStatus": "provable.lifecycle",
    "ContractStatus": "provable.lifecycle",
    "Outcome": "provable.lifecycle",
    "promote": "provable.lifecycle",
    "derive_contract_status": "provable.lifecycle",
    "parse_falsifier_status": "provable.lifecycle",
    "TestVerdict": "provable.lifecycle",
    "Raised": "provable.lifecycle",
    "classify_failure": "provable.lifecycle",
    "after_rerun": "provable.lifecycle",
    "falsifier_outcome": "provable.lifecycle",
    "not_yet_written": "provable.outcomes",
    "NotYetWritten": "provable.outcomes",
    "EnvironmentFault": "provable.outcomes",
    "TestResult": "provable.session",
    "FalsifierRun": "provable.session",
    "SessionScope": "provable.session",
    "aggregate": "provable.plan",
    "plan_contract": "provable.plan",
    "ContractChange": "provable.plan",
    "apply_session": "provable.update",
    "commit_files": "provable.writer",
    "recover": "provable.writer",
    "Evidence": "provable.evidence",
    "YamlSourceError": "provable.yamlsource",
    "read_yaml": "provable.yamlsource",
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
    from provable.evidence import Evidence
    from provable.findings import Finding
    from provable.lifecycle import (
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
    from provable.model import Contract, load_contract, read_contract
    from provable.outcomes import EnvironmentFault, NotYetWritten, not_yet_written
    from provable.plan import ContractChange, aggregate, plan_contract
    from provable.registry import BindingError, Registry
    from provable.session import FalsifierRun, SessionScope, TestResult
    from provable.update import apply_session
    from provable.validate import Report, discover, validate_paths
    from provable.writer import commit_files, recover
    from provable.yamlsource import YamlSourceError, read_yaml


def __getattr__(name: str) -> Any:
    module = _API.get(name)
    if module is None:
        raise AttributeError(f"module 'provable' has no attribute {name!r}")
    value = getattr(import_module(module), name)
    globals()[name] = value
    return value
