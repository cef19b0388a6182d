"""One hypothesis policy for every falsifier.

Falsifiers write committed evidence, so a repeat run must explore the same examples:
derandomised, no example database, no deadline (CI machines vary). The property tests under
``tests/`` keep hypothesis's randomness.
"""

from __future__ import annotations

from hypothesis import HealthCheck, settings


def reproducible(max_examples: int) -> settings:
    return settings(
        max_examples=max_examples,
        deadline=None,
        database=None,
        derandomize=True,
        suppress_health_check=[HealthCheck.function_scoped_fixture],
    )
