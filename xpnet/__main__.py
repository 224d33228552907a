"""``python -m xpnet``: see ``xpnet.cli``."""

import sys

from xpnet.cli import main

sys.exit(main())
