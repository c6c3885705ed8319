"""``export``: one run's classifier as one ONNX graph."""

from __future__ import annotations

import click

from .errors import handle_errors
from .params import command, model_option, overwrite_option, runs_option


@command()
@model_option
@click.option("--out", required=True, type=click.Path(),
              help="The .onnx file to write.")
@overwrite_option("--out file")
@runs_option
@handle_errors
def export(model_ref, out, overwrite, runs_dir):
    """Write one run's classifier as one ONNX graph: uint8 RGB (N, H, W, 3) at the input
    size -> class probabilities.

    Normalisation, the trunk to the tap, pooling, the standardiser and the head
    (or the fine-tuned / baseline network) are in the graph; the class names,
    the resize/crop rule the caller applies, the run id and the tap are in its
    metadata.  Linear heads (logreg, linear-svm, sgd-logreg), fine-tuned runs and
    the pixels/mlp/cnn baselines are one exported torch module; svm and knn heads
    are converted by skl2onnx and joined to the trunk.

    Example: python cli.py export --model 20261122T0901 --out model.onnx
    """
    import json

    from ..workflows.export import run_export

    res = run_export(model_ref, out, runs_dir, overwrite=overwrite)
    meta = res.metadata
    click.echo(f"{meta['run_id']} ({meta['method']}): {len(json.loads(meta['classes']))} classes, "
               f"input {meta['input']}; ONNX Runtime matches torch within "
               f"{res.max_difference:.1e}")
    click.echo(f"caller's preprocessing: {meta['preprocessing']}")
    click.echo(str(res.path))
