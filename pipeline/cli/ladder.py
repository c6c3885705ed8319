"""``ladder``: the course ladder on one store's split, one table."""

from __future__ import annotations

import click

from ..configs import LadderConfig
from .errors import handle_errors
from .params import cache_dir_option, command, config_options, runs_option
from .tables import print_rows, selection_note


@command()
@config_options(LadderConfig)
@cache_dir_option("Keep cached trunk outputs on disk here.")
@runs_option
@handle_errors
def ladder(cache_dir, runs_dir, **fields):
    """Run the course ladder on one store's split and print its table.

    pixels -> MLP -> scratch CNN -> frozen logreg (best tap) -> fine-tune head
    only -> top groups -> differential learning rates -> gradual unfreezing.

    Example: python cli.py ladder --features features/flower_photos_efficientnet_lite0_avg.h5
    """
    import time

    from ..runs.groups import imbalanced
    from ..runs.records import find_record
    from ..workflows.ladder import run_ladder

    t0 = time.perf_counter()
    rows = run_ladder(LadderConfig(**fields), runs_dir, cache_dir)
    record = find_record(rows[0].run_ids[0], runs_dir)
    print_rows([_table_row(r) for r in rows], rows[0].metric, imbalanced(record),
               record.protocol, width=52, ladder=True)
    click.echo(selection_note(record))
    click.echo(f"\nrun records: {runs_dir}  ({len(rows) - 1} rungs in "
               f"{time.perf_counter() - t0:.0f} s)")


def _table_row(row) -> dict:
    """A :class:`~pipeline.workflows.ladder.LadderRow` as a row of
    :func:`~pipeline.cli.tables.print_rows` (selected on ``val_score``, scored in ``score``)."""
    return {"label": row.label, "select": row.val_score, "value": row.score,
            "low": row.ci[0], "high": row.ci[1], "seconds": row.fit_seconds,
            "accuracy": row.accuracy, "balanced_accuracy": row.balanced_accuracy,
            "macro_f1": row.macro_f1, "trainable_params": row.trainable_params,
            "score_std": row.score_std, "collapsed": row.collapsed}
