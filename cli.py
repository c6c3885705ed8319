#!/usr/bin/env python
"""``python cli.py ...`` in a checkout: the command line of :mod:`pipeline.cli`, the same
as the installed ``workbench`` console script (``torchrun ... cli.py extract`` too)."""

from pipeline.cli import cli, main  # noqa: F401  (``cli`` for tests: CliRunner().invoke(cli.cli))

if __name__ == "__main__":
    main()
