"""``fit``: heads on a store's cached features -> run records and saved heads.
"""

from __future__ import annotations

import logging
from pathlib import Path

import joblib
import numpy as np

from ..errors import StoreError, UsageError, opt
from ..heads.selection import predict_proba, select_and_fit
from ..options import CLASSIFIERS, STREAMING
from ..runs.records import DEFAULT_RUNS_DIR, new_record, save_run
from ..store.hdf5 import FeatureStore

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
            f"or pass {opt('features', 'FILE')}", param="features"
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
            from ..heads.streaming import stream_select_and_fit

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
        bundle = {"model": res.model, "classes": store.classes, "tap": tap,
                  "store_config": store.config,
                  "weights_source": store.attrs.get("weights_source"),
                  "features_fingerprint": store.fingerprint}
        path = save_run(record, runs_dir, "joblib",
                        lambda file, bundle=bundle: joblib.dump(bundle, file))
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
