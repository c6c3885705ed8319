"""Evaluation protocols: which one a store gets, and what a cross-validated run records.

``holdout`` judges every method once on the store's fixed test split (the
hyperparameter chosen on its validation split).  ``cv`` uses the store's
fixed repeated stratified K-fold (5 folds x 3 repeats): every method is
fitted on the same outer training folds, its hyperparameters chosen inside
them, and scored on the outer test folds; every image gets one out-of-fold
prediction per repeat.  ``auto`` is cv for small data, where one split
cannot tell strategies apart: fewer than :data:`AUTO_CV_MAX_IMAGES` images,
or a holdout test split under :data:`AUTO_CV_MIN_TEST` images.

A cv record's accuracy is the mean over folds with the Nadeau-Bengio
corrected 95% interval (the folds' training sets overlap, so the plain t
interval is too narrow); see :mod:`pipeline.runs.stats`.  The record also
keeps every fold's balanced accuracy and macro-F1 (``cv.fold_metrics``), so
the report can rank and test runs on whichever of them selects.
"""

from __future__ import annotations

import hashlib
import logging

import numpy as np

from ..balance import METRICS, metric_values
from ..errors import UsageError
from ..options import PROTOCOLS
from .metrics import evaluate
from .stats import corrected_interval

log = logging.getLogger(__name__)

#: ``auto`` picks cv below this many images ...
AUTO_CV_MAX_IMAGES = 2000
#: ... or when the holdout test split has fewer images than this.
AUTO_CV_MIN_TEST = 100


def resolve_protocol(protocol: str, store) -> tuple[str, str]:
    """``(holdout | cv, why)`` for ``protocol`` on ``store`` (``auto`` decides by size)."""
    if protocol not in PROTOCOLS:
        raise UsageError(f"unknown protocol {protocol!r}; valid: {', '.join(PROTOCOLS)}",
                         param="protocol")
    n, n_test = len(store), store.split_sizes()["test"]
    if protocol != "auto":
        return protocol, f"{protocol} (asked for)"
    if n < AUTO_CV_MAX_IMAGES or n_test < AUTO_CV_MIN_TEST:
        return "cv", (f"cv (auto: {n:,} images, {n_test} in the holdout test split; cv below "
                      f"{AUTO_CV_MAX_IMAGES:,} images or {AUTO_CV_MIN_TEST} test images)")
    return "holdout", (f"holdout (auto: {n:,} images, {n_test} in the test split; cv is used "
                       f"below {AUTO_CV_MAX_IMAGES:,} images or {AUTO_CV_MIN_TEST} test images)")


def folds_fingerprint(store) -> str:
    """Identity of a store's cross-validation: SHA-256 of its paths and fold ids (as in
    use: :meth:`~pipeline.store.hdf5.FeatureStore.use_split` may have changed them)."""
    digest = hashlib.sha256()
    for path, row in zip(store.paths, store.folds):
        digest.update(f"{path}\0{','.join(map(str, row))}\n".encode())
    return digest.hexdigest()


def cv_result(folds: list, y, classes, n_repeats: int) -> dict:
    """The ``cv`` block, metrics and out-of-fold predictions of a cross-validated run.

    ``folds`` are objects with ``repeat, fold, test (rows), proba (n_test,
    n_classes), params, n_train`` (e.g. :class:`pipeline.heads.crossval.FoldResult`);
    ``y`` is ``(n_images,)``.  Returns ``{"cv": ..., "metrics": ..., "predictions": ...}``
    where predictions hold the out-of-fold labels of every repeat and the
    probabilities of repeat 0, in store row order, for the rows some fold scored
    (``rows``: a given test split is in no fold and not scored here).
    """
    y = np.asarray(y)
    n = len(y)
    pred = np.full((n_repeats, n), -1, dtype=np.int64)
    proba0 = np.zeros((n, len(classes)))
    scores, n_train, n_test = [], [], []
    fold_metrics = {m: [] for m in METRICS}
    for f in folds:
        p = np.asarray(f.proba).argmax(axis=1)
        pred[f.repeat, f.test] = p
        if f.repeat == 0:
            proba0[f.test] = f.proba
        scores.append(float(np.mean(p == y[f.test])))
        for m, v in metric_values(y[f.test], p, len(classes)).items():
            fold_metrics[m].append(v)
        n_train.append(int(f.n_train))
        n_test.append(len(f.test))
    mean, lo, hi = corrected_interval(scores, float(np.mean(n_train)), float(np.mean(n_test)))
    rows = np.flatnonzero(pred[0] >= 0)
    pred, proba0, y = pred[:, rows], proba0[rows], y[rows]
    per_repeat = [float(np.mean(pred[r] == y)) for r in range(n_repeats)]
    cv = {"n_folds": int(max(f.fold for f in folds)) + 1, "n_repeats": n_repeats,
          "fold_ids": [[int(f.repeat), int(f.fold)] for f in folds], "fold_scores": scores,
          "fold_n_train": n_train, "fold_n_test": n_test, "mean": mean, "ci": [lo, hi],
          "sd": float(np.std(scores, ddof=1)) if len(scores) > 1 else 0.0,
          "repeat_accuracy": per_repeat, "fold_params": [f.params for f in folds],
          "fold_metrics": fold_metrics}
    return {"cv": cv, "rows": rows,
            "metrics": {"oof": evaluate(y, pred[0], classes)},
            "predictions": {"y_true": [int(v) for v in y], "y_pred": pred[0].tolist(),
                            "y_pred_repeats": pred.tolist(),
                            "proba": np.round(proba0, 5).tolist()}}
