"""``python -m cellreasoner.cli``: the same as the ``cellreasoner`` command."""

import sys

from . import main

sys.exit(main())
