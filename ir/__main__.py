"""``python -m ir``: the IR demo (see ``ir.demo``)."""

import sys

from ir.demo import main

sys.exit(main())
