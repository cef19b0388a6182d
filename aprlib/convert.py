"""Old home of the converters: ``aprlib.convert`` is ``aprlib.conversion``.

``from aprlib import convert`` is the documented *function*; this alias keeps
``from aprlib.convert import write_model`` (older code, other branches) working.
"""

import sys

from aprlib import conversion

sys.modules[__name__] = conversion
