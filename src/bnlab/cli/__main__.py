"""``python -m bnlab.cli``: the same entry point as the ``bnlab`` console script."""

import sys

from bnlab.cli import main

sys.exit(main())
