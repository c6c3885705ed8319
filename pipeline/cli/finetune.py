"""``finetune``: fine-tune a pretrained backbone on a store's split, for one or more seeds."""

from __future__ import annotations

import click

from ..configs import FinetuneConfig
from .errors import handle_errors
from .params import cache_dir_option, command, config_options, runs_option
from .tables import selection_note


@command()
@config_options(FinetuneConfig)
@click.option("--seeds", type=click.IntRange(min=1), default=1, show_default=True,
              help="Repeat with seeds seed..seed+N-1 (one group in the report).")
@cache_dir_option("Keep cached trunk outputs on disk here (reused by later runs, --resume).")
@runs_option
@handle_errors
def finetune(seeds, cache_dir, runs_dir, **fields):
    """Fine-tune a pretrained backbone on the feature store's split.

    Example: python cli.py finetune --unfreeze-from layer4 --lr 1e-3 --lr-factor 0.3 --seeds 3
    """
    from ..workflows.finetune import run_finetune_seeds
    from ..workflows.fit import summary_line

    out = run_finetune_seeds(FinetuneConfig(**fields), seeds, runs_dir, cache_dir)
    for record, path in out:
        click.echo(f"{record.label} (seed {record.seed}): {summary_line(record)}  "
                   f"{record.fit_seconds:.0f} s  {path}")
    click.echo(selection_note(out[0][0]))
