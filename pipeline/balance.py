"""Class balance: when data are imbalanced, which metric selects and how classes are weighted.

One place for the rule every layer asks (numpy only, so ``extract``, the heads,
the training loop, run records and the report can all import it):

- **imbalanced**: the largest class has more than :data:`IMBALANCE_RATIO` (1.5)
  times the images of the smallest (:func:`is_imbalanced`).  The five flowers
  classes (898 / 633 = 1.42) are not.
- **selection metric** (:data:`pipeline.options.SELECTION_METRICS`): what
  chooses hyperparameters and epochs, ranks runs and drives the verdict's
  tests; ``auto`` is balanced accuracy on imbalanced data, else accuracy
  (:func:`resolve_metric`), because a classifier answering the majority class
  for every image scores the majority's share in accuracy (95% on 95:5 data)
  but only 1/K in balanced accuracy.
- **class weights** (:data:`pipeline.options.CLASS_WEIGHTS`): ``balanced``
  weights class c by ``n / (K * n_c)`` (scikit-learn's rule: every class
  carries the same total weight); ``auto`` is balanced on imbalanced data,
  else none (:func:`resolve_class_weight`).
- **metric values** from predictions (:func:`metric_values`), the same
  definitions as scikit-learn's ``accuracy_score``, ``balanced_accuracy_score``
  (mean recall over the classes in the truth) and ``f1_score(average="macro")``
  (over the classes in the truth or the predictions), computed from counts so
  a bootstrap can compute thousands at once.
- **collapse** (:func:`collapse`): a run that answers (nearly) one class for
  every image: 95% of its answers one class, which takes at least 80% of the
  images of the other classes.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .errors import UsageError, opt
from .options import CLASS_WEIGHTS, SELECTION_METRICS

#: Imbalanced: the largest class has more than this many times the images of the smallest.
IMBALANCE_RATIO = 1.5
#: Collapsed: at least this share of the predictions is one class ...
COLLAPSE_SHARE = 0.95
#: ... and at least this share of the images of the other classes is predicted as it: it
#: finds at most a fifth of them (see :func:`collapse`).
COLLAPSE_OTHERS = 0.8
#: Metric names as tables print them.
METRIC_LABELS = {"accuracy": "accuracy", "balanced_accuracy": "balanced accuracy",
                 "macro_f1": "macro-F1"}
#: The concrete metrics (``auto`` resolved), in the order tables show them.
METRICS = tuple(METRIC_LABELS)
#: Short names for table headers, cells and run labels.
METRIC_SHORT = {"accuracy": "acc.", "balanced_accuracy": "bal. acc.", "macro_f1": "macro-F1"}


def class_counts(labels, n_classes: int | None = None) -> np.ndarray:
    """Images per class ``(n_classes,)`` of integer ``labels`` ``(n,)``."""
    labels = np.asarray(labels, dtype=np.int64).ravel()
    return np.bincount(labels, minlength=n_classes or 0)


def class_ratio(counts) -> float:
    """Largest over smallest class size among the classes with images (1.0 with fewer than 2)."""
    counts = np.asarray(counts, dtype=float).ravel()
    counts = counts[counts > 0]
    return float(counts.max() / counts.min()) if len(counts) >= 2 else 1.0


def is_imbalanced(labels) -> bool:
    """Whether the largest class of ``labels`` (any hashable labels, ``(n,)``) has more than
    :data:`IMBALANCE_RATIO` times the images of the smallest."""
    _, counts = np.unique(np.asarray(labels).ravel(), return_counts=True)
    return class_ratio(counts) > IMBALANCE_RATIO


def describe_balance(counts, classes=None) -> str:
    """``largest class daisy (380 images), smallest roses (20): 19.0x`` of per-class counts."""
    counts = np.asarray(counts, dtype=np.int64).ravel()
    names = list(classes) if classes is not None else [str(i) for i in range(len(counts))]
    present = np.flatnonzero(counts > 0)
    if len(present) < 2:
        return f"{len(present)} class with images"
    big = present[np.argmax(counts[present])]
    small = present[np.argmin(counts[present])]
    if counts[big] == counts[small]:
        return f"every class has {counts[big]:,} images: 1.00x"
    return (f"largest class {names[big]} ({counts[big]:,} images), smallest {names[small]} "
            f"({counts[small]:,}): {class_ratio(counts):.2f}x")


def _check(value, allowed, param):
    if value not in allowed:
        raise UsageError(f"{opt(param, repr(value))} is not valid; valid: {', '.join(allowed)}",
                         param=param)


def resolve_metric(metric: str, counts, classes=None) -> tuple[str, str]:
    """``(metric, why)``: the selection metric for data with per-class ``counts``
    (``auto``: balanced accuracy when imbalanced, else accuracy)."""
    _check(metric, SELECTION_METRICS, "metric")
    if metric != "auto":
        return metric, f"{metric} (asked for)"
    balance = describe_balance(counts, classes)
    if class_ratio(counts) > IMBALANCE_RATIO:
        return "balanced_accuracy", (f"balanced_accuracy (auto: imbalanced classes, {balance} "
                                     f"> {IMBALANCE_RATIO}x)")
    return "accuracy", f"accuracy (auto: balanced classes, {balance} <= {IMBALANCE_RATIO}x)"


def resolve_class_weight(class_weight: str, counts, classes=None,
                         head=None) -> tuple[str, str]:
    """``(none | balanced, why)`` for data with per-class ``counts`` (``auto``: balanced when
    imbalanced, else none).  ``head``: the head kind being fitted
    (:class:`pipeline.heads.registry.HeadKind`), or None; one that takes no class weights
    (knn: ``head.class_weights`` false) refuses ``balanced`` with the fix
    (``head.class_weight_refusal()``), and ``auto`` resolves to none and says why."""
    _check(class_weight, CLASS_WEIGHTS, "class_weight")
    unweighted = head is not None and not head.class_weights
    if class_weight == "balanced" and unweighted:
        raise UsageError(head.class_weight_refusal(), param="class_weight")
    if class_weight != "auto":
        return class_weight, f"{class_weight} (asked for)"
    balance = describe_balance(counts, classes)
    if class_ratio(counts) <= IMBALANCE_RATIO:
        return "none", f"none (auto: balanced classes, {balance} <= {IMBALANCE_RATIO}x)"
    if unweighted:
        return "none", (f"none (auto: imbalanced classes, {balance}, but {head.name} takes no "
                        "class weights)")
    return "balanced", f"balanced (auto: imbalanced classes, {balance} > {IMBALANCE_RATIO}x)"


def balanced_weights(labels, n_classes: int) -> np.ndarray:
    """Per-class weights ``(n_classes,)`` ``n / (K * n_c)`` of ``labels`` (scikit-learn's
    ``class_weight="balanced"``, K = classes with images); 1.0 for a class without images."""
    counts = class_counts(labels, n_classes).astype(float)
    present = counts > 0
    weights = np.ones(n_classes)
    weights[present] = counts.sum() / (present.sum() * counts[present])
    return weights


def sample_weights(labels, n_classes: int) -> np.ndarray:
    """Each row's balanced class weight ``(n,)`` (:func:`balanced_weights`)."""
    labels = np.asarray(labels, dtype=np.int64)
    return balanced_weights(labels, n_classes)[labels]


def choice_suffix(metric: str | None, class_weight: str | None) -> str:
    """``""`` for accuracy without weights (the balanced-data default, and records made
    before either was kept), else e.g. ``" [bal. acc., balanced weights]"``."""
    metric, class_weight = metric or "accuracy", class_weight or "none"
    if (metric, class_weight) == ("accuracy", "none"):
        return ""
    weights = "balanced weights" if class_weight == "balanced" else "no weights"
    return f" [{METRIC_SHORT.get(metric, metric)}, {weights}]"


@dataclass(frozen=True)
class Selection:
    """The selection metric and class weighting of one run, resolved from its data.

    Asked, not compared as strings: :meth:`weights` gives the loss weights (None
    unweighted); :meth:`record_fields` what a run record keeps.
    """

    metric: str
    metric_reason: str
    class_weight: str
    class_weight_reason: str
    counts: tuple
    classes: tuple

    @classmethod
    def resolve(cls, metric: str, class_weight: str, labels, classes,
                head=None) -> Selection:
        """Resolve ``auto`` of both from ``labels`` ``(n,)`` (all images of the data);
        ``head``: the head kind fitted, if any (:func:`resolve_class_weight`)."""
        counts = class_counts(labels, len(classes))
        m, m_why = resolve_metric(metric, counts, classes)
        w, w_why = resolve_class_weight(class_weight, counts, classes, head)
        return cls(m, m_why, w, w_why, tuple(int(c) for c in counts), tuple(classes))

    @property
    def imbalanced(self) -> bool:
        return class_ratio(self.counts) > IMBALANCE_RATIO

    def weights(self, labels) -> np.ndarray | None:
        """Balanced weights ``(n_classes,)`` of the training ``labels``, or None unweighted."""
        if self.class_weight != "balanced":
            return None
        return balanced_weights(labels, len(self.classes))

    @property
    def suffix(self) -> str:
        """What a run's label adds so runs of one method with other choices stay apart
        (:func:`choice_suffix`)."""
        return choice_suffix(self.metric, self.class_weight)

    def record_fields(self) -> dict:
        return {"selection_metric": self.metric, "selection_metric_reason": self.metric_reason,
                "class_weight": self.class_weight,
                "class_weight_reason": self.class_weight_reason,
                "class_counts": dict(zip(self.classes, self.counts))}


# ------------------------------------------------------------------ metric values


def confusion(y_true, y_pred, n_classes: int | None = None) -> np.ndarray:
    """``(K, K)`` counts, rows true class, columns predicted class."""
    y_true = np.asarray(y_true, dtype=np.int64).ravel()
    y_pred = np.asarray(y_pred, dtype=np.int64).ravel()
    k = n_classes or int(max(y_true.max(initial=-1), y_pred.max(initial=-1)) + 1)
    return np.bincount(y_true * k + y_pred, minlength=k * k).reshape(k, k)


def values_from_counts(metric: str, tp, support, predicted) -> np.ndarray:
    """``metric`` from per-class counts ``(..., K)`` (true positives, true images, predicted
    images); leading axes are e.g. bootstrap resamples.  Returns ``(...)``."""
    tp, support, predicted = (np.asarray(a, dtype=float) for a in (tp, support, predicted))
    n = support.sum(axis=-1)
    if metric == "accuracy":
        return tp.sum(axis=-1) / np.maximum(n, 1e-300)
    if metric == "balanced_accuracy":
        # mean recall over the classes in the truth (scikit-learn's balanced_accuracy_score)
        present = support > 0
        recall = np.where(present, tp / np.where(present, support, 1), 0.0)
        return recall.sum(axis=-1) / np.maximum(present.sum(axis=-1), 1)
    if metric == "macro_f1":
        # F1 = 2 tp / (true + predicted), over the classes in the truth or the predictions
        # (f1_score's default labels); 0 for a class predicted but never true, or the reverse
        seen = (support + predicted) > 0
        f1 = np.where(seen, 2 * tp / np.where(seen, support + predicted, 1), 0.0)
        return f1.sum(axis=-1) / np.maximum(seen.sum(axis=-1), 1)
    raise UsageError(f"unknown metric {metric!r}; valid: {', '.join(METRICS)}", param="metric")


def metric_values(y_true, y_pred, n_classes: int | None = None) -> dict:
    """``{accuracy, balanced_accuracy, macro_f1}`` of ``y_pred`` against ``y_true`` ``(n,)``."""
    cm = confusion(y_true, y_pred, n_classes)
    counts = (np.diag(cm), cm.sum(axis=1), cm.sum(axis=0))
    return {m: float(values_from_counts(m, *counts)) for m in METRICS}


def metric_value(metric: str, y_true, y_pred, n_classes: int | None = None) -> float:
    """One :func:`metric_values` entry."""
    _check(metric, METRICS, "metric")
    return metric_values(y_true, y_pred, n_classes)[metric]


# ------------------------------------------------------------------ collapse and reference


def collapse(matrix, share: float = COLLAPSE_SHARE,
             others_share: float = COLLAPSE_OTHERS) -> dict | None:
    """Whether a confusion matrix ``(K, K)`` (rows true) is a run answering one class.

    Collapsed ("nearly all one class"): one class c gets at least ``share`` (95%) of
    the predictions, and at least ``others_share`` (80%) of the images of the other
    classes are predicted c: the run answers c whatever the image, finding at most
    a fifth of the images that are not c.  The second condition keeps a class that
    really makes up 95% of the images, predicted as such by a model that still
    finds the others (96% of the answers daisy, 16 of 20 roses found; or 97.5%
    daisy with 8 of 20 roses: weak, yet it learned), from being called a collapse;
    a run that answers c for every image is one, however large c is, and so is one
    finding 2 roses of 20 among 99% daisy answers.
    Returns ``{class, share, others_as_class}`` (class index; shares in [0, 1]) or None.
    """
    cm = np.asarray(matrix, dtype=float)
    n = cm.sum()
    if cm.ndim != 2 or n == 0:
        return None
    predicted = cm.sum(axis=0)
    c = int(np.argmax(predicted))
    others = n - cm[c].sum()
    if others == 0:          # every image is of class c: answering c is right
        return None
    pred_share = predicted[c] / n
    others_as_c = (predicted[c] - cm[c, c]) / others
    if pred_share >= share and others_as_c >= others_share:
        return {"class": c, "share": float(pred_share), "others_as_class": float(others_as_c)}
    return None


def majority_class(counts) -> int:
    """The class with the most images (the first on a tie)."""
    return int(np.argmax(np.asarray(counts)))
