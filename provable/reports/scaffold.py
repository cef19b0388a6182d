"""``pv new ID``: a contract file that validates from its first minute."""

from __future__ import annotations

import datetime as _dt
import json
import re
from pathlib import Path

from provable.contracts.atomic import write_atomic
from provable.contracts.paths import project_root

CONTRACT_ID = re.compile(r"[a-z0-9][a-z0-9._-]*", re.ASCII)
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
  description: {description_yaml}
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
    for suffix in (".yaml", ".yml"):  # `pv new x.yaml` means the contract x
        if contract_id.endswith(suffix):
            contract_id = contract_id[: -len(suffix)]
    if not CONTRACT_ID.fullmatch(contract_id):
        raise ValueError(
            f"contract id {contract_id!r} must be lower-case letters, digits, '.', '_' or '-'"
            " (it is the file name too)"
        )
    prefix = (prefix or default_prefix(contract_id)).upper()
    if not re.fullmatch(r"[A-Z][A-Z0-9]*(?:-[A-Z0-9]+)*", prefix):
        raise ValueError(f"falsifier prefix {prefix!r} must be upper-case letters and digits")
    one_line = " ".join((description or f"claims of {contract_id}").split())
    text = TEMPLATE.format(
        id=contract_id,
        prefix_id=f"FALSIFY-{prefix}-001",
        description=one_line,
        description_yaml=json.dumps(one_line, ensure_ascii=False),  # JSON strings are YAML
        today=(today or _dt.date.today()).isoformat(),
    )
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{contract_id}.yaml"
    write_atomic(path, text, exclusive=True)
    ignore_run_files(project_root(folder))
    return path


#: what a run writes that must not be committed (DESIGN §3: history varies every run)
RUN_FILE_PATTERNS = ("evidence/**/history.jsonl", ".provable.lock", ".provable-journal.json")


def ignore_run_files(root: Path) -> None:
    """Add provable's per-run files to ``root/.gitignore`` (only the lines it lacks)."""
    gitignore = root / ".gitignore"
    try:
        text = gitignore.read_text(encoding="utf-8")
    except FileNotFoundError:
        text = ""
    present = {line.strip() for line in text.splitlines()}
    missing = [p for p in RUN_FILE_PATTERNS if p not in present]
    if not missing:
        return
    head = text if not text or text.endswith("\n") else text + "\n"
    body = "# provable: written by every run, never committed\n" + "\n".join(missing) + "\n"
    write_atomic(gitignore, head + body)
