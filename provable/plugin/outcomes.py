"""Exceptions a falsifier test raises to say something other than "the claim is false".

A failing assertion is a counterexample. These are not:

* ``NotYetWritten`` (raised by ``not_yet_written()``): the test is a scaffold placeholder.
  The falsifier stays PROPOSED and is listed as "not yet written"; pytest still reports the
  test as failed, so an unwritten test is never green.
* ``EnvironmentFault``: the test could not check the claim (an oracle that could not run, a
  resource the machine lacks). Subclass it, or declare your own exception classes as
  environmental with ``@pytest.mark.falsifies(ID, environment=(MyError,))`` or the
  ``provable_environment_errors`` ini option, so that nothing here needs importing.

Cheap to import: the pytest plugin matches these by qualified class name.
"""

from __future__ import annotations

from typing import NoReturn

__all__ = ["EnvironmentFault", "NotYetWritten", "not_yet_written"]


class NotYetWritten(Exception):
    """A scaffold's placeholder body: no test has been written for this falsifier."""


class EnvironmentFault(Exception):
    """The machine, not the claim: the test could not observe anything about the claim."""


def not_yet_written(message: str = "not yet written") -> NoReturn:
    """Mark a falsifier test as a placeholder (``pv scaffold`` writes a call to this)."""
    raise NotYetWritten(message)
