#!/usr/bin/env python
"""Run the speed sweep outside pytest; the same as ``python -m xpnet bench``.

The table in bench/RESULTS.md comes from:

    python scripts/bench.py --profile 64,4096 --json bench/results.json \
        --png bench/results.png --markdown bench/RESULTS.md --notes bench/NOTES.md --history

(``--history`` appends the run to bench/history/; see bench/HISTORY.md.)
"""

import sys

from xpnet.bench.cli import main

if __name__ == "__main__":
    sys.exit(main())
