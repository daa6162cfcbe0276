"""Sample legacy code for tests/test_deprecation_static.py (type-checked, never run)."""

import compat
from compat import LinearA8W8Quant, LinearQuant  # mypy flags a from-import here, once

legacy = compat.LinearA8W8Quant(5, 127, False)
modern = LinearQuant(5, 127, bias=False)
legacy_too = LinearA8W8Quant(5, 127, bias=False)
