"""``baseline``: pixels, MLP or scratch CNN on a store's split -> a run record and its model."""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path

from ..configs import BaselineConfig
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
from ..train.baselines import BaselineFit, cv_baseline, fit_baseline, model_writer

log = logging.getLogger(__name__)


def run_baseline(cfg: BaselineConfig, runs_dir=DEFAULT_RUNS_DIR) -> tuple[RunRecord, Path]:
    """Fit baseline ``cfg.kind`` on the store ``cfg.features`` (None or a folder: the
    newest store) under ``cfg.protocol`` (holdout: its split; cv: its repeated K-fold,
    nested; auto: by size).

    ``split_seed`` / ``groups``: another split or group rule than the store's.
    Returns the run record and the path it was saved to.  ``epochs`` and
    ``options`` override :data:`pipeline.train.baselines.DEFAULTS` (e.g.
    ``options={"size": 48}``); ``metric`` chooses C or the epoch kept,
    ``class_weight`` weights the loss (``auto`` for both: by the store's class
    balance, :mod:`pipeline.balance`).
    """
    record, fit, store = baseline_run(cfg)
    path = save_run(record, runs_dir, *model_writer(cfg.kind, fit, store))
    log.info("%s (%s) in %.1f s", record.label, record.protocol, fit.fit_seconds)
    return record, path


def baseline_run(cfg: BaselineConfig) -> tuple[RunRecord, BaselineFit, object]:
    """``(record, fitted baseline, store)`` of :func:`run_baseline`; writes nothing."""
    from .fit import find_store, resolve_selection

    check_seed(cfg.seed)
    store = open_store(find_store(cfg.features), cfg.split_seed, cfg.groups)
    protocol = resolve_protocol(cfg.protocol, store)
    log.info("protocol: %s", protocol.why)
    selection = resolve_selection(store, cfg.metric, cfg.class_weight)
    choice = {"metric": selection.metric, "class_weight": selection.class_weight}
    opts = {**cfg.options, **({"epochs": cfg.epochs} if cfg.epochs else {})}
    run = protocol.pick(holdout=fit_baseline, cv=cv_baseline)
    fit = run(cfg.kind, store, cfg.seed, **choice, **opts)
    fit = replace(fit, label=fit.label + selection.suffix)
    record = protocol.pick(holdout=baseline_record, cv=_cv_record)(cfg.kind, fit, store,
                                                                   cfg.seed)
    record.update(protocol=protocol, **selection.record_fields())
    return record, fit, store


def baseline_record(kind: str, fit: BaselineFit, store, seed: int) -> RunRecord:
    """The run record (``kind="baseline"``) of a
    :func:`pipeline.train.baselines.fit_baseline` result."""
    run = _run_info(kind, fit, seed, {"skipped_images": fit.skipped_images})
    return new_record(run, store, fit.val_pred, fit.test_pred, fit.test_proba)


def _cv_record(kind: str, fit: BaselineFit, store, seed: int) -> RunRecord:
    """The run record of a :func:`pipeline.train.baselines.cv_baseline` result."""
    run = _run_info(kind, fit, seed, {"final_model": "refitted on every image"})
    return new_cv_record(run, store, fit.folds)


def _run_info(kind: str, fit: BaselineFit, seed: int, extra: dict) -> RunInfo:
    """What a fitted baseline reports in its record: its fields of the same names."""
    return RunInfo(kind="baseline", method=kind, label=fit.label,
                   setup={"kind": kind, **fit.params},   # another --epochs: another strategy
                   hyperparameters=fit.hyperparameters, search=fit.search,
                   fit_seconds=fit.fit_seconds, trainable_params=fit.trainable_params,
                   history=fit.history, seed=seed, group=fit.label, extra=extra)
