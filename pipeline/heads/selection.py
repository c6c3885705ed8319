"""scikit-learn heads on cached features, and their model selection.

Each head is a scikit-learn ``Pipeline(StandardScaler(), estimator)``.  The
one hyperparameter that matters (``C`` for linear and kernel models, ``k``
for nearest neighbours) is chosen on the validation split over a log grid;
the chosen head is then refitted on train + validation and judged once on
the test split.  The grid value is chosen by the selection metric
(accuracy, balanced accuracy or macro-F1: :mod:`pipeline.balance`), and every
head but knn can weight classes (``class_weight="balanced"``).  This package
never imports torch.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

import numpy as np
from sklearn.calibration import CalibratedClassifierCV
from sklearn.linear_model import LogisticRegression
from sklearn.neighbors import KNeighborsClassifier
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import SVC, LinearSVC

from ..balance import (
    METRICS,
    UNWEIGHTED_HEADS,
    class_counts,
    metric_values,
    resolve_class_weight,
    resolve_metric,
    sample_weights,
)
from ..errors import UsageError, opt
from ..options import CLASSIFIERS
from .sgd import SoftmaxSGD

log = logging.getLogger(__name__)


#: Hyperparameter searched on the validation split, and its grid.
GRIDS = {
    "logreg": ("C", [10.0 ** e for e in np.arange(-4, 2.01, 0.5)]),
    "svm": ("C", [10.0 ** e for e in np.arange(-1, 3.01, 0.5)]),
    "linear-svm": ("C", [10.0 ** e for e in np.arange(-5, 1.01, 0.5)]),
    "knn": ("n_neighbors", [1, 3, 5, 9, 15, 25, 41]),
    # alpha = 1 / (C * n_train); large to small, so ties go to the stronger regularisation.
    # pipeline.streaming maps the logreg C grid onto alpha with the store's n_train.
    "sgd-logreg": ("alpha", [10.0 ** e for e in np.arange(0, -5.01, -0.5)]),
}


def make_head(clf: str, value, seed: int = 0, calibrated: bool | int = False,
              class_weight: str = "none"):
    """An unfitted ``Pipeline(StandardScaler(), <clf>)`` with its searched parameter set.

    ``class_weight="balanced"`` weights each class by ``n / (K * n_c)`` in the loss
    (the estimator's own ``class_weight``; a calibrated SVM gets the same weights
    as sample weights in :func:`fit_head`, so its calibration is weighted too).
    knn has no class weights in scikit-learn: asking for them is refused.  Fit
    the result with :func:`fit_head`.

    ``calibrated`` wraps the RBF SVM in ``CalibratedClassifierCV`` (sigmoid,
    internal K-fold) so the final head has probabilities for top-k output:
    ``True`` for 5 folds, or the size of the smallest class, which caps the
    folds at that size (a class of 2-4 images still calibrates; one of a
    single image leaves the SVM uncalibrated, its margins softmaxed by
    :func:`predict_proba`).
    """
    if class_weight not in ("none", "balanced"):
        raise UsageError(f"{opt('class_weight', repr(class_weight))} is not valid here; "
                         "valid: none, balanced (resolve auto first: "
                         "pipeline.balance.resolve_class_weight)", param="class_weight")
    if class_weight == "balanced" and clf in UNWEIGHTED_HEADS:
        resolve_class_weight("balanced", [1], clf=clf)   # raises, naming the fix
    weight = "balanced" if class_weight == "balanced" else None
    if clf == "logreg":
        est = LogisticRegression(C=value, max_iter=3000, random_state=seed, class_weight=weight)
    elif clf == "svm":
        folds = 5 if calibrated is True else min(5, int(calibrated))
        if calibrated and folds >= 2:
            # weighted through fit_head's sample weights, which reach both the SVM and the
            # sigmoid calibration (an unweighted calibration would learn the majority's prior
            # back and undo the weighting at the argmax)
            est = CalibratedClassifierCV(SVC(C=value, kernel="rbf", gamma="scale",
                                             random_state=seed), cv=folds, ensemble=False)
        else:
            est = SVC(C=value, kernel="rbf", gamma="scale", random_state=seed,
                      class_weight=weight)
    elif clf == "linear-svm":
        est = LinearSVC(C=value, max_iter=20000, random_state=seed, class_weight=weight)
    elif clf == "knn":
        est = KNeighborsClassifier(n_neighbors=value)
    elif clf == "sgd-logreg":
        # Multinomial, like logreg; pipeline.streaming sets eta0 from the store and
        # feeds it shuffled store blocks through partial_fit.
        est = SoftmaxSGD(alpha=value, random_state=seed, class_weight=weight)
    else:
        raise UsageError(f"unknown classifier {clf!r}; valid: {', '.join(CLASSIFIERS)}")
    return make_pipeline(StandardScaler(), est)


def fit_head(model, X, y, class_weight: str = "none"):
    """Fit a :func:`make_head` pipeline on ``X`` ``(n, C)``, ``y`` ``(n,)``; returns it.

    A calibrated SVM with ``class_weight="balanced"`` is fitted with each row's
    balanced weight as its sample weight (the only way scikit-learn weights the
    calibration as well as the SVM); every other head carries its weights itself.
    """
    est = model.steps[-1]
    if class_weight == "balanced" and isinstance(est[1], CalibratedClassifierCV):
        y = np.asarray(y)
        return model.fit(X, y, **{f"{est[0]}__sample_weight":
                                  sample_weights(y, int(y.max()) + 1)})
    return model.fit(X, y)


def resolve_choice(clf: str, y, metric: str, class_weight: str) -> tuple[str, str]:
    """``(metric, class_weight)`` with ``auto`` resolved from the labels ``y`` ``(n,)``."""
    counts = class_counts(y)
    return (resolve_metric(metric, counts)[0],
            resolve_class_weight(class_weight, counts, clf=clf)[0])


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
                   grid=None, metric: str = "accuracy",
                   class_weight: str = "none") -> FitResult:
    """Choose the grid value with the best validation ``metric``, then refit on train+val.

    ``X_*`` are ``(n, n_features)``.  Ties go to the smaller ``C`` (stronger
    regularisation) or larger ``k``.  ``grid`` overrides the default grid.
    ``metric``: accuracy, balanced_accuracy or macro_f1 (``auto``: resolved from
    ``y_train``, :func:`pipeline.balance.resolve_metric`); ``class_weight``: none
    or balanced (``auto`` likewise) for every fit, the search's and the final one.
    """
    if clf not in GRIDS:
        raise UsageError(f"unknown classifier {clf!r}; valid: {', '.join(CLASSIFIERS)}")
    metric, class_weight = resolve_choice(clf, y_train, metric, class_weight)
    weight = "balanced" if class_weight == "balanced" else None
    name, values = GRIDS[clf]
    values = list(grid) if grid is not None else list(values)
    if clf == "knn":
        values = [k for k in values if k <= len(y_train)] or [1]
        values = sorted(values, reverse=True)
    else:
        # strongest regularisation first, so ties go to it: small C, large alpha
        values = sorted(values, reverse=(name == "alpha"))
    t0 = time.perf_counter()
    search, best, best_score, best_pred = [], None, -1.0, None
    n_classes = int(max(np.max(y_train), np.max(y_val))) + 1
    if clf == "logreg":
        # one scaler and a warm-started solver along the increasing-C path:
        # the same optima as independent fits, several times faster on wide inputs
        scaler = StandardScaler().fit(X_train)
        Xs_train, Xs_val = scaler.transform(X_train), scaler.transform(X_val)
        path_model = LogisticRegression(max_iter=3000, random_state=seed, warm_start=True,
                                        class_weight=weight)
    for value in values:
        if clf == "logreg":
            pred = path_model.set_params(C=value).fit(Xs_train, y_train).predict(Xs_val)
        else:
            pred = fit_head(make_head(clf, value, seed, class_weight=class_weight), X_train,
                            y_train, class_weight).predict(X_val)
        scores = metric_values(y_val, pred, n_classes)
        search.append({name: float(value) if clf != "knn" else int(value),
                       **{f"val_{m}": scores[m] for m in METRICS}})
        log.debug("%s %s=%g val %s %.4f", clf, name, value, metric, scores[metric])
        if scores[metric] > best_score:
            best, best_score, best_pred = value, scores[metric], pred
    X_all, y_all = np.concatenate([X_train, X_val]), np.concatenate([y_train, y_val])
    final = fit_head(make_head(clf, best, seed, calibrated=smallest_class(y_all),
                               class_weight=class_weight), X_all, y_all, class_weight)
    params = {name: float(best) if clf != "knn" else int(best)}
    return FitResult(final, params, best_pred, search, time.perf_counter() - t0, metric,
                     class_weight)
