"""``python -m manytask``: the ``manytask`` command."""

import sys

from .cli.main import main

sys.exit(main())
