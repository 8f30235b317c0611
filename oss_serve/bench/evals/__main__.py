"""`python -m oss_serve.bench.evals --help`."""
from __future__ import annotations

import sys

from oss_serve.bench.evals.cli import main

if __name__ == "__main__":
    sys.exit(main())
