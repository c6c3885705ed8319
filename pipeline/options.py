"""The choice lists every layer reads: one place, no heavy imports.

The library validates against these tuples and the CLI builds its
``click.Choice`` options from them, so a name added here is offered, checked
and documented everywhere at once.  Heads are not listed here: each is one
module registered in :mod:`pipeline.heads.registry`, which the CLI reads.
Importing this module imports nothing but the standard library (``extract``
re-runs and ``backbones`` stay fast).
"""

#: Depth taps, shallow to deep; every backbone names its stages by these.
TAP_ORDER = ("layer1", "layer2", "layer3", "layer4", "head")
#: Taps ``extract`` stores when none is given (those of them a backbone has:
#: BackboneSpec.default_taps).
DEFAULT_TAPS = ("layer2", "layer3", "layer4")
#: Global pooling of a tapped CNN feature map ``(N, C, H, W)``.
MAP_POOLINGS = ("avg", "max", "gem")
#: Pooling of a transformer's tokens ``(N, L, D)``: the class token, the mean of the patch
#: tokens (prefix and register tokens excluded), or both concatenated (2 x D wide).
TOKEN_POOLINGS = ("cls", "mean", "cls+mean")
#: Every pooling (implemented by pipeline.extraction.forward.pool); a backbone offers
#: MAP_POOLINGS or TOKEN_POOLINGS (BackboneSpec.poolings).
POOLINGS = MAP_POOLINGS + TOKEN_POOLINGS
#: What ``--pool`` takes: ``auto`` = the backbone's own pooling (BackboneSpec.default_pooling:
#: ``cls`` for a ViT pooling its class token, ``mean`` for one averaging its patch tokens,
#: ``avg`` for a CNN), resolved by BackboneSpec.resolve_pooling.
POOL_CHOICES = ("auto",) + POOLINGS
#: Test-time augmentation (``extract --tta``, ``finetune --tta``): ``none``, or ``flip``:
#: each pooled vector (extract) or each answer's logits (fine-tuned) is the mean of the
#: image's and of its horizontal mirror's.
TTA_CHOICES = ("none", "flip")
#: Storage dtype of the vectors in a feature store.
DTYPES = ("float32", "float16")
#: Inference runtimes (pipeline.extraction.runtimes); ``auto`` = the fastest installed here.
RUNTIMES = ("auto", "eager", "compile", "onnx", "openvino")
#: Compute precisions; ``auto`` = fp32 on CPU, fp16 autocast on CUDA.
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
#: Baselines without pretrained features (pipeline.train.baselines).
BASELINE_KINDS = ("pixels", "mlp", "cnn")
#: Learning-rate schedules of the training loop (pipeline.train.loop).
SCHEDULES = ("constant", "exponential", "step", "cosine", "onecycle")
#: Whether a schedule steps once per epoch or once per batch.
SCHEDULE_UNITS = ("epoch", "step")
#: Training augmentation presets (pipeline.train.datasets).
AUGMENTATIONS = ("standard", "strong", "none")
#: BatchNorm policy of frozen block groups during fine-tuning.
BN_POLICIES = ("frozen-eval", "train")
#: LP-FT's linear probe: classifier-only epochs, or a converged logistic regression.
PROBES = ("epochs", "logreg")
#: Fine-tuning's frozen-trunk cache: ``auto`` when exact, ``off`` = end to end.
CACHE_MODES = ("auto", "off")
#: Evaluation protocols: one fixed split, repeated stratified K-fold, or chosen by size.
PROTOCOLS = ("auto", "holdout", "cv")
#: Dataset layouts ``--data`` is read as (pipeline.data.layouts); ``auto`` = detected.
LAYOUTS = ("auto", "classes", "splits", "table")
#: What chooses hyperparameters and epochs, ranks runs and drives the verdict's tests;
#: ``auto`` = balanced accuracy when the classes are imbalanced, else accuracy
#: (pipeline.balance.resolve_metric).
SELECTION_METRICS = ("auto", "accuracy", "balanced_accuracy", "macro_f1")
#: Class weighting of every head's and network's loss; ``balanced`` weights class c by
#: n / (K * n_c); ``auto`` = balanced when the classes are imbalanced, else none
#: (pipeline.balance.resolve_class_weight).
CLASS_WEIGHTS = ("auto", "none", "balanced")
#: Train/val/test fractions of a split made when the data has none.
DEFAULT_FRACTIONS = (0.70, 0.15, 0.15)
#: Uncertainty scores ``predict --rank`` orders unlabelled images by (pipeline.heads.ranking).
UNCERTAINTY_SCORES = ("margin", "entropy", "least-confident")
#: The diversity step among the most uncertain (pipeline.heads.ranking): k-means clusters,
#: greedy k-center, or none (uncertainty alone).  ``kmeans`` is the default: on the full
#: flowers it beat random picks in every round, k-center lost to them (docs/labelling.md).
DIVERSITY_STEPS = ("kmeans", "kcenter", "none")
DEFAULT_DIVERSITY = "kmeans"
#: Split names in the order of their codes in a store (0, 1, 2).
SPLITS = ("train", "val", "test")
#: Largest seed: numpy and torch take unsigned 32-bit seeds.
MAX_SEED = 2**32 - 1


def check_seed(seed, count: int = 1, param: str = "seed") -> int:
    """``seed`` as an int, refusing what numpy or torch would crash on (also for
    ``seed .. seed + count - 1`` when ``count`` seeds are run)."""
    from .errors import UsageError, opt

    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= MAX_SEED:
        raise UsageError(f"{opt(param, seed)} is not a seed: use a whole number from 0 to "
                         f"{MAX_SEED}", param=param)
    if seed + count - 1 > MAX_SEED:
        raise UsageError(f"{opt(param, seed)} with {count} seeds goes past {MAX_SEED}; "
                         "use a smaller seed", param=param)
    return seed
