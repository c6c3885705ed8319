"""The command line: click commands over the workflows, one module per command.

Each command's options come from its config dataclass (:mod:`pipeline.configs`,
through :func:`.params.config_options`); the command builds the config, calls
ONE workflow function and prints where its output went.  Library errors become
a one-line message in the command's flags (:mod:`.errors`).  Started as the
``workbench`` console script, ``python -m pipeline.cli``, or ``python cli.py`` in
a checkout (a shim over :func:`main`).

Adding a command is adding a module here with one click command, and its line
in :data:`COMMANDS`.
"""

from __future__ import annotations

import logging
import sys

import click

from . import (
    audit,
    backbones,
    baseline,
    bench,
    demo,
    explore,
    export,
    extract,
    finetune,
    fit,
    hierarchy,
    ladder,
    predict,
    report,
    track,
)
from .params import Group


@click.group(cls=Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-v", "--verbose", is_flag=True, help="Log every step (DEBUG).")
@click.option("-q", "--quiet", is_flag=True, help="Only warnings and errors.")
def cli(verbose, quiet):
    """Transfer-learning workbench: frozen pretrained features, scikit-learn heads,
    baselines and fine-tuning, compared in one HTML report.

    Start with `python cli.py demo`.
    """
    level = logging.DEBUG if verbose else logging.WARNING if quiet else logging.INFO
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s",
                        stream=sys.stderr)


#: Every command, one module each.
COMMANDS = (backbones.backbones, extract.extract, fit.fit, baseline.baseline,
            predict.predict, export.export, report.report, hierarchy.hierarchy, demo.demo,
            finetune.finetune, ladder.ladder, explore.explore, bench.bench, audit.audit,
            track.track)
for _command in COMMANDS:
    cli.add_command(_command)


def main():
    """The ``workbench`` console script: the same CLI as ``python cli.py``."""
    try:
        cli()
    finally:
        exit_without_collecting()


def exit_without_collecting():
    """Spare the exiting interpreter its garbage collections of everything loaded.

    At exit CPython clears every module and collects cycles over all the objects
    left, which after torch (and timm, torchvision, torch._dynamo on a first run)
    are millions: measured on 2 cores under load, 0.6-0.8 s of a process that only
    imported torch, 1.4 s with timm.  Freezing them (:func:`gc.freeze`) leaves
    every exit handler, ``with`` block and reference-counted finalizer to run as
    usual; only the cyclic garbage of a process about to end is not collected.
    Called once the command is done (not from tests, which call :data:`cli`).
    """
    import gc

    gc.freeze()
