"""``python -m manytask.cli``: the ``manytask`` command (e.g. under ``torchrun``)."""

import sys

from .main import main

sys.exit(main())
