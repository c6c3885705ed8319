"""``finetune``: fine-tune a backbone on a store's split -> run records and models, per seed."""

from __future__ import annotations

import json
import logging
from dataclasses import replace
from pathlib import Path

from ..files import atomic_write, sha256_text
from ..options import check_seed
from ..runs.protocol import Protocol, resolve_protocol
from ..runs.records import (
    DEFAULT_RUNS_DIR,
    RunInfo,
    RunRecord,
    new_cv_record,
    new_record,
    save_run,
)
from ..store.hdf5 import open_store
from ..train.finetune import (
    FinetuneConfig,
    FinetuneResult,
    describe,
    finetune,
    finetune_cv,
    method_name,
)
from ..train.trunk_cache import TrunkCache, trunk_runtime

log = logging.getLogger(__name__)


def finetune_record(result: FinetuneResult, protocol: Protocol) -> RunRecord:
    """The run record (``kind="finetune"``) of a finished fine-tuning run under
    ``protocol`` (the one it was run by: :func:`finetune_run`)."""
    cfg, res = result.cfg, result.train
    # runs of one configuration with another metric or weighting stay apart in tables
    suffix = result.selection.suffix if result.selection is not None else ""
    label = cfg.label or describe(cfg)
    # another --lr (or any option but the seed) is another strategy, never a repeat
    setup = {k: v for k, v in cfg.key_dict().items() if k != "seed"}
    run = RunInfo(kind="finetune", method=method_name(cfg), label=label + suffix,
                  setup=setup, hyperparameters=cfg.key_dict(), fit_seconds=result.seconds,
                  layer=cfg.unfreeze, trainable_params=res.trainable_params,
                  history=res.history, seed=cfg.seed, group=(cfg.group or label) + suffix,
                  extra={"finetune": _details(result, protocol)})
    record = protocol.pick(
        holdout=lambda: new_record(run, result.store, result.val_proba.argmax(1),
                                   result.test_proba.argmax(1), result.test_proba, protocol,
                                   result.val_proba),
        cv=lambda: new_cv_record(run, result.store, result.folds, protocol))()
    record.backbone, record.weights = cfg.backbone, result.weights_id
    if result.selection is not None:
        record.update(result.selection.record_fields())
    return record


def _details(result: FinetuneResult, protocol: Protocol) -> dict:
    cfg, plan, res = result.cfg, result.plan, result.train
    return {"block_groups": plan.groups, "trained_groups": plan.trainable,
            "group_lrs": plan.lrs, "group_start_epoch": plan.start_epoch,
            "cached_trunk": result.use_cache,
            "trunk_runtime": trunk_runtime(cfg) if result.use_cache else None,
            "trunk_stages": result.stage_names[:plan.cut] if result.use_cache else [],
            "cache_seconds": result.cache_seconds, "train_seconds": res.seconds,
            "best_epoch": res.best_epoch, "stopped_early": res.stopped_early,
            "preprocessing": result.preprocessing.to_dict(), "weights_id": result.weights_id,
            "bn_policy": cfg.bn, "skipped_images": result.skipped,
            "stage_lrs": plan.stage_lrs, "tta": cfg.tta,
            # WiSE-FT: the coefficient chosen on validation (cv: each fold's, in its params)
            "wise": res.extra.get("wise"),
            # LP-FT's logistic-regression probe: its C and validation score (cv: each fold's)
            "probe": res.extra.get("probe"), "classify_at": cfg.classify_at,
            "final_model": protocol.pick(
                holdout="the best epoch on validation",
                cv="trained on every image for the folds' median best epoch")}


def run_finetune(cfg: FinetuneConfig, runs_dir=DEFAULT_RUNS_DIR,
                 cache_dir=None) -> tuple[RunRecord, Path]:
    """Fine-tune per ``cfg`` on the store ``cfg.features``; save record + model.

    ``cfg.protocol``: holdout (its split), cv (its repeated K-fold, nested: see
    :func:`pipeline.train.finetune.finetune_cv`) or auto (by size).
    ``cache_dir``: a :class:`~pipeline.train.trunk_cache.TrunkCache` shared with other
    runs, or a folder that keeps the cached trunk outputs on disk (reused by later
    runs and by ``resume``).  Returns ``(record, record_path)``.
    """
    record, result = finetune_run(cfg, cache_dir)
    path = save_finetune(record, result, runs_dir)
    log.info("%s (%s): cache %.0f s, total %.0f s", record.label, record.protocol,
             result.cache_seconds, result.seconds)
    return record, path


def finetune_run(cfg: FinetuneConfig, cache_dir=None):
    """``(record, result)`` of one fine-tuning run under ``cfg.protocol``; writes only
    checkpoints.  ``cfg.features`` None or a folder: the newest store in it; ``cache_dir``
    as for :func:`run_finetune`."""
    from .fit import find_store

    cfg = replace(cfg, features=str(find_store(cfg.features)))
    protocol = resolve_protocol(cfg.protocol,
                                open_store(cfg.features, cfg.split_seed, cfg.groups))
    log.info("protocol: %s", protocol.why)
    result = protocol.pick(holdout=finetune, cv=finetune_cv)(cfg, cache_dir)
    return finetune_record(result, protocol), result


#: Training images (one per class, the first classes) x draws of the augmentation preview.
PREVIEW_IMAGES, PREVIEW_DRAWS = 3, 6


def save_finetune(record: RunRecord, result: FinetuneResult, runs_dir) -> Path:
    """Save ``record``, its augmentation preview (``<run_id>.augment.jpg``) and the
    trained network (``<run_id>.pt``, with the temperature of ``record.calibration``) under
    ``runs_dir``."""
    import torch

    write_augmentation_preview(record, result, runs_dir)
    bundle = {**result.model_bundle(),
              "temperature": (record.calibration or {}).get("temperature", 1.0)}
    return save_run(record, runs_dir, "pt", lambda file: torch.save(bundle, file))


def run_finetune_seeds(cfg: FinetuneConfig, seeds: int = 1, runs_dir=DEFAULT_RUNS_DIR,
                       cache_dir=None) -> list[tuple[RunRecord, Path]]:
    """Run ``cfg`` with seeds ``cfg.seed .. cfg.seed + seeds - 1`` under one ``group``.

    The cached trunk outputs are shared (they depend on the images, not on
    the training seed): ``cache_dir`` is a
    :class:`~pipeline.train.trunk_cache.TrunkCache` (the caller's, shared further) or
    the folder of a new one for these seeds.  Checkpoints go to
    ``checkpoint_dir/<hash of the configuration>/seed<N>``.
    """
    from .fit import find_store

    check_seed(cfg.seed, seeds)
    cfg = replace(cfg, features=str(find_store(cfg.features)))
    label = cfg.label or describe(cfg)
    cache = TrunkCache.of(cache_dir)
    root = None
    if cfg.checkpoint_dir:
        # One folder per configuration and store, so --resume with the same options finds it.
        blob = json.dumps({**cfg.key_dict(), "seed": None, "features": str(cfg.features)},
                          sort_keys=True)
        root = Path(cfg.checkpoint_dir) / sha256_text(blob)[:12]
    out = []
    for k in range(seeds):
        ck = str(root / f"seed{cfg.seed + k}") if root else None
        out.append(run_finetune(replace(cfg, seed=cfg.seed + k, label=label,
                                        group=cfg.group or label, checkpoint_dir=ck),
                                runs_dir, cache))
    return out


def write_augmentation_preview(record: RunRecord, result: FinetuneResult,
                               runs_dir) -> Path | None:
    """Write ``<runs_dir>/<run_id>.augment.jpg``: the run's own training augmentation
    (:func:`pipeline.train.datasets.augmentation_preview`) on the first training image
    of each of the first :data:`PREVIEW_IMAGES` classes, :data:`PREVIEW_DRAWS` draws
    each, and describe it in ``record.augmentation_preview``.

    Made here, when the run is recorded, because the report never imports torch.
    A preview that cannot be written is logged and left out; the run is kept.
    """
    from ..train.datasets import augmentation_preview, image_transform

    store, cfg, pre = result.store, result.cfg, result.preprocessing
    train = [i for i in range(len(store)) if store.split_codes[i] == 0]
    firsts = {}
    for i in train:
        firsts.setdefault(int(store.labels[i]), store.paths[i])
    paths = [firsts[k] for k in sorted(firsts)][:PREVIEW_IMAGES]
    path = Path(runs_dir).resolve() / f"{record.run_id}.augment.jpg"
    try:
        jpeg = augmentation_preview(store.data_root, paths, pre, cfg.augment,
                                    draws=PREVIEW_DRAWS, seed=cfg.seed)
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_write(path, "wb") as fh:
            fh.write(jpeg)
    except OSError as exc:
        log.warning("no augmentation preview for run %s: cannot write %s (%s)",
                    record.run_id, path, exc)
        return None
    record.augmentation_preview = {
        "file": str(path), "preset": cfg.augment, "draws": PREVIEW_DRAWS, "paths": paths,
        "seed": cfg.seed, "transform": repr(image_transform(pre, cfg.augment)),
        "cached_views": cfg.views if result.use_cache else None}
    return path
