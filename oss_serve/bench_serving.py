"""Entry point: `python -m oss_serve.bench_serving --help`. The benchmark lives in oss_serve.bench."""
from __future__ import annotations

import sys

from oss_serve.bench.serving import main

if __name__ == "__main__":
    sys.exit(main())
