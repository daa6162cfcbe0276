"""``python -m compat``: see :mod:`compat.cli`."""

import sys

from compat.cli import main

if __name__ == "__main__":
    sys.exit(main())
