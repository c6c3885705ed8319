"""scikit-learn heads on cached features, and their model selection.

Each head is a scikit-learn ``Pipeline(StandardScaler(), estimator)``.  The
one hyperparameter that matters (``C`` for linear and kernel models, ``k``
for nearest neighbours) is chosen on the validation split over a log grid;
the chosen head is then refitted on train + validation and judged once on
the test split.  The grid value is chosen by the selection metric
(accuracy, balanced accuracy or macro-F1: :mod:`pipeline.balance`), and every
head that takes class weights can weight classes (``class_weight="balanced"``).  What
differs between heads (estimator, grid, weights) is asked of their kind
(:mod:`pipeline.heads.registry`).  This package never imports torch.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field, replace

import numpy as np

from ..balance import METRICS, class_counts, metric_values, resolve_class_weight, resolve_metric
from .registry import get_head, head_of_model

log = logging.getLogger(__name__)


def make_head(clf: str, value, seed: int = 0, calibrated: bool | int = False,
              class_weight: str = "none"):
    """An unfitted ``Pipeline(StandardScaler(), <clf>)`` with its searched parameter set.

    ``clf`` names a registered head (:mod:`pipeline.heads.registry`).
    ``class_weight="balanced"`` weights each class by ``n / (K * n_c)`` in the loss
    (the estimator's own ``class_weight``; a calibrated SVM gets the same weights
    as sample weights in :func:`fit_head`, so its calibration is weighted too).
    A head without class weights (knn) refuses them.  Fit the result with
    :func:`fit_head`.

    ``calibrated`` wraps the RBF SVM in ``CalibratedClassifierCV`` (sigmoid,
    internal K-fold) so the final head has probabilities for top-k output:
    ``True`` for 5 folds, or the size of the smallest class, which caps the
    folds at that size (a class of 2-4 images still calibrates; one of a
    single image leaves the SVM uncalibrated, its margins softmaxed by
    :func:`predict_proba`).
    """
    return get_head(clf).make(value, seed, calibrated, class_weight)


def fit_head(model, X, y, class_weight: str = "none"):
    """Fit a :func:`make_head` pipeline on ``X`` ``(n, C)``, ``y`` ``(n,)``; returns it.

    Its head kind fits it (a calibrated SVM with ``class_weight="balanced"`` takes each
    row's balanced weight as its sample weight, the only way scikit-learn weights the
    calibration as well as the SVM); every other head carries its weights itself.
    """
    head = head_of_model(model)
    return head.fit(model, X, y, class_weight) if head is not None else model.fit(X, y)


@dataclass(frozen=True)
class Choice:
    """How a head's hyperparameter is chosen and its fits weighted, the settings every
    selection function shares.

    ``metric``: accuracy, balanced_accuracy or macro_f1 chooses the grid value;
    ``class_weight``: none or balanced weights every fit (``auto`` for either: resolved
    from the training labels, :meth:`resolved`).  ``groups``: one name per row
    ``(n_rows,)``, or None; cross-validation's inner folds keep each group on one side
    (a holdout search validates on the given split and does not use them).
    """

    metric: str = "accuracy"
    class_weight: str = "none"
    groups: object = None

    def resolved(self, clf: str, y) -> Choice:
        """This choice with ``auto`` resolved from the labels ``y`` ``(n,)`` for head ``clf``
        (:func:`pipeline.balance.resolve_metric`, :func:`.resolve_class_weight`)."""
        counts = class_counts(y)
        return replace(self, metric=resolve_metric(self.metric, counts)[0],
                       class_weight=resolve_class_weight(self.class_weight, counts,
                                                         head=get_head(clf))[0])

    def rows(self, index) -> Choice:
        """This choice on the rows ``index`` of the data: their groups, in that order."""
        if self.groups is None:
            return self
        return replace(self, groups=np.asarray(self.groups, dtype=object)[index])


def smallest_class(y) -> int:
    """Images in the rarest class present in ``y`` (what an internal K-fold can split)."""
    return int(np.bincount(np.asarray(y))[np.unique(y)].min())


def predict_proba(model, X) -> np.ndarray:
    """Class probabilities ``(n, n_classes)``; a softmax of the margins for LinearSVC."""
    if hasattr(model, "predict_proba"):
        return model.predict_proba(X)
    scores = model.decision_function(X)
    if scores.ndim == 1:
        scores = np.stack([-scores, scores], axis=1)
    scores = scores - scores.max(axis=1, keepdims=True)
    e = np.exp(scores)
    return e / e.sum(axis=1, keepdims=True)


@dataclass
class FitResult:
    """A head chosen on validation and refitted on train + validation."""

    model: object
    params: dict
    val_pred: np.ndarray                 # from the head fitted on train only
    # [{param: value, "val_accuracy": a, "val_balanced_accuracy": b, "val_macro_f1": f}]
    search: list = field(default_factory=list)
    fit_seconds: float = 0.0
    metric: str = "accuracy"             # what chose the value (key "val_<metric>" of search)
    class_weight: str = "none"


def select_and_fit(clf: str, X_train, y_train, X_val, y_val, seed: int = 0,
                   grid=None, choice: Choice = Choice(), refit: bool = True) -> FitResult:
    """Choose the grid value with the best validation metric, then refit on train+val
    (``refit=False``: on train alone, for a head whose validation predictions must stay
    unseen, such as fine-tuning's linear probe, which validation judges again).

    ``X_*`` are ``(n, n_features)``.  Ties go to the stronger regularisation (the
    smaller ``C``, the larger ``k`` or ``alpha``).  ``grid`` overrides the head's grid.
    ``choice`` (:class:`Choice`): the metric that chooses the value and the class
    weights of every fit, the search's and the final one (``auto``: resolved from
    ``y_train``).
    """
    head = get_head(clf)
    choice = choice.resolved(clf, y_train)
    metric, class_weight = choice.metric, choice.class_weight
    values = head.values(len(y_train), grid)
    t0 = time.perf_counter()
    search, best, best_score, best_pred = [], None, -1.0, None
    n_classes = int(max(np.max(y_train), np.max(y_val))) + 1
    preds = head.search(X_train, y_train, X_val, values, seed, class_weight)
    for value, pred in zip(values, preds):
        scores = metric_values(y_val, pred, n_classes)
        search.append({head.param: head.plain(value),
                       **{f"val_{m}": scores[m] for m in METRICS}})
        log.debug("%s %s=%g val %s %.4f", clf, head.param, value, metric, scores[metric])
        if scores[metric] > best_score:
            best, best_score, best_pred = value, scores[metric], pred
    X_all, y_all = ((np.concatenate([X_train, X_val]), np.concatenate([y_train, y_val]))
                    if refit else (X_train, y_train))
    final = fit_head(make_head(clf, best, seed, calibrated=smallest_class(y_all),
                               class_weight=class_weight), X_all, y_all, class_weight)
    return FitResult(final, {head.param: head.plain(best)}, best_pred, search,
                     time.perf_counter() - t0, metric, class_weight)
