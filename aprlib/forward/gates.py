"""Named pass/fail gates and the verdict they give, shared by every ``--compare``.

``apr logits --compare`` and ``apr trace --compare`` each hold ``gates`` (name → a dict with
at least ``pass``); the verdict and the exit code come from the same rule: PASS only when
every gate passes, and the failed gates are named.
"""

from __future__ import annotations

from typing import Any

#: the default gates of ``apr trace --compare``: B's statistic over A's at one point, either way
#: (a ratio r counts as max(r, 1/r)). Two forwards of one model in float32 and bfloat16, or
#: on two backends, sit within a few percent; a mis-scaled tensor or a dropped norm moves
#: a point's spread by a factor.
MAX_STD_RATIO = 1.25
MAX_ABSMAX_RATIO = 2.0
#: what ``apr bisect --expect`` accepts: the dtypes whose rounding a side may be expected
#: to show (``bisect.ARITHMETIC`` says what each means for the floor)
EXPECT = ("f32", "bf16", "f16", "q8_0", "q4_k")


class Gated:
    """Mixin for a result with ``gates``: its ``failed`` gate names and its ``verdict``."""

    gates: dict[str, dict[str, Any]]

    @property
    def failed(self) -> list[str]:
        return [name for name, g in self.gates.items() if not g["pass"]]

    @property
    def verdict(self) -> str:
        return "FAIL" if self.failed else "PASS"
