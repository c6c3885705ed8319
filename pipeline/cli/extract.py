"""``extract``: an image folder or label table -> a feature store (HDF5)."""

from __future__ import annotations

import click

from ..configs import ExtractConfig
from .errors import handle_errors
from .params import backbone_choice, command, config_options


@command()
@config_options(ExtractConfig, backbone=backbone_choice())
@click.option("--shard", default=None, metavar="K/N",
              help="Without torchrun: extract only shard K of N (0-based) into "
                   "<store>.shards/, e.g. to re-run one failed rank; no merge.")
@click.option("--merge-shards", type=int, default=None, metavar="N",
              help="Merge the N finished shards into the store (no extraction).")
@handle_errors
def extract(shard, merge_shards, **fields):
    """Pass every image once through a frozen backbone; store pooled taps in HDF5.

    --data is a folder with one sub-folder per class, a folder of split folders
    (train/<class>/, val/<class>/, test/<class>/: that split is kept) or a label
    table (path and label columns, optional split and group columns).  One
    forward pass per batch computes all requested taps; a split (the data's,
    else 70/15/15, stratified, by --seed, keeping --groups apart) is stored
    beside the vectors.  A re-run does no forward pass; added or changed
    images are extracted alone; new labels, splits or groups rewrite the index
    only; an interrupted run resumes.

    Example: python cli.py extract --data photos/train_test_root

    Example: python cli.py extract --data labels.csv --groups table

    Under torchrun each rank extracts its shard of the images on its own
    device and rank 0 merges the shards into the same store one process writes.

    Example: python cli.py extract --data ../shared/datasets/flower_photos --layer layer3

    Example: torchrun --nproc_per_node=4 cli.py extract --data photos/ --layer head
    """
    from ..extraction.shards import launch_extract

    summary = launch_extract(ExtractConfig(**fields), shard=shard, merge_world=merge_shards)
    for line in summary.describe():
        if not line.startswith("WARNING: "):  # warnings went to the log (stderr) already
            click.echo(line)
    if summary.up_to_date:
        click.echo(f"up to date: {summary.n_images} images, no forward pass")
    elif not summary.n_extracted and not summary.n_resumed:
        click.echo(f"index rewritten (labels, split, groups or the files left out changed): "
                   f"{summary.n_reused} images reused, no forward pass")
    else:
        click.echo(f"extracted {summary.n_extracted} images "
                   f"({summary.images_per_second:.1f} img/s), reused {summary.n_reused}, "
                   f"resumed {summary.n_resumed}, in {summary.seconds:.1f} s "
                   f"(runtime {summary.runtime}:{summary.precision})")
    if summary.skipped:
        click.echo(f"skipped {len(summary.skipped)} file(s) or table row(s), each with its "
                   "reason:")
        for path, reason in summary.skipped:
            click.echo(f"  {path}: {reason}")
    click.echo(str(summary.path))
