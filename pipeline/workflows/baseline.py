"""``baseline``: pixels, MLP or scratch CNN on a store's split -> a run record and its model."""

from __future__ import annotations

import logging
from pathlib import Path

from ..options import check_seed
from ..runs.protocol import resolve_protocol
from ..runs.records import DEFAULT_RUNS_DIR, RunRecord, new_cv_record, new_record, save_run
from ..store.hdf5 import open_store
from ..train.baselines import cv_baseline, fit_baseline, model_writer

log = logging.getLogger(__name__)


def run_baseline(kind: str, features_path, runs_dir=DEFAULT_RUNS_DIR, seed: int = 0,
                 protocol: str = "holdout", split_seed: int | None = None,
                 groups: str | None = None, metric: str = "auto", class_weight: str = "auto",
                 **opts) -> tuple[RunRecord, Path]:
    """Fit baseline ``kind`` on the store at ``features_path`` under ``protocol``
    (holdout: its split; cv: its repeated K-fold, nested; auto: by size).

    ``split_seed`` / ``groups``: another split or group rule than the store's.
    Returns the run record and the path it was saved to.  ``opts`` override
    :data:`pipeline.train.baselines.DEFAULTS` (e.g. ``epochs=5``, ``size=48``);
    ``metric`` chooses C or the epoch kept, ``class_weight`` weights the loss
    (``auto`` for both: by the store's class balance, :mod:`pipeline.balance`).
    """
    check_seed(seed)
    record, out, store = baseline_run(kind, features_path, seed, protocol,
                                      split_seed=split_seed, groups=groups, metric=metric,
                                      class_weight=class_weight, **opts)
    path = save_run(record, runs_dir, *model_writer(kind, out, store))
    log.info("%s (%s) in %.1f s", record.label, record.protocol, out["seconds"])
    return record, path


def baseline_run(kind: str, features_path, seed: int = 0, protocol: str = "holdout",
                 split_seed: int | None = None, groups: str | None = None,
                 metric: str = "auto", class_weight: str = "auto",
                 **opts) -> tuple[RunRecord, dict, object]:
    """``(record, fitted baseline, store)`` of baseline ``kind``; writes nothing."""
    from .fit import resolve_selection

    store = open_store(features_path, split_seed, groups)
    protocol = resolve_protocol(protocol, store)
    log.info("protocol: %s", protocol.why)
    selection = resolve_selection(store, metric, class_weight)
    choice = {"metric": selection.metric, "class_weight": selection.class_weight}
    fit = protocol.pick(holdout=fit_baseline, cv=cv_baseline)
    out = fit(kind, store, seed, **choice, **opts)
    out["label"] += selection.suffix
    record = protocol.pick(holdout=baseline_record, cv=_cv_record)(kind, out, store, seed)
    record.update(protocol=protocol, **selection.record_fields())
    return record, out, store


def baseline_record(kind: str, out: dict, store, seed: int) -> RunRecord:
    """The run record (``kind="baseline"``) of a
    :func:`pipeline.train.baselines.fit_baseline` result."""
    return new_record(
        kind="baseline", method=kind, label=out["label"], store=store, classes=store.classes,
        val_pred=out["val_pred"], test_pred=out["test_pred"], test_proba=out["test_proba"],
        hyperparameters={**out["params"], **out.get("chosen", {})}, search=out.get("search"),
        fit_seconds=out["seconds"], trainable_params=out["trainable_params"],
        history=out.get("history"), seed=seed, group=out["label"],
        extra={"skipped_images": out.get("skipped", [])})


def _cv_record(kind: str, out: dict, store, seed: int) -> RunRecord:
    """The run record of a :func:`pipeline.train.baselines.cv_baseline` result."""
    return new_cv_record(
        kind="baseline", method=kind, label=out["label"], store=store,
        classes=store.classes, folds=out["folds"],
        hyperparameters={**out["params"], **out.get("chosen", {})},
        search=out.get("search"), fit_seconds=out["seconds"],
        trainable_params=out["trainable_params"], history=out.get("history"), seed=seed,
        group=out["label"], extra={"final_model": "refitted on every image"})
