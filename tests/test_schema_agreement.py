"""The fast schema check and jsonschema (the authority) give the same verdict."""

from __future__ import annotations

import copy

import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from provable.contracts.rules import _schema_validator, schema_valid_fast
from tests.contract_samples import CLEAN_CONTRACT

BASE = yaml.safe_load(CLEAN_CONTRACT.format(id="clean-v1"))
BASE["falsification_tests"][0]["hosts"] = ["cpu", "cuda"]
BASE["kani_harnesses"] = [{"id": "K-1", "obligation": "O", "bound": 4}]
BASE["verification_summary"] = {"total_obligations": 1}

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-5, 5)
    | st.floats(allow_nan=False)
    | st.sampled_from(["", "cpu", "cuda", "tpu", "1.0.0", "Bad ID", "x-v1", "PROPOSED"]),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3)
    ),
    max_leaves=6,
)


def paths(node, prefix=()):
    yield prefix
    if isinstance(node, dict):
        for k, v in node.items():
            yield from paths(v, (*prefix, k))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from paths(v, (*prefix, i))


ALL_PATHS = [p for p in paths(BASE) if p]


@settings(max_examples=400, deadline=None, database=None)
@given(st.lists(st.tuples(st.sampled_from(ALL_PATHS), json_values), min_size=1, max_size=3))
def test_fast_check_agrees_with_jsonschema(edits):
    data = copy.deepcopy(BASE)
    for path, value in edits:
        node = data
        try:
            for key in path[:-1]:
                node = node[key]
            node[path[-1]] = value
        except (KeyError, IndexError, TypeError):
            continue
    full = not any(True for _ in _schema_validator().iter_errors(data))
    assert schema_valid_fast(data) == full
