"""``fit``: a scikit-learn head on a store's cached features -> run records and heads."""

from __future__ import annotations

import click

from ..configs import FitConfig
from .errors import handle_errors
from .params import command, config_options, runs_option
from .tables import selection_note


@command()
@config_options(FitConfig)
@runs_option
@handle_errors
def fit(runs_dir, **fields):
    """Train a scikit-learn head on cached features and score it on the test split.

    The hyperparameter (C, k for knn, alpha for sgd-logreg) is chosen on the
    validation split over a log grid; the head is refitted on train+val; one
    run record (JSON) and the fitted head (skops) are written per tap.
    sgd-logreg streams the store in blocks, for features larger than memory.
    On imbalanced classes (largest > 1.5x smallest) --metric auto selects by
    balanced accuracy and --class-weight auto weights classes (balanced).

    Example: python cli.py fit --layer all --clf svm
    """
    from ..workflows.fit import run_fit, summary_line

    out = run_fit(FitConfig(**fields), runs_dir)
    for record, path in out:
        click.echo(f"{record.label}: {record.hyperparameters} {summary_line(record)}  "
                   f"{path}")
    click.echo(selection_note(out[0][0]))
