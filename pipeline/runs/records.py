"""Run records: one JSON file per fit, baseline or fine-tune run.

A run record is the only thing the report reads.  :func:`new_record` builds
the common skeleton (identity, provenance, split, scores, predictions on the
test images); :func:`save_record` writes it under ``reports/runs/`` without
ever overwriting; :func:`load_records` reads a folder of them back.

Schema (``schema: 1``; README "Run records" documents every field):
``run_id, created, kind (frozen|baseline|finetune), method, label, backbone,
layer, weights, features {path (absolute since this version), fingerprint}, data_root, classes,
split_sizes, split_seed, split {seed, groups, fractions, source, test_given, n_groups, sizes,
notes, stored}, split_fingerprint, seed, group, hyperparameters, search,
metrics {val, test}, predictions {paths, y_true, y_pred, proba},
fit_seconds, trainable_params, history, model_file, command, versions,
machine``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import platform
import secrets
import sys
import time
from pathlib import Path

import numpy as np

from ..errors import StoreError, opt
from ..files import atomic_path, atomic_write

log = logging.getLogger(__name__)

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


def _store_cost(store) -> dict | None:
    """The store's per-tap parameters and GFLOPs (``attrs["cost"]``), None without them."""
    import json

    cost = store.attrs.get("cost")
    if isinstance(cost, str):
        try:
            cost = json.loads(cost)
        except ValueError:
            return None
    return cost if isinstance(cost, dict) and cost else None


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
        # Absolute, so the report finds the store whatever folder it runs in; the
        # fingerprint tells it whether the file there is still this store.
        "features": {"path": str(Path(store.path).resolve()), "fingerprint": store.fingerprint,
                     "backbone": store.attrs.get("backbone"),
                     "images_per_second": store.attrs.get("images_per_second"),
                     "cost": _store_cost(store)},
        "data_root": str(store.data_root),
        "dataset": store.attrs.get("dataset"),
        "layout": store.attrs.get("layout", "classes"),
        "classes": list(classes),
        "split_sizes": store.split_sizes(),
        "split_seed": store.split_info.get("seed"),
        # how the split was made: seed, group rule and groups, given by the data or drawn
        "split": {**store.split_info, "class_sizes": store.split_class_counts()},
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
                   "predictions": {"paths": [store.paths[i] for i in result["rows"]],
                                   **result["predictions"]}})
    if extra:
        record.update(extra)
    return record


def save_record(record: dict, runs_dir=DEFAULT_RUNS_DIR) -> Path:
    """Write ``<runs_dir>/<run_id>.json`` whole or not at all (a killed run never leaves
    half a record); refuses to replace an existing file."""
    runs_dir = Path(runs_dir)
    runs_dir.mkdir(parents=True, exist_ok=True)
    path = runs_dir / f"{record['run_id']}.json"
    try:
        with atomic_write(path, "w", encoding="utf-8", exclusive=True) as fh:
            json.dump(record, fh, indent=1)
    except FileExistsError:
        raise StoreError(f"run record {path} already exists; it is never overwritten") from None
    return path


def save_run(record: dict, runs_dir, model_ext: str, write_model) -> Path:
    """Save ``record`` and its model: ``write_model(path)`` writes ``<run_id>.<model_ext>``
    (atomically), and ``record["model_file"]`` names it.  Returns the record's path.

    The model is written first: a run killed in between leaves an unnamed model
    file, never a record whose model is missing."""
    model_file = Path(runs_dir).resolve() / f"{record['run_id']}.{model_ext}"
    record["model_file"] = str(model_file)
    model_file.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(model_file) as tmp:
        write_model(tmp)
    return save_record(record, runs_dir)


#: What the report reads of every record with ``[]`` (the rest have defaults); a record
#: without one of them, whatever its schema, is skipped with a warning.
REQUIRED_FIELDS = ("run_id", "kind", "metrics", "predictions")
#: ... of the metrics of its scored predictions (``metrics.test``; cv: ``metrics.oof``).
REQUIRED_METRICS = ("accuracy", "n", "balanced_accuracy", "macro_f1", "per_class",
                    "confusion_matrix")
#: ... of the ``cv`` block of a cross-validated record.
REQUIRED_CV = ("mean", "ci", "fold_scores")

_FIX = "move it out of the runs folder, or restore it from a backup, to silence this"


def record_problem(rec: dict) -> str | None:
    """What ``rec`` (a parsed record) lacks for the report, or None when it has it all."""
    missing = [k for k in REQUIRED_FIELDS if k not in rec]
    if not isinstance(rec.get("run_id", ""), str):
        missing.append("run_id (a string)")
    cv = rec.get("protocol") == "cv"
    scored = "oof" if cv else "test"
    metrics = rec.get("metrics")
    if "metrics" in rec:
        if not isinstance(metrics, dict) or not isinstance(metrics.get(scored), dict):
            missing.append(f"metrics.{scored}")
        else:
            missing += [f"metrics.{scored}.{k}" for k in REQUIRED_METRICS
                        if k not in metrics[scored]]
    if cv:
        block = rec.get("cv")
        missing += ["cv"] if not isinstance(block, dict) else [
            f"cv.{k}" for k in REQUIRED_CV if k not in block]
    return "fields missing: " + ", ".join(missing) if missing else None


def store_candidates(record: dict, runs_dir=None) -> list[Path]:
    """Where the feature store ``record`` names may be, in the order to try.

    Its path when absolute (records of this version); a relative one (older
    records, relative to where ``fit`` ran) against the current folder, then
    against the parent and the grandparent of ``runs_dir`` (``reports/runs`` beside
    ``features/``).  Empty when the record names no store.
    """
    path = (record.get("features") or {}).get("path")
    if not path:
        return []
    path = Path(path)
    if path.is_absolute():
        return [path]
    out = [Path.cwd() / path]
    if runs_dir is not None:
        runs = Path(runs_dir).resolve()
        out += [runs.parent / path, runs.parent.parent / path]
    return list(dict.fromkeys(p.resolve() for p in out))


def read_record(path) -> dict:
    """The run record in the JSON file ``path``, with ``_file`` set to it.

    Raises :class:`StoreError` naming the file and what is wrong with it (unreadable,
    not UTF-8, not JSON, or JSON but not an object); fields are not checked here
    (:func:`record_problem`).
    """
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise StoreError(f"run record {path} is unreadable: {exc.strerror or exc}") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise StoreError(f"run record {path} is not UTF-8 text (byte {exc.start} is "
                         f"0x{raw[exc.start]:02x}); it was not written by this tool") from None
    try:
        rec = json.loads(text)
    except json.JSONDecodeError as exc:
        raise StoreError(f"run record {path} is not valid JSON ({exc.msg} at line "
                         f"{exc.lineno}, column {exc.colno}): truncated or edited?") from None
    if not isinstance(rec, dict):
        raise StoreError(f"run record {path} is not a run record: it holds a JSON "
                         f"{type(rec).__name__.replace('list', 'array')}, not an object")
    rec["_file"] = str(path)
    return rec


def _runs_folder(runs_dir) -> Path:
    runs_dir = Path(runs_dir)
    if not runs_dir.is_dir():
        raise StoreError(
            f"no run records folder {str(runs_dir)!r}; run `python cli.py fit` or "
            f"`python cli.py baseline` first, or pass {opt('runs_dir', 'DIR')}", param="runs_dir"
        )
    return runs_dir


def _scan(runs_dir) -> tuple[list, list]:
    """``(records, bad)``: every ``*.json`` of ``runs_dir`` parsed (:func:`read_record`),
    and ``[(path, StoreError)]`` of the files that could not be."""
    records, bad = [], []
    for path in sorted(_runs_folder(runs_dir).glob("*.json")):
        try:
            records.append(read_record(path))
        except StoreError as exc:
            bad.append((path, exc))
    return records, bad


def _schema_note(rec: dict) -> str | None:
    """None for a record of this schema, else how it differs."""
    schema = rec.get("schema")
    if schema == SCHEMA:
        return None
    return (f"schema {schema}" if schema is not None else "no schema field") \
        + f" (this version writes schema {SCHEMA})"


def load_records(runs_dir=DEFAULT_RUNS_DIR) -> list[dict]:
    """Every run record in ``runs_dir``, oldest first (by ``created``).

    A file that cannot be a record (unreadable, not UTF-8, not JSON, not an
    object, or without a field the report needs: :func:`record_problem`) is
    skipped with a warning naming it; a record of another schema version is
    read, with a warning, when it has every needed field.
    """
    parsed, bad = _scan(runs_dir)
    for _path, exc in bad:
        log.warning("%s; skipping it (%s)", exc, _FIX)
    records = []
    for rec in parsed:
        problem, schema = record_problem(rec), _schema_note(rec)
        if problem:
            log.warning("skipping run record %s%s: %s (%s)", rec["_file"],
                        f" ({schema})" if schema else "", problem, _FIX)
            continue
        if schema:
            log.warning("run record %s has %s; reading it, as it has every field the "
                        "report needs", rec["_file"], schema)
        records.append(rec)
    records.sort(key=lambda r: (r.get("created", ""), r["run_id"]))
    return records


def find_record(ref: str, runs_dir=DEFAULT_RUNS_DIR) -> dict:
    """A record by run id, id prefix, or path to its JSON file.

    A bad file among the others is ignored (logged at debug level); when the
    record asked for is the bad one, :class:`StoreError` says which file and why.
    """
    p = Path(ref)
    if p.suffix == ".json" and p.is_file():
        return _checked(read_record(p))
    parsed, bad = _scan(runs_dir)
    for rec in parsed:
        if not isinstance(rec.get("run_id"), str):
            bad.append((Path(rec["_file"]), StoreError(
                f"run record {rec['_file']} is not a run record: it has no run_id")))
    parsed = [r for r in parsed if isinstance(r.get("run_id"), str)]
    exact = [r for r in parsed if r["run_id"] == ref]
    if len(exact) == 1:
        return _checked(exact[0])
    matches = [r for r in parsed if r["run_id"].startswith(ref)]
    bad_matches = [(path, exc) for path, exc in bad if path.stem.startswith(ref)]
    for path, exc in bad:
        if (path, exc) not in bad_matches:
            log.debug("ignoring %s", exc)
    if len(matches) == 1 and not bad_matches:
        return _checked(matches[0])
    if not matches and len(bad_matches) == 1:
        raise StoreError(f"{bad_matches[0][1]}; restore it from a backup or fit the run again")
    if not matches and not bad_matches:
        raise StoreError(f"no run {ref!r} in {runs_dir}; list them with `ls {runs_dir}`")
    raise StoreError(f"run id {ref!r} is ambiguous in {runs_dir}: "
                     + ", ".join([r["run_id"] for r in matches[:5]]
                                 + [f"{path.name} (unreadable)" for path, _ in bad_matches[:5]]))


def _checked(rec: dict) -> dict:
    """``rec`` if it names its run; a warning when its schema differs from this version's."""
    if not isinstance(rec.get("run_id"), str):
        raise StoreError(f"run record {rec['_file']} is not a run record: it has no run_id")
    schema = _schema_note(rec)
    if schema:
        log.warning("run record %s has %s; reading it as this one", rec["_file"], schema)
    return rec


def side_records(folder, pattern: str, kind: str, schema: int) -> list[dict]:
    """The readable records of ``kind`` and ``schema`` among ``folder/pattern`` (a
    command's own records beside the runs: hierarchy, explore), newest file name first;
    any other file is skipped with a warning naming it."""
    found = []
    for path in sorted(Path(folder).glob(pattern), reverse=True):
        try:
            record = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            log.warning("%s record %s skipped: %s", kind, path, exc)
            continue
        if isinstance(record, dict) and record.get("kind") == kind \
                and record.get("schema") == schema:
            found.append(record)
        else:
            log.warning("%s record %s skipped: not a schema-%d %s record", kind, path, schema,
                        kind)
    return found
