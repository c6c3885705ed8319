#!/usr/bin/env python
"""Extraction benchmark: naive reference, forward-only ceiling, and ``extract``.

The benchmark lives in the package (:mod:`pipeline.bench.extract`, also run by
``python cli.py bench extract`` and an installed ``workbench bench extract``);
this script runs it from a checkout, with the same arguments::

    python benchmarks/bench_extract.py --scale --skip-naive
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline.bench.extract import main  # noqa: E402

if __name__ == "__main__":
    main()
