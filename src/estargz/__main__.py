"""``python -m estargz``: the command line."""

import sys

from estargz.cli import main

sys.exit(main())
