"""Heads under repeated stratified K-fold cross-validation, with nested model selection.

For each outer fold of the store's fixed folds (:meth:`FeatureStore.cv_splits`),
the hyperparameter (``C``, ``k``) is chosen by an inner stratified K-fold
*inside the outer training rows only* (:func:`choose_param`), the head is
refitted on those rows with it and predicts the outer test rows.  The outer
test fold is never used for any choice, and every image gets one out-of-fold
prediction per repeat.  The inner CV chooses by the selection metric
(:mod:`pipeline.balance`), and every fit carries the run's class weights.  Each
outer fold also fits a temperature (:mod:`pipeline.calibration`) on the
inner cross-validated probabilities of its training rows, never on its test rows.
Many small fits: each runs on one BLAS thread, and the outer folds run in
parallel processes on larger data.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np
from sklearn.model_selection import StratifiedKFold

from ..balance import METRICS, metric_values
from ..parallel import fold_jobs, run_in_order
from .registry import get_head
from .selection import Choice, fit_head, make_head, predict_proba, smallest_class

log = logging.getLogger(__name__)

#: Folds of the inner cross-validation that chooses the hyperparameter.
INNER_FOLDS = 3
#: Rows x outer folds x features above which the outer folds run in parallel processes
#: (the 150 bundled photos' 15 folds of efficientnet_lite0 layer3 vectors: 252,000).
PARALLEL_MIN_WORK = 200_000


class OuterFold(NamedTuple):
    """One outer fold of the repeated K-fold: which repeat and fold, and its rows
    (index arrays into the store), as :meth:`FeatureStore.cv_splits` lists them."""

    repeat: int
    fold: int
    train: np.ndarray           # (n_train,)
    test: np.ndarray            # (n_test,)


@dataclass
class FoldResult:
    """One outer fold: its rows, the chosen hyperparameter and the predictions there."""

    repeat: int
    fold: int
    test: np.ndarray            # (n_test,) row indices into the store
    proba: np.ndarray           # (n_test, n_classes)
    params: dict
    n_train: int
    search: list = field(default_factory=list)
    seconds: float = 0.0
    #: fitted on the fold's training rows only (inner validation): None when none was
    temperature: float | None = None


def grid_for(clf: str, n_train: int):
    """``(name, values)`` searched for ``clf`` on ``n_train`` rows, strongest
    regularisation first."""
    head = get_head(clf)
    return head.param, head.values(n_train)


def _inner_scores(clf: str, X, y, values, splits, seed: int,
                  class_weight: str = "none") -> dict:
    """``{metric: (len(values),)}``: each value's mean inner-validation score of every metric."""
    scores = {m: np.zeros(len(values)) for m in METRICS}
    n_classes = int(np.max(y)) + 1
    head = get_head(clf)
    for tr, va in splits:
        preds = head.search(X[tr], y[tr], X[va], values, seed, class_weight)
        for j, pred in enumerate(preds):
            for m, v in metric_values(y[va], pred, n_classes).items():
                scores[m][j] += v
    return {m: s / max(len(splits), 1) for m, s in scores.items()}


def choose_param(clf: str, X, y, seed: int = 0, inner_folds: int = INNER_FOLDS,
                 choice: Choice = Choice()):
    """The grid value with the best inner cross-validated metric on ``(X, y)`` only.

    ``X`` is ``(n, C)``.  Inner folds: ``min(inner_folds, smallest class)``;
    with a class of one image there is nothing to validate on, and the
    middle of the grid is taken (and said in the search).  Returns
    ``(params, search)``; ties go to the stronger regularisation.  ``choice``
    (:class:`pipeline.heads.selection.Choice`): the metric and class weights, and
    with ``groups`` (one name per row of ``X``) the inner folds are stratified group
    folds, so a group's images never validate a value chosen on its other images.
    """
    choice = choice.resolved(clf, y)
    metric, class_weight, groups = choice.metric, choice.class_weight, choice.groups
    head = get_head(clf)
    name = head.param
    k = _n_inner(y, groups, inner_folds)
    if k < 2:
        values = head.values(len(y))
        value = values[len(values) // 2]
        return {name: head.plain(value)}, [{name: head.plain(value), "note": "no inner "
                                            "validation: a class has one training image"}]
    values = head.values(len(y) * (k - 1) // k)   # the rows of an inner training fold
    splits = _inner_folds(X, y, k, seed, groups)
    scores = _inner_scores(clf, X, y, values, splits, seed, class_weight)
    best = int(np.argmax(scores[metric]))  # first maximum: the strongest regularisation
    search = [{name: head.plain(v), **{f"inner_{m}": float(scores[m][j]) for m in METRICS}}
              for j, v in enumerate(values)]
    return {name: head.plain(values[best])}, search


def _n_inner(y, groups, inner_folds: int = INNER_FOLDS) -> int:
    """How many inner folds ``y`` (and its ``groups``) allow: at most the smallest class's
    images (or the groups), at most ``inner_folds``."""
    counts = np.bincount(y)
    k = min(inner_folds, int(counts[counts > 0].min()))
    if groups is not None:
        k = min(inner_folds, len(set(np.asarray(groups).tolist())))
    return k


def inner_temperature(clf: str, X, y, params: dict, seed: int = 0,
                      choice: Choice = Choice()) -> float | None:
    """The temperature (:func:`pipeline.calibration.fit_temperature`) fitted on the
    inner cross-validated probabilities of ``(X, y)`` (an outer fold's training rows) of
    the head with ``params``: every row predicted by a head that did not see it, on the
    inner folds :func:`choose_param` used.  None when a class (or the groups) leaves no
    inner validation."""
    from ..calibration import fit_temperature

    choice = choice.resolved(clf, y)
    k = _n_inner(y, choice.groups)
    if k < 2:
        return None
    n_classes = int(np.max(y)) + 1
    proba = np.zeros((len(y), n_classes))
    for tr, va in _inner_folds(X, y, k, seed, choice.groups):
        model = make_head(clf, next(iter(params.values())), seed,
                          calibrated=smallest_class(y[tr]), class_weight=choice.class_weight)
        fit_head(model, X[tr], y[tr], choice.class_weight)
        proba[va] = full_proba(model, X[va], n_classes)
    return fit_temperature(proba, y)


def _inner_folds(X, y, k: int, seed: int, groups=None) -> list:
    """``[(train, validation)]`` of a stratified (group) K-fold of ``(X, y)``."""
    if groups is None:
        return list(StratifiedKFold(k, shuffle=True, random_state=seed).split(X, y))
    import warnings

    from sklearn.model_selection import StratifiedGroupKFold

    with warnings.catch_warnings():  # "least populated class": stratification is best effort
        warnings.simplefilter("ignore", UserWarning)
        return list(StratifiedGroupKFold(k, shuffle=True, random_state=seed % 2**32)
                    .split(X, y, np.asarray(groups, dtype=object)))


def fit_fold(clf: str, X, y, outer: OuterFold, seed: int = 0,
             choice: Choice = Choice(), calibrate: bool = True) -> FoldResult:
    """Choose the hyperparameter on the ``outer`` fold's training rows (by ``choice``'s
    metric; inner folds by its groups when given), refit there (with its class weights),
    predict the fold's test rows.  ``X`` ``(n_images, C)`` and ``y`` ``(n_images,)``
    hold every row; ``choice.groups``, when given, one name per row.  ``calibrate``: also
    fit the fold's temperature (:func:`inner_temperature`)."""
    from threadpoolctl import threadpool_limits

    t0 = time.perf_counter()
    train, test = outer.train, outer.test
    choice = choice.resolved(clf, y[train]).rows(train)
    with threadpool_limits(1):
        params, search = choose_param(clf, X[train], y[train], seed, choice=choice)
        model = make_head(clf, next(iter(params.values())), seed,
                          calibrated=smallest_class(y[train]), class_weight=choice.class_weight)
        fit_head(model, X[train], y[train], choice.class_weight)
        proba = full_proba(model, X[test], int(y.max()) + 1)
        temperature = inner_temperature(clf, X[train], y[train], params, seed, choice) \
            if calibrate else None
    return FoldResult(outer.repeat, outer.fold, np.asarray(test), proba, params, len(train),
                      search, time.perf_counter() - t0, temperature)


def full_proba(model, X, n_classes: int) -> np.ndarray:
    """``(n, n_classes)`` probabilities even when a class was absent from the fold's training."""
    proba = predict_proba(model, X)
    classes = np.asarray(model.classes_)
    if len(classes) == n_classes:
        return proba
    full = np.zeros((len(X), n_classes))
    full[:, classes] = proba
    return full


def cross_validate(clf: str, X, y, splits, seed: int = 0, n_jobs: int | None = None,
                   choice: Choice = Choice(), calibrate: bool = True) -> list:
    """:func:`fit_fold` on every ``(repeat, fold, train, test)`` of ``splits``, in order.

    ``X`` is ``(n_images, C)`` (every row of the store), ``y`` ``(n_images,)``.
    Outer folds run in ``n_jobs`` processes (default: :func:`pipeline.parallel.fold_jobs`,
    the cores when rows x folds x features pay for starting them).  ``choice``
    (:class:`pipeline.heads.selection.Choice`): its metric chooses the hyperparameter
    inside each fold, its class weights weight every fit, its groups (one name per row,
    or None) keep each group on one side of the inner folds.  ``calibrate``: each fold fits
    its temperature (a run whose saved model applies none passes False).
    """
    if n_jobs is None:
        n_jobs = fold_jobs(len(splits), len(y) * len(splits) * X.shape[1] >= PARALLEL_MIN_WORK)
    tasks = [(clf, X, y, OuterFold(*split), seed, choice, calibrate) for split in splits]
    return run_in_order(fit_fold, tasks, n_jobs)
