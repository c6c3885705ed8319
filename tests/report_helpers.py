"""Real run records for the report tests: frozen heads, a pixel baseline, fine-tune-like runs.

Features come from the toy backbone (conftest) on a real image folder, so a
store takes about a second; the frozen heads are real scikit-learn fits
through :func:`pipeline.heads.select_and_fit`.  Runs with a per-epoch
history are built through :func:`pipeline.results.new_record` the way the
fine-tuning stage writes them.
"""

from __future__ import annotations

import numpy as np

from pipeline.extraction.job import ExtractConfig, run_extract
from pipeline.heads.persist import HEAD_EXT, save_head
from pipeline.heads.selection import predict_proba, select_and_fit
from pipeline.runs.records import RunInfo, new_record, save_record, save_run
from pipeline.store.hdf5 import FeatureStore


def make_store(data, out) -> FeatureStore:
    summary = run_extract(ExtractConfig(data=str(data) if data else None, backbone="toy",
                                        layers=("layer1", "layer2"), out=str(out),
                                        progress=False, batch_size=64))
    return FeatureStore(summary.path)


def add_frozen_runs(store, runs_dir, clfs=("logreg", "svm")) -> list:
    """One real frozen-head run per tap x classifier, its head saved as ``fit`` saves it
    (the report draws the best one's class-activation maps); returns the records."""
    records = []
    for tap in store.taps:
        X_tr, X_va, X_te = (store.X(tap, s) for s in ("train", "val", "test"))
        for clf in clfs:
            res = select_and_fit(clf, X_tr, store.y("train"), X_va, store.y("val"))
            est = res.model[-1]
            run = RunInfo(kind="frozen", method=clf, label=f"{clf} on {tap}",
                          hyperparameters=res.params, search=res.search,
                          fit_seconds=res.fit_seconds, layer=tap,
                          trainable_params=(est.coef_.size + est.intercept_.size
                                            if hasattr(est, "coef_") else None))
            record = new_record(run, store, res.val_pred, res.model.predict(X_te),
                                predict_proba(res.model, X_te))
            bundle = {"model": res.model, "classes": store.classes, "tap": tap,
                      "store_config": store.config,
                      "weights_source": store.attrs.get("weights_source")}
            save_run(record, runs_dir, HEAD_EXT, lambda file, b=bundle: save_head(b, file))
            records.append(record)
    return records


def history(epochs: int, trap: bool, groups=("head", "block6")) -> list:
    """A per-epoch history like pipeline.training writes; ``trap``: train acc runs to 100%."""
    out = []
    for e in range(1, epochs + 1):
        train_acc = min(1.0, 0.4 + 0.12 * e) if trap else 0.4 + 0.05 * e
        val_acc = 0.4 + 0.03 * e if trap else 0.38 + 0.05 * e
        out.append({"epoch": e, "train_loss": 1.5 / e, "train_accuracy": train_acc,
                    "val_loss": 1.2 / e + (0.05 * e if trap else 0.0), "val_accuracy": val_acc,
                    "lr": {g: 1e-3 * (0.1 if g != "head" else 1.0) * (1 - e / (epochs + 1))
                           for g in groups},
                    "seconds": 1.0})
    return out


def add_history_runs(store, runs_dir, seeds=(0, 1, 2)) -> list:
    """A three-seed 'fine-tune' group (one with the training-accuracy trap) and a scratch CNN."""
    y_val, y_test = store.y("val"), store.y("test")
    k = len(store.classes)
    records = []
    for seed in seeds:
        rng = np.random.default_rng(seed)
        # Right on about 80% of the images, wrong (next class) on the rest.
        wrong = rng.random(len(y_test)) < 0.2
        test_pred = np.where(wrong, (y_test + 1) % k, y_test)
        proba = np.full((len(y_test), k), 0.05)
        proba[np.arange(len(y_test)), test_pred] = 1 - 0.05 * (k - 1)
        run = RunInfo(
            kind="finetune", method="finetune-top", label=f"fine-tune from layer2 (seed {seed})",
            hyperparameters={"lr": 1e-3, "epochs": 6, "seed": seed},
            fit_seconds=30.0 + seed, layer="layer2", trainable_params=12345,
            history=history(6, trap=(seed == 0)), seed=seed, group="fine-tune from layer2",
            extra={"finetune": {"best_epoch": 4}})
        record = new_record(run, store, y_val, test_pred, proba)
        save_record(record, runs_dir)
        records.append(record)
    cnn = new_record(RunInfo(
        kind="baseline", method="cnn", label="scratch CNN 64px",
        hyperparameters={"size": 64, "best_epoch": 3}, fit_seconds=12.0, trainable_params=9999,
        history=history(5, trap=False, groups=("all",)), seed=0), store, (y_val + 1) % k,
        (y_test + 1) % k)
    save_record(cnn, runs_dir)
    records.append(cnn)
    return records


def add_pixel_run(store, runs_dir):
    from pipeline.configs import BaselineConfig
    from pipeline.workflows.baseline import run_baseline

    record, _ = run_baseline(BaselineConfig(kind="pixels", features=store.path,
                                            protocol="holdout", options={"size": 8}), runs_dir)
    return record


def make_study(root):
    """The bundled flowers with toy features: 6 frozen runs, 3 seeds of a fine-tune and a
    CNN with histories, a pixel run.  Returns ``(store, runs_dir)``."""
    store = make_store(None, root / "features")
    runs = root / "runs"
    add_frozen_runs(store, runs)
    add_history_runs(store, runs)
    add_pixel_run(store, runs)
    return store, runs


def add_explore_record(store, runs_dir, cache_dir=None) -> dict:
    """A real, small transfer-explorer grid on ``store``'s split: resnet18 with random
    weights at 32 px (a test of the machinery, not a result), 3 depths x 2 sizes x 2 rates,
    one epoch each."""
    from pipeline.workflows.explore import ExploreConfig, run_explore

    cfg = ExploreConfig(features=str(store.path), depths=("0", "1", "all"), sizes=("4", "all"),
                        lrs=(1e-2, 3e-2), epochs=1, views=2, backbone="resnet18",
                        weights="none", extra={"input_size": 32, "batch_size": 16})
    return run_explore(cfg, runs_dir, cache_dir)[0]
