"""``explore``: the transfer explorer, measured on the user's own data.

A grid of fine-tuning runs over **unfreeze depth** (how many of the top block
groups train: 0 = the new classifier only, 1, 2, ... or ``all``) x **training
images per class** (a seeded draw from the store's training split, nested
across sizes: :func:`pipeline.data.split.draw_rows`) x **learning rate** (one
rate for every trained group).  Every cell is one
:func:`pipeline.train.finetune.finetune` on the store's holdout split: early
stopping and the kept epoch are chosen on the validation split, the figure
shown is the test accuracy with its 95% Wilson interval, and the training
time.  Depths below ``all`` train on a cached frozen trunk (one cache per
depth, all of them computed in one pass through the trunk before the first
cell, for every image, and shared by every size and rate);
``all`` trains end to end from images and is by far the dearest cell.

The record is one JSON file, ``<runs_dir>/explore/explore-<key>.json``, where
the key names the store and the grid; it is rewritten (atomically) after
every cell, so an interrupted ``explore`` run again with the same options
resumes at the next cell, and the trunk caches are kept on disk
(``cache_dir``, default ``<runs_dir>/explore/cache``).  The report draws the
newest record as an interactive chart (:mod:`pipeline.reporting.explore`).
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import numpy as np

from ..configs import ExploreConfig, FinetuneConfig
from ..errors import UsageError, opt
from ..files import atomic_write
from ..options import check_seed
from ..runs.records import DEFAULT_RUNS_DIR, make_run_id, side_records
from ..runs.stats import wilson_interval
from ..runs.values import seconds_or_zero
from ..store.hdf5 import now_iso, open_store

log = logging.getLogger(__name__)

EXPLORE_SCHEMA = 1

def _group_names(backbone: str) -> list[str]:
    """The block groups of ``backbone``, shallow to deep (built on the meta device)."""
    import torch

    from ..backbones import load_backbone
    from ..train.finetune import block_groups

    with torch.device("meta"):
        loaded = load_backbone(backbone, "none")
        names = [n for n, _ in loaded.stages()]
    return [g for g, _ in block_groups(loaded.spec, names)]


def depth_plan(depth: str, groups: list[str]) -> tuple[str, list[str], str]:
    """``(unfreeze value, groups trained, label)`` of a depth: ``"0"`` is the classifier
    alone, ``"K"`` the top K block groups, ``"all"`` every group."""
    if depth == "all":
        return "all", list(groups), "all groups"
    if not str(depth).isdigit():
        raise UsageError(f"{opt('depth', repr(depth))} is not a depth: a number of top block "
                         f"groups to train (0 .. {len(groups)}) or 'all'", param="depth")
    k = int(depth)
    if k > len(groups):
        raise UsageError(f"{opt('depth', depth)}: this backbone has {len(groups)} block groups "
                         f"({', '.join(groups)}); pass 0 .. {len(groups)} or 'all'",
                         param="depth")
    if k == 0:
        return "none", [], "classifier only"
    if k == len(groups):
        return "all", list(groups), "all groups"
    trained = groups[-k:]
    label = f"top {k} group{'s' if k > 1 else ''} ({', '.join(trained)})"
    return trained[0], trained, label


def grid_sizes(sizes, train_labels) -> list[int | None]:
    """The sizes worth running: whole numbers below the largest class's training count
    (a larger one is the whole split again), and ``None`` for ``all``; in order."""
    counts = np.bincount(np.asarray(train_labels))
    largest = int(counts.max()) if counts.size else 0
    out = []
    for s in sizes:
        if str(s) == "all":
            value = None
        elif str(s).isdigit() and int(s) >= 1:
            value = int(s)
            if value >= largest:
                log.info("explore: %d images per class is the whole training split here "
                         "(largest class %d); left out", value, largest)
                continue
        else:
            raise UsageError(f"{opt('per_class', repr(s))} must be a whole number >= 1 or "
                             "'all'", param="per_class")
        if value not in out:
            out.append(value)
    return sorted(out, key=lambda v: np.inf if v is None else v)


def _check(cfg: ExploreConfig):
    check_seed(cfg.seed)
    if not cfg.depths or not cfg.sizes or not cfg.lrs:
        raise UsageError("the explorer grid needs at least one depth, size and learning rate",
                         param="depth")
    if any(lr <= 0 for lr in cfg.lrs):
        raise UsageError(f"{opt('lr')} values must be > 0, got {list(cfg.lrs)}", param="lr")
    if cfg.epochs < 1 or cfg.views < 1:
        raise UsageError(f"{opt('epochs')} and {opt('views')} must be >= 1", param="epochs")


def record_path(runs_dir, key: str) -> Path:
    return Path(runs_dir) / "explore" / f"explore-{key}.json"


def _load_previous(path: Path, key: str) -> dict | None:
    """The record of an earlier run of this grid (to resume), or None.  One that cannot
    be read is moved aside with a warning (it holds nothing usable), never overwritten."""
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
        if isinstance(record, dict) and record.get("key") == key \
                and record.get("schema") == EXPLORE_SCHEMA and isinstance(record.get("cells"),
                                                                          list):
            return record
        reason = "not a record of this grid"
    except (OSError, ValueError) as exc:
        reason = str(exc)
    aside = path.with_name(f"{path.name}.unreadable-{time.strftime('%Y%m%dT%H%M%S')}")
    path.rename(aside)
    log.warning("explore record %s cannot be resumed from (%s); moved to %s, starting afresh",
                path, reason, aside)
    return None


def _cell(result, depth: str, label: str, trained: list, per_class, lr: float,
          wall: float) -> dict:
    """One grid cell of the record, from a finished :class:`FinetuneResult`."""
    store, res = result.store, result.train
    y_val, y_test = store.y("val"), store.y("test")
    correct = (result.test_proba.argmax(1) == y_test).astype(int)
    low, high = wilson_interval(int(correct.sum()), len(correct))
    return {"depth": depth, "label": label, "unfreeze": result.cfg.unfreeze,
            "groups_trained": trained, "per_class": per_class,
            "n_train": _train_count(store.y("train"), result.cfg.train_per_class),
            "lr": lr, "val_accuracy": float(np.mean(result.val_proba.argmax(1) == y_val)),
            "test_accuracy": float(correct.mean()), "test_low": low, "test_high": high,
            "n_test": int(len(correct)), "test_correct": "".join(map(str, correct)),
            "train_seconds": round(res.seconds, 2),
            "cache_seconds": round(result.cache_seconds, 2), "seconds": round(wall, 2),
            "trainable_params": int(res.trainable_params), "best_epoch": res.best_epoch,
            "epochs_run": len(res.history), "cached_trunk": result.use_cache,
            "val_curve": [round(h["val_accuracy"], 4) for h in res.history]}


def _train_count(labels, size) -> int:
    """Training images in a draw of ``size`` per class (None: the whole split) of ``labels``:
    :func:`pipeline.data.split.draw_rows` takes ``min(size, class count)`` of each class."""
    counts = np.bincount(np.asarray(labels))
    return int(np.minimum(counts, size).sum()) if size else int(counts.sum())


def run_explore(cfg: ExploreConfig, runs_dir=DEFAULT_RUNS_DIR, cache_dir=None) -> tuple[dict, Path]:
    """Run every cell of ``cfg``'s grid not already in its record; returns ``(record, path)``.

    Cells run depth by depth (one trunk cache each, all filled in one pass first),
    then size, then rate; the record is saved after each.  Re-running the same grid
    on the same store resumes; a finished grid returns at once.  The cells share one
    :class:`~pipeline.train.trunk_cache.TrunkCache`: ``cache_dir`` (the caller's), or a
    new one on the folder ``cache_dir`` (default ``<runs_dir>/explore/cache``).
    """
    from dataclasses import replace

    from ..train.finetune import finetune, prefill_trunk_cache, store_weights
    from ..train.trunk_cache import TrunkCache
    from .fit import find_store

    _check(cfg)
    cfg = replace(cfg, features=str(find_store(cfg.features)))
    store = open_store(cfg.features, cfg.split_seed, cfg.groups)
    backbone = cfg.backbone or store.attrs.get("backbone")
    # resolved before the grid's key: the weights its cells start from are part of it
    cfg = replace(cfg, weights=cfg.weights or store_weights(store, backbone))
    groups = _group_names(backbone)
    plans = {str(d): depth_plan(str(d), groups) for d in cfg.depths}
    sizes = grid_sizes(cfg.sizes, store.y("train"))
    key = cfg.key(store.fingerprint)
    path = record_path(runs_dir, key)
    cache = TrunkCache.of(cache_dir, Path(runs_dir) / "explore" / "cache")
    record = _load_previous(path, key) or _new_record(cfg, store, backbone, groups, sizes, key)
    cells, record["skipped"] = _plan_cells(cfg, store, plans, sizes)
    done = {(c["depth"], c["per_class"], c["lr"]) for c in record["cells"]}
    todo = [cell for cell in cells if cell not in done]
    record["skipped"] = [k for k in record["skipped"]   # run before under a higher limit
                         if (k["depth"], k["per_class"], k["lr"]) not in done]
    record["grid"]["max_end_to_end"] = cfg.max_end_to_end
    total = len(todo) + len(record["cells"])
    if done:
        log.info("explore: resuming %s, %d of %d cells done", path, total - len(todo), total)
    base = FinetuneConfig(features=str(cfg.features), backbone=backbone, weights=cfg.weights,
                          lr_factor=1.0, epochs=cfg.epochs, views=cfg.views, seed=cfg.seed,
                          runtime=cfg.runtime, **cfg.cell_options())
    # every cached depth's trunk output in one pass, before the first cell reads one
    depths = dict.fromkeys(depth for depth, _, _ in todo)
    seconds = prefill_trunk_cache([replace(base, unfreeze=plans[d][0]) for d in depths], cache)
    record["trunk_cache_seconds"] = round(
        seconds_or_zero(record.get("trunk_cache_seconds")) + seconds, 2)
    for n, (depth, size, lr) in enumerate(todo, start=1):
        unfreeze, trained, label = plans[depth]
        t0 = time.perf_counter()
        result = finetune(replace(base, unfreeze=unfreeze, lr=lr, train_per_class=size), cache)
        cell = _cell(result, str(depth), label, trained, size, lr, time.perf_counter() - t0)
        record["cells"].append(cell)
        record["weights"] = result.weights_id
        record["updated"], record["complete"] = now_iso(), len(record["cells"]) == total
        _save(record, path)
        log.info("explore %d/%d: %s, %s per class, lr %g: val %.3f test %.3f (%.0f s)",
                 total - len(todo) + n, total, label, size or "all", lr,
                 cell["val_accuracy"], cell["test_accuracy"], cell["seconds"])
    record["complete"] = True
    _save(record, path)
    return record, path


def _plan_cells(cfg, store, plans, sizes) -> tuple[list, list]:
    """``([(depth, size, lr)] to run, [skipped cell]])``: every cell of the grid, depth by
    depth, except the end-to-end (``all``) cells with more than ``cfg.max_end_to_end``
    training images, which are listed with the reason."""
    cells, skipped = [], []
    for d in cfg.depths:
        for size in sizes:
            n_train = _train_count(store.y("train"), size)
            for lr in cfg.lrs:
                if plans[str(d)][0] == "all" and cfg.max_end_to_end is not None \
                        and n_train > cfg.max_end_to_end:
                    skipped.append({"depth": str(d), "label": plans[str(d)][2],
                                    "per_class": size,
                                    "lr": lr, "n_train": n_train,
                                    "reason": f"end to end on {n_train} images: more than "
                                              f"--max-end-to-end {cfg.max_end_to_end}"})
                else:
                    cells.append((str(d), size, lr))
    return cells, skipped


def _new_record(cfg, store, backbone, groups, sizes, key) -> dict:
    counts = np.bincount(store.y("train"), minlength=len(store.classes))
    return {"kind": "explore", "schema": EXPLORE_SCHEMA, "key": key,
            "run_id": make_run_id("explore"), "created": now_iso(), "updated": now_iso(),
            "store": str(Path(cfg.features).resolve()), "fingerprint": store.fingerprint,
            "dataset": Path(str(store.data_root)).name, "backbone": backbone,
            "weights": None, "classes": store.classes, "block_groups": groups,
            "train_per_class": [int(c) for c in counts],
            "split_sizes": {k: int(v) for k, v in store.split_sizes().items()},
            "grid": {"depths": [str(d) for d in cfg.depths], "sizes": sizes,
                     "lrs": list(cfg.lrs), "epochs": cfg.epochs, "views": cfg.views,
                     "seed": cfg.seed, "lr_factor": 1.0, "extra": cfg.cell_options(),
                     "max_end_to_end": cfg.max_end_to_end},
            "cells": [], "complete": False}


def _save(record: dict, path: Path):
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(path, "w", encoding="utf-8") as fh:
        json.dump(record, fh)


def latest_explore(runs_dir) -> dict | None:
    """The most recently updated readable explore record with cells under
    ``<runs_dir>/explore/``, or None."""
    found = [r for r in side_records(Path(runs_dir) / "explore", "explore-*.json", "explore",
                                     EXPLORE_SCHEMA) if r.get("cells")]
    return max(found, key=lambda r: str(r.get("updated"))) if found else None
