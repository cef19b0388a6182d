"""``--json`` output is strict RFC 8259: what JSON.parse, Go and serde accept."""

from __future__ import annotations

import json

from hypothesis import given
from hypothesis import strategies as st

from aprlib.formats.jsonout import dumps, finite_or_null

VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=5),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=3), inner, max_size=4)
    ),
    max_leaves=20,
)


def _refuse(name: str) -> float:
    raise ValueError(f"{name} is not JSON")


@given(VALUES)
def test_every_document_parses_strictly_and_keeps_its_finite_numbers(value):
    back = json.loads(dumps(value), parse_constant=_refuse)
    assert back == json.loads(json.dumps(finite_or_null(value)))


def test_non_finite_numbers_become_null_and_unchanged_containers_are_not_copied():
    doc = {"m": float("inf"), "rows": [1.5, float("nan")], "ok": [1, 2, 3]}
    assert json.loads(dumps(doc)) == {"m": None, "rows": [1.5, None], "ok": [1, 2, 3]}
    big = list(range(1000))
    assert finite_or_null(big) is big
