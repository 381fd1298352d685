"""``python -m benchmarks``: run the benchmarks (see ``benchmarks.runner`` and the README)."""

from __future__ import annotations

import sys

from benchmarks.runner import main

if __name__ == "__main__":
    sys.exit(main())
