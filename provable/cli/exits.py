"""Exit codes every ``pv`` command shares, and the one way a usage error is printed.

0 nothing wrong; 1 findings (errors, an unbumped version, a cycle…); 2 usage (a name naming
nothing, a bad flag value). Its own module so that ``main`` (which registers the analysis
commands) and ``analysis`` both import it, and neither imports the other's internals.
"""

from __future__ import annotations

import sys

EXIT_OK, EXIT_FINDINGS, EXIT_USAGE = 0, 1, 2


def usage(message: str) -> int:
    """Print ``pv: error: message`` to stderr; return the usage exit code."""
    print(f"pv: error: {message}", file=sys.stderr)
    return EXIT_USAGE
