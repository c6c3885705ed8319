"""scikit-learn heads on cached features, and their model selection.

Each head is a scikit-learn ``Pipeline(StandardScaler(), estimator)``.  The
one hyperparameter that matters (``C`` for linear and kernel models, ``k``
for nearest neighbours) is chosen on the validation split over a log grid;
the chosen head is then refitted on train + validation and judged once on
the test split.  This package never imports torch.
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

from ..errors import UsageError
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


def make_head(clf: str, value, seed: int = 0, calibrated: bool | int = False):
    """An unfitted ``Pipeline(StandardScaler(), <clf>)`` with its searched parameter set.

    ``calibrated`` wraps the RBF SVM in ``CalibratedClassifierCV`` (sigmoid,
    internal K-fold) so the final head has probabilities for top-k output:
    ``True`` for 5 folds, or the size of the smallest class, which caps the
    folds at that size (a class of 2-4 images still calibrates; one of a
    single image leaves the SVM uncalibrated, its margins softmaxed by
    :func:`predict_proba`).
    """
    if clf == "logreg":
        est = LogisticRegression(C=value, max_iter=3000, random_state=seed)
    elif clf == "svm":
        est = SVC(C=value, kernel="rbf", gamma="scale", random_state=seed)
        folds = 5 if calibrated is True else min(5, int(calibrated))
        if calibrated and folds >= 2:
            est = CalibratedClassifierCV(est, cv=folds, ensemble=False)
    elif clf == "linear-svm":
        est = LinearSVC(C=value, max_iter=20000, random_state=seed)
    elif clf == "knn":
        est = KNeighborsClassifier(n_neighbors=value)
    elif clf == "sgd-logreg":
        # Multinomial, like logreg; pipeline.streaming sets eta0 from the store and
        # feeds it shuffled store blocks through partial_fit.
        est = SoftmaxSGD(alpha=value, random_state=seed)
    else:
        raise UsageError(f"unknown classifier {clf!r}; valid: {', '.join(CLASSIFIERS)}")
    return make_pipeline(StandardScaler(), est)


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
    search: list = field(default_factory=list)   # [{param: value, "val_accuracy": a}]
    fit_seconds: float = 0.0


def select_and_fit(clf: str, X_train, y_train, X_val, y_val, seed: int = 0,
                   grid=None) -> FitResult:
    """Choose the grid value with the best validation accuracy, then refit on train+val.

    ``X_*`` are ``(n, n_features)``.  Ties go to the smaller ``C`` (stronger
    regularisation) or larger ``k``.  ``grid`` overrides the default grid.
    """
    if clf not in GRIDS:
        raise UsageError(f"unknown classifier {clf!r}; valid: {', '.join(CLASSIFIERS)}")
    name, values = GRIDS[clf]
    values = list(grid) if grid is not None else list(values)
    if clf == "knn":
        values = [k for k in values if k <= len(y_train)] or [1]
        values = sorted(values, reverse=True)
    else:
        # strongest regularisation first, so ties go to it: small C, large alpha
        values = sorted(values, reverse=(name == "alpha"))
    t0 = time.perf_counter()
    search, best, best_acc, best_pred = [], None, -1.0, None
    if clf == "logreg":
        # one scaler and a warm-started solver along the increasing-C path:
        # the same optima as independent fits, several times faster on wide inputs
        scaler = StandardScaler().fit(X_train)
        Xs_train, Xs_val = scaler.transform(X_train), scaler.transform(X_val)
        path_model = LogisticRegression(max_iter=3000, random_state=seed, warm_start=True)
    for value in values:
        if clf == "logreg":
            pred = path_model.set_params(C=value).fit(Xs_train, y_train).predict(Xs_val)
        else:
            pred = make_head(clf, value, seed).fit(X_train, y_train).predict(X_val)
        acc = float(np.mean(pred == y_val))
        search.append({name: float(value) if clf != "knn" else int(value), "val_accuracy": acc})
        log.debug("%s %s=%g val accuracy %.4f", clf, name, value, acc)
        if acc > best_acc:
            best, best_acc, best_pred = value, acc, pred
    X_all, y_all = np.concatenate([X_train, X_val]), np.concatenate([y_train, y_val])
    final = make_head(clf, best, seed, calibrated=smallest_class(y_all)).fit(X_all, y_all)
    params = {name: float(best) if clf != "knn" else int(best)}
    return FitResult(final, params, best_pred, search, time.perf_counter() - t0)
