"""``predict``: label images with any run's model, or an exported ONNX classifier."""

from __future__ import annotations

import click

from ..options import DEFAULT_DIVERSITY, DIVERSITY_STEPS, UNCERTAINTY_SCORES
from .errors import handle_errors
from .params import command, device_option, model_option, overwrite_option, runs_option


@command()
@model_option
@click.argument("images", nargs=-1, required=True, type=click.Path(exists=True))
@click.option("--out", "out_csv", type=click.Path(), default=None, help="Write a CSV here.")
@overwrite_option("--out, --rank-out file or --explain overlay")
@click.option("--top-k", type=click.IntRange(min=1), default=3, show_default=True,
              help="Classes listed per image, best first.")
@click.option("--batch-size", type=click.IntRange(min=1), default=32, show_default=True)
@click.option("--explain", type=click.Path(file_okay=False), default=None,
              help="Write each image's class-activation overlay (where the model looks for "
                   "its predicted class) to this folder.")
@device_option
@runs_option
@click.option("--rank", type=click.Choice(UNCERTAINTY_SCORES), default=None,
              help="Also list the images to label next, least sure first by this score.")
@click.option("--rank-top", type=int, default=20, show_default=True,
              help="How many images --rank lists.")
@click.option("--rank-out", type=click.Path(), default=None,
              help="Write the --rank list here (CSV: rank, path, label, probability, "
                   "uncertainty).")
@click.option("--diversity", type=click.Choice(DIVERSITY_STEPS), default=DEFAULT_DIVERSITY,
              show_default=True, help="Spread the --rank list among the most uncertain: k-means "
                                      "clusters, greedy k-center, or none.")
@handle_errors
def predict(model_ref, images, out_csv, overwrite, top_k, batch_size, explain, device, runs_dir,
            rank, rank_top, rank_out, diversity):
    """Label images with any run's model: a frozen head, fine-tuned network, the CNN,
    MLP or pixel baseline, made as in training; or an exported .onnx (ONNX Runtime
    alone, no torch).

    Example: python cli.py predict --model 20261122T0901 photos/ --out preds.csv --top-k 2

    Example: python cli.py predict --model model.onnx photo.jpg

    Example: python cli.py predict --model 20261122T0901 unlabelled/ --rank margin
    --rank-top 20 --rank-out next.csv
    Example: python cli.py predict --model RUN photos/ --explain maps/
    """
    from ..workflows.predict import run_predict

    preds = run_predict(model_ref, images, runs_dir, out_csv, batch_size, device, top_k=top_k,
                        overwrite=overwrite, rank=rank, rank_top=rank_top, rank_out=rank_out,
                        diversity=diversity, explain=explain)
    width = min(60, max(len("path"), *(len(p.path) for p in preds)))
    label_width = max(len("label"), *(len(p.label) for p in preds))
    click.echo(f"{'path':<{width}}  {'label':<{label_width}}  {'prob':>6}  top-{top_k}")
    for p in preds:
        if p.error:
            click.echo(f"{p.path:<{width}}  {'SKIPPED':<{label_width}}  {'':>6}  {p.error}")
        else:
            top = ", ".join(f"{c} {q:.3f}" for c, q in p.top)
            click.echo(f"{p.path:<{width}}  {p.label:<{label_width}}  {p.probability:>6.4f}  "
                       f"{top}")
    if out_csv:
        click.echo(f"wrote {out_csv}")
    if explain:
        click.echo(f"wrote {sum(bool(p.overlay) for p in preds)} overlays to {explain}")
    if rank:
        _echo_ranked(preds, rank, width, rank_out)


def _echo_ranked(preds, rank, width, rank_out):
    ranked = sorted((p for p in preds if p.rank), key=lambda p: p.rank)
    click.echo(f"\nlabel next ({len(ranked)}, least sure by {rank} first):")
    for p in ranked:
        click.echo(f"{p.rank:>4}  {p.path:<{width}}  {p.label}  {p.probability:.4f}  "
                   f"{rank} {p.uncertainty:.4f}")
    if rank_out:
        click.echo(f"wrote {rank_out}")
