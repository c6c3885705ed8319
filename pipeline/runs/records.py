"""Run records: one JSON file per fit, baseline or fine-tune run.

A run record is the only thing the report reads.  :func:`new_record` builds
the common skeleton (identity, provenance, split, scores, predictions on the
test images); :func:`save_record` writes it under ``reports/runs/`` without
ever overwriting; :func:`load_records` reads a folder of them back.

Schema (``schema: 1``; README "Run records" documents every field):
``run_id, created, kind (frozen|baseline|finetune), method, label, backbone,
layer, weights, features {path, fingerprint}, data_root, classes,
split_sizes, split_fingerprint, seed, group, hyperparameters, search,
metrics {val, test}, predictions {paths, y_true, y_pred, proba},
fit_seconds, trainable_params, history, model_file, command, versions,
machine``.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import secrets
import sys
import time
from pathlib import Path

import numpy as np

from ..errors import StoreError, opt
from ..files import atomic_path

SCHEMA = 1
DEFAULT_RUNS_DIR = Path("reports") / "runs"


def split_fingerprint(test_paths) -> str:
    """Identity of a test set: SHA-256 of its sorted relative paths."""
    return hashlib.sha256("\n".join(sorted(test_paths)).encode()).hexdigest()


def machine_info() -> dict:
    return {"platform": platform.platform(), "processor": platform.processor(),
            "cpus": os.cpu_count(), "python": platform.python_version()}


def make_run_id(method: str, layer: str | None = None) -> str:
    stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
    parts = [stamp, method] + ([layer] if layer else []) + [secrets.token_hex(3)]
    return "-".join(parts)


def _skeleton(*, kind, method, label, store, classes, hyperparameters, search, fit_seconds,
              layer, trainable_params, history, seed, group) -> dict:
    """The fields every run record has, whatever its protocol."""
    from ..store.hdf5 import library_versions

    return {
        "schema": SCHEMA,
        "run_id": make_run_id(method, layer),
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "kind": kind,
        "method": method,
        "label": label,
        "backbone": store.attrs.get("backbone") if kind != "baseline" else None,
        "layer": layer,
        "weights": store.attrs.get("weights") if kind != "baseline" else None,
        "features": {"path": str(store.path), "fingerprint": store.fingerprint,
                     "backbone": store.attrs.get("backbone"),
                     "images_per_second": store.attrs.get("images_per_second")},
        "data_root": str(store.data_root),
        "dataset": store.attrs.get("dataset"),
        "classes": list(classes),
        "split_sizes": store.split_sizes(),
        "split_seed": store.attrs.get("split_seed"),
        "seed": seed,
        "group": group or label,
        "hyperparameters": hyperparameters or {},
        "search": search or [],
        "fit_seconds": float(fit_seconds),
        "trainable_params": trainable_params,
        "history": history or [],
        "model_file": None,
        "command": " ".join(["python", *sys.argv]) if sys.argv else "",
        "versions": library_versions(),
        "machine": machine_info(),
    }


def new_record(*, kind: str, method: str, label: str, store, classes, val_pred, test_pred,
               test_proba=None, hyperparameters=None, search=None, fit_seconds=0.0,
               layer=None, trainable_params=None, history=None, seed=None, group=None,
               extra=None) -> dict:
    """A complete holdout run record for predictions on ``store``'s val and test splits.

    ``val_pred`` / ``test_pred`` are ``(n_val,)`` / ``(n_test,)`` predicted
    labels in store order; ``test_proba`` is ``(n_test, n_classes)`` or None.
    """
    from .metrics import evaluate  # scikit-learn: not imported by readers of records

    y_val, y_test = store.y("val"), store.y("test")
    test_paths = store.rel_paths("test")
    record = _skeleton(kind=kind, method=method, label=label, store=store, classes=classes,
                       hyperparameters=hyperparameters, search=search, fit_seconds=fit_seconds,
                       layer=layer, trainable_params=trainable_params, history=history,
                       seed=seed, group=group)
    record.update({
        "protocol": "holdout",
        "split_fingerprint": split_fingerprint(test_paths),
        "metrics": {"val": evaluate(y_val, val_pred, classes),
                    "test": evaluate(y_test, test_pred, classes)},
        "predictions": {
            "paths": test_paths,
            "y_true": [int(v) for v in y_test],
            "y_pred": [int(v) for v in np.asarray(test_pred)],
            "proba": (np.round(np.asarray(test_proba, dtype=float), 5).tolist()
                      if test_proba is not None else None),
        },
    })
    if extra:
        record.update(extra)
    return record


def new_cv_record(*, kind: str, method: str, label: str, store, classes, folds: list,
                  hyperparameters=None, search=None, fit_seconds=0.0, layer=None,
                  trainable_params=None, history=None, seed=None, group=None,
                  extra=None) -> dict:
    """A complete cross-validated run record from the outer ``folds`` of ``store``'s
    repeated K-fold (see :func:`pipeline.runs.protocol.cv_result`): per-fold scores
    and parameters, the corrected interval, out-of-fold predictions of every image."""
    from .protocol import cv_result, folds_fingerprint

    result = cv_result(folds, store.labels, classes, store.folds.shape[1])
    record = _skeleton(kind=kind, method=method, label=label, store=store, classes=classes,
                       hyperparameters=hyperparameters, search=search, fit_seconds=fit_seconds,
                       layer=layer, trainable_params=trainable_params, history=history,
                       seed=seed, group=group)
    record.update({"protocol": "cv", "split_fingerprint": folds_fingerprint(store),
                   "cv": result["cv"], "metrics": result["metrics"],
                   "predictions": {"paths": list(store.paths), **result["predictions"]}})
    if extra:
        record.update(extra)
    return record


def save_record(record: dict, runs_dir=DEFAULT_RUNS_DIR) -> Path:
    """Write ``<runs_dir>/<run_id>.json``; refuses to replace an existing file."""
    runs_dir = Path(runs_dir)
    runs_dir.mkdir(parents=True, exist_ok=True)
    path = runs_dir / f"{record['run_id']}.json"
    try:
        with open(path, "x", encoding="utf-8") as fh:
            json.dump(record, fh, indent=1)
    except FileExistsError:
        raise StoreError(f"run record {path} already exists; it is never overwritten") from None
    return path


def save_run(record: dict, runs_dir, model_ext: str, write_model) -> Path:
    """Save ``record`` and its model: ``write_model(path)`` writes ``<run_id>.<model_ext>``
    (atomically), and ``record["model_file"]`` names it.  Returns the record's path."""
    model_file = Path(runs_dir) / f"{record['run_id']}.{model_ext}"
    record["model_file"] = str(model_file)
    path = save_record(record, runs_dir)
    with atomic_path(model_file) as tmp:
        write_model(tmp)
    return path


def load_records(runs_dir=DEFAULT_RUNS_DIR) -> list[dict]:
    """Every run record in ``runs_dir``, oldest first; unreadable files are skipped with a note."""
    runs_dir = Path(runs_dir)
    if not runs_dir.is_dir():
        raise StoreError(
            f"no run records folder {str(runs_dir)!r}; run `python cli.py fit` or "
            f"`python cli.py baseline` first, or pass {opt('runs_dir', 'DIR')}", param="runs_dir"
        )
    records = []
    for path in sorted(runs_dir.glob("*.json")):
        try:
            with open(path, encoding="utf-8") as fh:
                rec = json.load(fh)
        except (OSError, json.JSONDecodeError) as exc:
            import logging

            logging.getLogger(__name__).warning("skipping unreadable run record %s: %s",
                                                path, exc)
            continue
        if rec.get("schema") == SCHEMA and "run_id" in rec:
            rec["_file"] = str(path)
            records.append(rec)
    records.sort(key=lambda r: (r.get("created", ""), r["run_id"]))
    return records


def find_record(ref: str, runs_dir=DEFAULT_RUNS_DIR) -> dict:
    """A record by run id, id prefix, or path to its JSON file."""
    p = Path(ref)
    if p.suffix == ".json" and p.is_file():
        with open(p, encoding="utf-8") as fh:
            rec = json.load(fh)
        rec["_file"] = str(p)
        return rec
    matches = [r for r in load_records(runs_dir) if r["run_id"].startswith(ref)]
    if len(matches) == 1:
        return matches[0]
    if not matches:
        raise StoreError(f"no run {ref!r} in {runs_dir}; list them with `ls {runs_dir}`")
    raise StoreError(f"run id {ref!r} is ambiguous in {runs_dir}: "
                     + ", ".join(r["run_id"] for r in matches[:5]))
