"""``finetune``: fine-tune a backbone on a store's split -> run records and models, per seed."""

from __future__ import annotations

import json
import logging
from dataclasses import replace
from pathlib import Path

from ..files import sha256_text
from ..runs.records import DEFAULT_RUNS_DIR, new_record, save_run
from ..train.finetune import (
    FinetuneConfig,
    FinetuneResult,
    describe,
    finetune,
    method_name,
)

log = logging.getLogger(__name__)


def finetune_record(result: FinetuneResult) -> dict:
    """The run record (``kind="finetune"``) of a finished fine-tuning run."""
    cfg, plan, res = result.cfg, result.plan, result.train
    label = cfg.label or describe(cfg)
    record = new_record(
        kind="finetune", method=method_name(cfg), label=label, store=result.store,
        classes=result.store.classes, val_pred=result.val_proba.argmax(1),
        test_pred=result.test_proba.argmax(1), test_proba=result.test_proba,
        hyperparameters=cfg.key_dict(), fit_seconds=result.seconds, layer=cfg.unfreeze,
        trainable_params=res.trainable_params, history=res.history, seed=cfg.seed,
        group=cfg.group or label,
        extra={"finetune": {
            "block_groups": plan.groups, "trained_groups": plan.trainable,
            "group_lrs": plan.lrs, "group_start_epoch": plan.start_epoch,
            "cached_trunk": result.use_cache,
            "trunk_stages": result.stage_names[:plan.cut] if result.use_cache else [],
            "cache_seconds": result.cache_seconds, "train_seconds": res.seconds,
            "best_epoch": res.best_epoch, "stopped_early": res.stopped_early,
            "preprocessing": result.preprocessing.to_dict(), "weights_id": result.weights_id,
            "bn_policy": cfg.bn, "skipped_images": result.skipped}})
    record["backbone"], record["weights"] = cfg.backbone, result.weights_id
    return record


def run_finetune(cfg: FinetuneConfig, runs_dir=DEFAULT_RUNS_DIR,
                 cache_dir=None) -> tuple[dict, Path]:
    """Fine-tune per ``cfg`` on the split of the store ``cfg.features``; save record + model.

    ``cache_dir`` keeps the cached trunk outputs on disk (reused by later
    runs and by ``resume``).  Returns ``(record, record_path)``.
    """
    result = finetune(cfg, cache_dir)
    record = finetune_record(result)
    path = save_finetune(record, result, runs_dir)
    log.info("%s: val %.4f test %.4f (cache %.0f s, train %.0f s)", record["label"],
             record["metrics"]["val"]["accuracy"], record["metrics"]["test"]["accuracy"],
             result.cache_seconds, result.train.seconds)
    return record, path


def save_finetune(record: dict, result: FinetuneResult, runs_dir) -> Path:
    """Save ``record`` and the trained network (``<run_id>.pt``) under ``runs_dir``."""
    import torch

    return save_run(record, runs_dir, "pt", lambda file: torch.save(result.model_bundle(), file))


def run_finetune_seeds(cfg: FinetuneConfig, seeds: int = 3, runs_dir=DEFAULT_RUNS_DIR,
                       cache_dir=None) -> list[tuple[dict, Path]]:
    """Run ``cfg`` with seeds ``cfg.seed .. cfg.seed + seeds - 1`` under one ``group``.

    The cached trunk outputs are shared (they depend on the images, not on
    the training seed).  Checkpoints go to
    ``checkpoint_dir/<hash of the configuration>/seed<N>``.
    """
    label = cfg.label or describe(cfg)
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
                                runs_dir, cache_dir))
    return out
