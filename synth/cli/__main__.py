"""``python -m synth.cli``: the ``synth`` command."""

import sys

from synth.cli import main

sys.exit(main())
