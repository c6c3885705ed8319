"""``baseline``: pixels, MLP or scratch CNN on a store's split -> a run record."""

from __future__ import annotations

import click

from ..configs import BaselineConfig
from .errors import handle_errors
from .params import command, config_options, runs_option
from .tables import selection_note


@command()
@config_options(BaselineConfig)
@runs_option
@handle_errors
def baseline(runs_dir, **fields):
    """Raw-pixel logistic regression, the course's MLP, or a small CNN from scratch.

    Uses the split stored in the feature store, so it is judged on the same
    test images as the frozen heads.

    Example: python cli.py baseline --kind cnn
    """
    from ..workflows.baseline import run_baseline
    from ..workflows.fit import summary_line

    record, path = run_baseline(BaselineConfig(**fields), runs_dir)
    click.echo(f"{record.label}: {summary_line(record)}  {path}")
    click.echo(selection_note(record))
