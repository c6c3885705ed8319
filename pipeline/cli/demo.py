"""``demo``: the whole chain on the bundled flowers subset, its table and report."""

from __future__ import annotations

import click

from ..configs import FitConfig
from .errors import handle_errors
from .params import command, config_options
from .tables import print_rows, selection_note


@command()
@click.option("--out", "out_dir", default="reports/demo", show_default=True,
              help="Folder for this demo's runs and report (a new timestamped sub-folder).")
@click.option("--progress/--no-progress", default=True, show_default=True,
              help="Show extraction's progress bar.")
@config_options(FitConfig, only=("protocol", "metric", "class_weight"))
@handle_errors
def demo(out_dir, progress, protocol, metric, class_weight):
    """The whole chain on the bundled flowers subset, then the report.

    Extract efficientnet_lite0 layer2-4, fit logreg and svm on each tap,
    run the pixel and scratch-CNN baselines, fine-tune the top block group,
    compute the feature hierarchy and a small transfer-explorer grid, print
    the summary table and write the HTML report.

    Example: python cli.py demo
    """
    from ..runs.groups import imbalanced
    from ..workflows.demo import run_demo, summary_rows

    result = run_demo(out_dir=out_dir, progress=progress, protocol=protocol, metric=metric,
                      class_weight=class_weight)
    records = result["records"]
    r = records[0]
    rows = summary_rows(records)
    print_rows(rows, rows[0]["metric"], imbalanced(r), r.protocol)
    sizes = r.split_sizes
    if r.protocol.cross_validated:
        click.echo(f"\nprotocol: {r.protocol.why or r.protocol}\nevery method on the same "
                   f"{len(r.cv['fold_scores'])} folds ({r.cv['n_folds']}-fold x "
                   f"{r.cv['n_repeats']}) of all {len(r.predictions['y_true'])} images; "
                   "rows ranked by the cross-validated mean; finished in "
                   f"{result['seconds']:.0f} s")
    else:
        click.echo(f"\nsplit train/val/test = {sizes['train']}/{sizes['val']}/{sizes['test']} "
                   f"images (rows ranked on validation); finished in "
                   f"{result['seconds']:.0f} s")
    click.echo(selection_note(r))
    click.echo(f"report: {result['report']}")
