"""``finetune``: fine-tune a pretrained backbone on a store's split, for one or more seeds."""

from __future__ import annotations

import click

from ..configs import PRESETS, FinetuneConfig, preset_config
from .errors import handle_errors
from .params import cache_dir_option, command, config_options, runs_option
from .tables import selection_note


@command()
@config_options(FinetuneConfig)
@click.option("--seeds", type=click.IntRange(min=1), default=1, show_default=True,
              help="Repeat with seeds seed..seed+N-1 (one group in the report).")
@click.option("--preset", type=click.Choice(list(PRESETS)), default="none", show_default=True,
              help="A tested recipe (recommended: LP-FT, warm-up + cosine, EMA, mixup, "
                   "WiSE-FT, flip TTA on the top groups; docs/finetuning.md); the options "
                   "you give win over it.")
@cache_dir_option("Keep cached trunk outputs on disk here (reused by later runs, --resume).")
@runs_option
@handle_errors
def finetune(preset, seeds, cache_dir, runs_dir, **fields):
    """Fine-tune a pretrained backbone on the feature store's split.

    Example: python cli.py finetune --unfreeze-from layer4 --lr 1e-3 --lr-factor 0.3 --seeds 3
    """
    from ..workflows.finetune import run_finetune_seeds
    from ..workflows.fit import summary_line

    ctx = click.get_current_context()
    given = {k for k in fields
             if ctx.get_parameter_source(k) != click.core.ParameterSource.DEFAULT}
    out = run_finetune_seeds(preset_config(preset, given, **fields), seeds, runs_dir, cache_dir)
    for record, path in out:
        click.echo(f"{record.label} (seed {record.seed}): {summary_line(record)}  "
                   f"{record.fit_seconds:.0f} s  {path}")
    click.echo(selection_note(out[0][0]))
