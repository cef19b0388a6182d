"""Old home of the APR reader and writer: ``aprlib.apr`` is ``aprlib.formats.apr``."""

import sys

from aprlib.formats import apr

sys.modules[__name__] = apr
