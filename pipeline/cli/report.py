"""``report``: every run record of a folder -> one self-contained HTML page."""

from __future__ import annotations

import click

from ..options import SELECTION_METRICS
from .errors import handle_errors
from .params import command, overwrite_option, runs_option


@command()
@runs_option
@click.option("--out", default="reports/report.html", show_default=True,
              type=click.Path(), help="HTML file to write.")
@overwrite_option("report file")
@click.option("--metric", type=click.Choice(SELECTION_METRICS), default="auto",
              show_default=True,
              help="Metric that ranks and tests the runs; auto: the one they were selected "
                   "by, or (when they disagree) balanced_accuracy on imbalanced classes.")
@handle_errors
def report(runs_dir, out, overwrite, metric):
    """Write one self-contained HTML page comparing every run in --runs.

    Example: python cli.py report --runs reports/runs --out reports/flowers.html
    """
    from ..workflows.report import build_report

    path = build_report(runs_dir, out, overwrite=overwrite, metric=metric)
    click.echo(str(path))
