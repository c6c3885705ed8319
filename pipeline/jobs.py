"""Jobs the CLI runs that join several stages: ``fit``, ``predict`` and ``demo``.

Each job takes plain arguments, reads what the stage before it wrote (a
feature store, a run record) and writes its own output (run records, fitted
heads, a predictions CSV, a report).  Nothing here parses command lines.
"""

from __future__ import annotations

import csv
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import joblib
import numpy as np

from .errors import StoreError, UsageError
from .heads import CLASSIFIERS, STREAMING, predict_proba, select_and_fit
from .results import DEFAULT_RUNS_DIR, find_record, new_record, save_record
from .store import FeatureStore

log = logging.getLogger(__name__)

DEFAULT_FEATURES_DIR = Path("features")


def find_store(features=None, features_dir=DEFAULT_FEATURES_DIR) -> Path:
    """``features`` if given, else the most recently written store in ``features_dir``."""
    if features:
        return Path(features)
    candidates = sorted(Path(features_dir).glob("*.h5"), key=lambda p: p.stat().st_mtime)
    if not candidates:
        raise StoreError(
            f"no feature store in {str(features_dir)!r}; run `python cli.py extract` first "
            "or pass --features FILE"
        )
    log.info("using the newest feature store %s", candidates[-1])
    return candidates[-1]


def run_fit(features, layer: str, clf: str, runs_dir=DEFAULT_RUNS_DIR, seed: int = 0,
            group_suffix: str = "") -> list[tuple[dict, Path]]:
    """Fit head ``clf`` on tap ``layer`` (or every tap, ``layer='all'``) of a store.

    For each tap: standardise, choose the hyperparameter on the validation
    split, refit on train+val, score on test; write one run record and the
    fitted head (``<run_id>.joblib``) under ``runs_dir``.
    """
    if clf not in CLASSIFIERS:
        raise UsageError(f"unknown classifier {clf!r}; valid: {', '.join(CLASSIFIERS)}")
    store = FeatureStore(find_store(features))
    layers = store.taps if layer == "all" else [layer]
    out = []
    for tap in layers:
        if clf in STREAMING:  # reads the store block by block, never a whole tap
            from .streaming import stream_select_and_fit

            res, test_pred, proba = stream_select_and_fit(store, tap, seed=seed)
        else:
            X_tr, y_tr = store.X(tap, "train"), store.y("train")
            X_va, y_va = store.X(tap, "val"), store.y("val")
            X_te = store.X(tap, "test")
            res = select_and_fit(clf, X_tr, y_tr, X_va, y_va, seed=seed)
            proba = predict_proba(res.model, X_te)
            test_pred = res.model.predict(X_te)
        backbone = store.attrs.get("backbone")
        record = new_record(
            kind="frozen", method=clf, label=f"{backbone} {tap} + {clf}", store=store,
            classes=store.classes, val_pred=res.val_pred, test_pred=test_pred,
            test_proba=proba, hyperparameters=res.params, search=res.search,
            fit_seconds=res.fit_seconds, layer=tap, seed=seed,
            trainable_params=_n_params(res.model),
        )
        model_file = Path(runs_dir) / f"{record['run_id']}.joblib"
        record["model_file"] = str(model_file)
        path = save_record(record, runs_dir)
        joblib.dump({
            "model": res.model, "classes": store.classes, "tap": tap,
            "store_config": store.config, "weights_source": store.attrs.get("weights_source"),
            "features_fingerprint": store.fingerprint,
        }, model_file)
        log.info("%s: val %.4f test %.4f (%s)", record["label"],
                 record["metrics"]["val"]["accuracy"], record["metrics"]["test"]["accuracy"],
                 res.params)
        out.append((record, path))
    return out


def _n_params(model) -> int | None:
    """Number of fitted parameters of a linear head (coef + intercept), else None."""
    est = model[-1]
    if hasattr(est, "coef_"):
        return int(est.coef_.size + np.size(getattr(est, "intercept_", 0)))
    return None


# ------------------------------------------------------------------ predict


@dataclass
class Prediction:
    path: str
    label: str
    probability: float
    top: list        # [(label, probability)] best first
    error: str = ""


def run_predict(model_ref: str, inputs, runs_dir=DEFAULT_RUNS_DIR, out_csv=None,
                batch_size: int = 32, device: str = "auto", top_k: int = 3,
                overwrite: bool = False) -> list[Prediction]:
    """Label images with a fitted head, extracting features exactly as it was trained.

    ``model_ref`` is a run id (or prefix), a run record JSON or a ``.joblib``
    head; ``inputs`` are image files and/or folders (searched recursively).
    """
    from .data import IMAGE_EXTENSIONS

    bundle = _load_head(model_ref, runs_dir)
    files = []
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            files += sorted(f for f in p.rglob("*") if f.suffix.lower() in IMAGE_EXTENSIONS
                            and not any(part.startswith(".") for part in f.parts))
        elif p.is_file():
            files.append(p)
        else:
            raise UsageError(f"{item!r} is neither an image file nor a folder")
    if not files:
        raise UsageError("no images to predict: pass image files or folders")
    if out_csv and Path(out_csv).exists() and not overwrite:
        raise StoreError(f"{out_csv} exists; pass --overwrite or another --out")
    feats, errors = _extract_files(bundle, files, batch_size, device)
    classes = bundle["classes"]
    preds = []
    ok = [i for i in range(len(files)) if i not in errors]
    proba = predict_proba(bundle["model"], feats) if ok else np.zeros((0, len(classes)))
    k = 0
    for i, f in enumerate(files):
        if i in errors:
            preds.append(Prediction(str(f), "", float("nan"), [], errors[i]))
            continue
        p = proba[k]
        k += 1
        order = np.argsort(-p)[:top_k]
        preds.append(Prediction(str(f), classes[order[0]], float(p[order[0]]),
                                [(classes[j], float(p[j])) for j in order]))
    if out_csv:
        Path(out_csv).parent.mkdir(parents=True, exist_ok=True)
        with open(out_csv, "w", newline="", encoding="utf-8") as fh:
            w = csv.writer(fh)
            w.writerow(["path", "label", "probability", "top_k", "error"])
            for p in preds:
                w.writerow([p.path, p.label, f"{p.probability:.6f}",
                            ";".join(f"{c}:{q:.4f}" for c, q in p.top), p.error])
    return preds


def _load_head(model_ref: str, runs_dir) -> dict:
    p = Path(model_ref)
    if p.suffix == ".joblib":
        if not p.is_file():
            raise StoreError(f"no fitted head at {p}")
        return joblib.load(p)
    record = find_record(model_ref, runs_dir)
    if record.get("kind") != "frozen" or not record.get("model_file"):
        raise UsageError(
            f"run {record['run_id']} ({record.get('method')}) is not a frozen-feature head; "
            "predict takes runs written by `python cli.py fit`")
    model_file = Path(record["model_file"])
    if not model_file.is_file():
        model_file = Path(record["_file"]).with_suffix(".joblib")
    if not model_file.is_file():
        raise StoreError(f"the fitted head of run {record['run_id']} is missing ({model_file})")
    return joblib.load(model_file)


def _extract_files(bundle, files, batch_size, device):
    """Features of ``files`` at the head's tap with the store's backbone, weights and pooling.

    Decodes and runs batches through the same dataset and batch loop as
    ``extract`` (:mod:`pipeline.extract`); returns ``(X, {file index: reason})``.
    """
    from .backbones import load_backbone
    from .extract import BatchLoader, ImageDataset, build_extractor, iter_features, resolve_device

    cfg = bundle["store_config"]
    source = bundle.get("weights_source") or "imagenet"
    loaded = load_backbone(cfg["backbone"], source)
    if loaded.weights_id != cfg["weights"]:
        raise StoreError(
            f"the head was trained on features from weights {cfg['weights']} but "
            f"{source!r} now gives {loaded.weights_id}; restore those weights")
    dev = resolve_device(device)
    tap = bundle["tap"]
    extractor = build_extractor(loaded, [tap], cfg["pooling"]).to(dev)
    dataset = ImageDataset(Path("."), [str(f) for f in files], range(len(files)),
                           loaded.spec.preprocessing, hash_files=False)
    loader = BatchLoader(dataset, batch_size, workers=0)
    feats, errors = [], {}
    for res in iter_features(extractor, loader, dev, [tap]):
        for index, _sha, reason in res.failures:
            errors[index] = reason
            log.warning("skipped %s: %s", files[index], reason)
        if res.indices:
            feats.append(res.features[tap])
    X = np.concatenate(feats) if feats else np.zeros((0, 1), dtype=np.float32)
    return X, errors


# ------------------------------------------------------------------ demo


def run_demo(out_dir="reports/demo", features_dir=DEFAULT_FEATURES_DIR, progress=True,
             cnn_epochs: int | None = None) -> dict:
    """The whole chain on the bundled flowers subset; returns table rows and the report path.

    Extract efficientnet_lite0 layer2-4 -> logreg and svm on each tap ->
    pixel and scratch-CNN baselines -> HTML report, all in a new
    timestamped folder under ``out_dir`` (nothing is overwritten).
    """
    from .baselines import run_baseline
    from .extraction_job import ExtractConfig, run_extract
    from .report import build_report

    t0 = time.perf_counter()
    stamp = time.strftime("%Y%m%d-%H%M%S")
    folder = Path(out_dir) / stamp
    runs_dir = folder / "runs"
    summary = run_extract(ExtractConfig(out=str(features_dir), progress=progress,
                                        layers=("layer2", "layer3", "layer4")))
    records = []
    for clf in ("logreg", "svm"):
        records += [r for r, _ in run_fit(summary.path, "all", clf, runs_dir)]
    for kind in ("pixels", "cnn"):
        opts = {"epochs": cnn_epochs} if (kind == "cnn" and cnn_epochs) else {}
        rec, _ = run_baseline(kind, summary.path, runs_dir, **opts)
        records.append(rec)
    report = build_report(runs_dir, folder / "report.html")
    return {"extract": summary, "records": records, "report": report,
            "seconds": time.perf_counter() - t0, "folder": folder}


def summary_rows(records) -> list[tuple]:
    """(label, val accuracy, test accuracy, fit seconds) sorted by test accuracy."""
    rows = [(r["label"], r["metrics"]["val"]["accuracy"], r["metrics"]["test"]["accuracy"],
             r["fit_seconds"]) for r in records]
    return sorted(rows, key=lambda row: -row[2])
