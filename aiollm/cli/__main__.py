"""`python -m aiollm.cli ...`: the `aiollm` command."""

import sys

from aiollm.cli import main

sys.exit(main())
