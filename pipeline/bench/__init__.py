"""Benchmarks shipped in the package, so ``workbench bench NAME`` runs them from an
installed wheel as ``python cli.py bench NAME`` does from a checkout.

Each benchmark is a module with ``main(argv)``; :data:`BENCHMARKS` names them.
The other studies under ``benchmarks/`` in a checkout are scripts that read
the repository's data and stay there.
"""

from __future__ import annotations

import importlib

#: Benchmark name -> its module under :mod:`pipeline.bench`.
BENCHMARKS = {"extract": "extract"}


def load_benchmark(name: str):
    """The module of benchmark ``name`` (imported now: benchmarks import torch)."""
    return importlib.import_module(f"{__name__}.{BENCHMARKS[name]}")
