"""``python -m containerjobs``: the same as the ``containerjobs`` command."""

import sys

from .cli import main

sys.exit(main())
