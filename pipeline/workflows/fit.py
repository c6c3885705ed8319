"""``fit``: heads on a store's cached features -> run records and saved heads.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np

from ..balance import METRIC_LABELS, Selection
from ..configs import FitConfig
from ..errors import StoreError, opt, program
from ..heads.persist import HEAD_EXT, save_head
from ..heads.registry import get_head
from ..heads.selection import Choice, predict_proba, select_and_fit
from ..options import check_seed
from ..runs.protocol import resolve_protocol
from ..runs.records import (
    DEFAULT_RUNS_DIR,
    RunInfo,
    RunRecord,
    new_cv_record,
    new_record,
    save_run,
)
from ..store.hdf5 import open_store

log = logging.getLogger(__name__)


DEFAULT_FEATURES_DIR = Path("features")


def find_store(features=None, features_dir=DEFAULT_FEATURES_DIR) -> Path:
    """``features`` if it is a file; the most recently written store in the folder
    ``features`` (or ``features_dir`` when none is given) otherwise."""
    if features and not Path(features).is_dir():
        return Path(features)
    folder = Path(features) if features else Path(features_dir)
    candidates = sorted(folder.glob("*.h5"), key=lambda p: p.stat().st_mtime)
    if not candidates:
        raise StoreError(
            f"no feature store (*.h5) in {str(folder)!r}; run `{program()} extract` first "
            f"or pass {opt('features', 'FILE')}", param="features"
        )
    if len(candidates) > 1:
        log.info("%d stores in %s; using the newest, %s (pass %s to choose)", len(candidates),
                 folder, candidates[-1].name, opt("features", "FILE"))
    else:
        log.info("using the feature store %s", candidates[-1])
    return candidates[-1]


def resolve_selection(store, metric: str, class_weight: str, clf: str | None = None):
    """The run's :class:`pipeline.balance.Selection` from the store's class counts, logged
    (``clf``: the head fitted, which may take no class weights)."""
    selection = Selection.resolve(metric, class_weight, store.labels, store.classes,
                                  get_head(clf) if clf is not None else None)
    log.info("selection metric: %s; class weights: %s", selection.metric_reason,
             selection.class_weight_reason)
    return selection


def run_fit(cfg: FitConfig, runs_dir=DEFAULT_RUNS_DIR) -> list[tuple[RunRecord, Path]]:
    """Fit head ``cfg.clf`` on tap ``cfg.layer`` (or every tap, ``layer='all'``) of the
    store ``cfg.features`` (None or a folder: the newest store, :func:`find_store`).

    ``holdout``: standardise, choose the hyperparameter on the validation
    split, refit on train+val, score on test.  ``cv``: the same on every
    outer fold of the store's repeated K-fold, the hyperparameter chosen by
    an inner CV inside the outer training rows (:mod:`pipeline.heads.crossval`);
    the saved head is then refitted on every image.  ``auto`` picks by size
    (:func:`pipeline.runs.protocol.resolve_protocol`).  ``split_seed`` and ``groups``
    choose another split or group rule than the store's (no forward pass:
    :meth:`pipeline.store.hdf5.FeatureStore.use_split`).  One run record and the
    fitted head (``<run_id>.skops``, :mod:`pipeline.heads.persist`) per tap under ``runs_dir``.
    ``metric`` chooses the hyperparameter (``auto``: balanced accuracy on imbalanced
    classes, else accuracy) and ``class_weight`` weights the head's loss (``auto``:
    balanced on imbalanced classes; knn has none): :mod:`pipeline.balance`.
    """
    clf, seed = cfg.clf, cfg.seed
    get_head(clf)       # an unknown name is refused before the store is opened
    check_seed(seed)
    store = open_store(find_store(cfg.features), cfg.split_seed, cfg.groups)
    protocol = resolve_protocol(cfg.protocol, store)
    log.info("protocol: %s", protocol.why)
    selection = resolve_selection(store, cfg.metric, cfg.class_weight, clf)
    layers = store.taps if cfg.layer == "all" else [cfg.layer]
    fit_tap = protocol.pick(holdout=_fit_holdout, cv=_fit_cv)
    out = []
    for tap in layers:
        record, model = fit_tap(store, tap, clf, seed, selection, protocol)
        record.update(selection.record_fields())
        bundle = {"model": model, "classes": store.classes, "tap": tap,
                  "temperature": (record.calibration or {}).get("temperature", 1.0),
                  "store_config": store.config,
                  "weights_source": store.attrs.get("weights_source"),
                  "features_fingerprint": store.fingerprint}
        path = save_run(record, runs_dir, HEAD_EXT,
                        lambda file, bundle=bundle: save_head(bundle, file))
        log.info("%s: %s", record.label, summary_line(record))
        out.append((record, path))
    return out


def summary_line(record: RunRecord) -> str:
    """``val 0.9 test 0.8`` (holdout) or ``cv 0.85 [0.80, 0.90]`` (cv) of a record's
    accuracy; then, when it was selected by another metric, that metric the same way,
    and what selected it; ``COLLAPSED`` when it answers one class."""
    from ..runs.groups import collapse_of, score

    metric = record.selection_metric or "accuracy"
    line = record.protocol.pick(holdout=_holdout_line, cv=_cv_line)(record, metric, score)
    if record.selection_metric:
        line += (f" (selected by {METRIC_LABELS[metric]}, class weights "
                 f"{record.class_weight or 'none'})")
    collapsed = collapse_of(record)
    if collapsed:
        line += f"  COLLAPSED: {collapsed['text']}"
    return line


def _cv_line(record: RunRecord, metric: str, score) -> str:
    cv = record.cv
    line = (f"cv {cv['mean']:.4f} [{cv['ci'][0]:.4f}, {cv['ci'][1]:.4f}] over "
            f"{len(cv['fold_scores'])} folds")
    if metric != "accuracy":
        sc = score(record, metric)
        line += (f"; {METRIC_LABELS[metric]} cv {sc['value']:.4f} "
                 f"[{sc['low']:.4f}, {sc['high']:.4f}]")
    return line


def _holdout_line(record: RunRecord, metric: str, score) -> str:
    val, test = record.metrics["val"], record.scored_metrics
    line = f"val {val['accuracy']:.4f} test {test['accuracy']:.4f}"
    if metric != "accuracy":
        line += f"; {METRIC_LABELS[metric]} val {val[metric]:.4f} test {test[metric]:.4f}"
    return line


def _fit_holdout(store, tap: str, clf: str, seed: int, selection, protocol):
    choice = Choice(selection.metric, selection.class_weight)
    val_proba = None   # the streaming head fits no temperature
    if get_head(clf).streaming:  # reads the store block by block, never a whole tap
        from ..heads.streaming import stream_select_and_fit

        res, test_pred, proba = stream_select_and_fit(store, tap, seed=seed, choice=choice)
    else:
        X_tr, y_tr = store.X(tap, "train"), store.y("train")
        X_va, y_va = store.X(tap, "val"), store.y("val")
        X_te = store.X(tap, "test")
        res = select_and_fit(clf, X_tr, y_tr, X_va, y_va, seed=seed, choice=choice)
        proba = predict_proba(res.model, X_te)
        test_pred = res.model.predict(X_te)
        val_proba = _validation_proba(clf, X_tr, y_tr, X_va, res, seed, proba.shape[1])
    run = RunInfo(kind="frozen", method=clf,
                  label=f"{features_label(store, tap)} + {clf}{selection.suffix}",
                  setup=_setup(clf, tap, selection),
                  hyperparameters={**res.params, "class_weight": res.class_weight},
                  search=res.search, fit_seconds=res.fit_seconds, layer=tap, seed=seed,
                  trainable_params=_n_params(res.model))
    record = new_record(run, store, res.val_pred, test_pred, proba, protocol, val_proba)
    return record, res.model


def features_label(store, tap: str) -> str:
    """``<backbone> <tap>``, with ``(flip TTA)`` when the store's vectors are averaged with
    their mirror's, so the report never shows a flip run as the plain one."""
    label = f"{store.attrs.get('backbone')} {tap}"
    return label if store.tta == "none" else f"{label} ({store.tta} TTA)"


def _validation_proba(clf: str, X_tr, y_tr, X_va, res, seed: int, n_classes: int):
    """``(n_val, n_classes)``: the validation probabilities of the chosen head trained on the
    training split alone (what the saved model's temperature is fitted on)."""
    from threadpoolctl import threadpool_limits

    from ..heads.crossval import full_proba
    from ..heads.selection import fit_head, make_head, smallest_class

    with threadpool_limits(1):
        model = fit_head(make_head(clf, next(iter(res.params.values())), seed,
                                   calibrated=smallest_class(y_tr),
                                   class_weight=res.class_weight), X_tr, y_tr, res.class_weight)
        return full_proba(model, X_va, n_classes)


def _fit_cv(store, tap: str, clf: str, seed: int, selection, protocol):
    """Nested cross-validation of ``clf`` on ``tap``; the returned head is refitted on
    every image with a hyperparameter chosen by inner CV on all of them."""
    from threadpoolctl import threadpool_limits

    from ..heads.crossval import choose_param, cross_validate
    from ..heads.selection import fit_head, make_head, smallest_class

    choice = Choice(selection.metric, selection.class_weight, store.row_groups)
    t0 = time.perf_counter()
    X, y = store.X(tap), store.labels
    folds = cross_validate(clf, X, y, store.cv_splits(), seed=seed, choice=choice)
    cv_seconds = time.perf_counter() - t0
    with threadpool_limits(1):
        params, search = choose_param(clf, X, y, seed, choice=choice)
        model = fit_head(make_head(clf, next(iter(params.values())), seed,
                                   calibrated=smallest_class(y),
                                   class_weight=selection.class_weight), X, y,
                         selection.class_weight)
    run = RunInfo(kind="frozen", method=clf,
                  label=f"{features_label(store, tap)} + {clf}{selection.suffix}",
                  setup=_setup(clf, tap, selection),
                  hyperparameters={**params, "class_weight": selection.class_weight},
                  search=search, fit_seconds=cv_seconds, layer=tap, seed=seed,
                  trainable_params=_n_params(model),
                  extra={"final_model": "refitted on every image with the hyperparameter an "
                                        "inner CV over all of them chose"})
    record = new_cv_record(run, store, folds, protocol)
    return record, model


def _setup(clf: str, tap: str, selection) -> dict:
    """The options a head's run is made with (its record's ``setup``; the seed left out)."""
    return {"clf": clf, "layer": tap, "metric": selection.metric,
            "class_weight": selection.class_weight}


def _n_params(model) -> int | None:
    """Number of fitted parameters of a linear head (coef + intercept), else None."""
    est = model[-1]
    if hasattr(est, "coef_"):
        return int(est.coef_.size + np.size(getattr(est, "intercept_", 0)))
    return None
