"""``python -m meds_core``: the ``meds`` command (see meds_core.cli)."""

import sys

from meds_core.cli import main

if __name__ == "__main__":
    sys.exit(main())
