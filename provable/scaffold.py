"""``pv new ID``: a contract file that validates from its first minute."""

from __future__ import annotations

import datetime as _dt
import re
from pathlib import Path

from provable.atomic import write_atomic

CONTRACT_ID = re.compile(r"^[a-z0-9][a-z0-9._-]*$")
_VERSION_SUFFIX = re.compile(r"^v\d+$")

TEMPLATE = """\
# {id}: {description}
# Each claim gets a falsifier: a prediction that would be observed if the claim were false.
# Bind a test to it with @pytest.mark.falsifies("{prefix_id}") and run
#   pytest --contract {id}
metadata:
  id: {id}
  version: "0.1.0"
  status: PROPOSED
  description: "{description}"
  created: "{today}"
  references: []
  depends_on: []

equations:
  claim:
    formula: "y = f(x)"
    domain: "x in R^n"
    invariants:
      - "state what must always hold"

proof_obligations:
  - type: invariant
    property: "state the property"
    formal: "forall x: P(f(x))"
    applies_to: all

falsification_tests:
  - id: {prefix_id}
    rule: "state the claim this falsifier attacks"
    prediction: "what a passing test observes when the claim holds"
    test: "how the test tries to refute it"
    if_fails: "what a failure would mean"
    hosts: [cpu]
    status: PROPOSED

changelog:
  - version: "0.1.0"
    date: "{today}"
    change: "created by pv new"
"""


def default_prefix(contract_id: str) -> str:
    """The last word before the version, as DESIGN names them: tensor-layout-v1 → LAYOUT."""
    words = [w for w in re.split(r"[-_.]", contract_id) if w and not _VERSION_SUFFIX.match(w)]
    word = re.sub(r"[^A-Z0-9]", "", words[-1].upper()) if words else ""
    if not word or not word[0].isalpha():
        return "X"
    return word[:10]


def new_contract(
    contract_id: str,
    folder: Path,
    prefix: str | None = None,
    description: str | None = None,
    today: _dt.date | None = None,
) -> Path:
    """Write ``folder/<id>.yaml``; refuses to overwrite (``FileExistsError``)."""
    if not CONTRACT_ID.match(contract_id):
        raise ValueError(
            f"contract id {contract_id!r} must be lower-case letters, digits, '.', '_' or '-'"
            " (it is the file name too)"
        )
    prefix = (prefix or default_prefix(contract_id)).upper()
    if not re.fullmatch(r"[A-Z][A-Z0-9]*(?:-[A-Z0-9]+)*", prefix):
        raise ValueError(f"falsifier prefix {prefix!r} must be upper-case letters and digits")
    text = TEMPLATE.format(
        id=contract_id,
        prefix_id=f"FALSIFY-{prefix}-001",
        description=(description or f"claims of {contract_id}").replace('"', "'"),
        today=(today or _dt.date.today()).isoformat(),
    )
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{contract_id}.yaml"
    write_atomic(path, text, exclusive=True)
    return path
