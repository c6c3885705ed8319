"""``explore``: the transfer explorer's grid on a store's split."""

from __future__ import annotations

import click

from ..configs import ExploreConfig
from .errors import handle_errors
from .params import cache_dir_option, command, config_options, runs_option


@command()
@config_options(ExploreConfig)
@cache_dir_option("Keep the trunk caches here (default: RUNS/explore/cache); a resumed grid "
                  "reuses them.")
@runs_option
@handle_errors
def explore(cache_dir, runs_dir, **fields):
    """Transfer explorer: fine-tune a grid of unfreeze depth x images per class x learning
    rate on the store's split; the report draws it as an interactive chart.

    Resumable: run the same command again after an interruption.

    Example: python cli.py explore --depth 0 --depth 2 --per-class 10 --per-class all --lr 1e-3
    """
    from ..workflows.explore import run_explore

    record, path = run_explore(ExploreConfig(**fields), runs_dir, cache_dir)
    click.echo(f"{'depth':<34} {'per class':>9} {'lr':>8} {'val acc':>8} {'test acc':>9} "
               f"{'train s':>8}")
    for c in record["cells"]:
        click.echo(f"{c['label'][:34]:<34} {str(c['per_class'] or 'all'):>9} {c['lr']:>8g} "
                   f"{c['val_accuracy']:>8.3f} {c['test_accuracy']:>9.3f} "
                   f"{c['train_seconds']:>8.1f}")
    seconds = sum(c["seconds"] for c in record["cells"])
    click.echo(f"\n{len(record['cells'])} cells in {seconds:.0f} s of compute; record: {path}")
