"""Sample contract texts shared by the unit tests."""

CLEAN_CONTRACT = """\
# a clean contract: every rule passes
metadata:
  id: {id}
  version: "1.1.0"
  status: PARTIAL_ALGORITHM_LEVEL
  description: "a clean contract"
  depends_on: []

equations:
  add:
    formula: "a + b"
    invariants: ["commutes"]

proof_obligations:
  - type: invariant
    property: "commutes"
    applies_to: all

falsification_tests:
  - id: FALSIFY-CLEAN-001
    rule: "addition commutes"
    prediction: "a + b == b + a"
    test: "hypothesis"
    if_fails: "broken adder"
    status: PARTIAL
  - id: FALSIFY-CLEAN-002
    rule: "zero is neutral"
    prediction: "a + 0 == a"
    status: PROPOSED

enforcement:
  commutes:
    check: "FALSIFY-CLEAN-001"

changelog:
  - {{version: "1.0.0", date: "2026-01-01", change: "created"}}
  - {{version: "1.1.0", date: "2026-01-02", change: "FALSIFY-CLEAN-001 PROPOSED -> PARTIAL"}}
"""
