"""`python -m aiollm serve ...`: the `aiollm` command, for an environment whose scripts are
not on PATH (or a checkout on PYTHONPATH)."""

import sys

from aiollm.cli import main

sys.exit(main())
