"""The contract model and its rules: a contract read from YAML, checked against the schema and
the rules, the status lifecycle (pure decisions), evidence files, round-trip rewriting.
Knows nothing of pytest.
"""
