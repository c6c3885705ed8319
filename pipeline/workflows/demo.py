"""``demo``: the whole chain on the bundled flowers subset.
"""

from __future__ import annotations

import time
from pathlib import Path

from ..runs.groups import (
    collapse_of,
    majority_reference,
    resolve_report_metric,
    score,
    test_metrics,
)
from ..runs.protocol import resolve_protocol
from ..runs.records import as_record
from ..store.hdf5 import FeatureStore
from .fit import DEFAULT_FEATURES_DIR, run_fit

#: Maximum epochs of the scratch CNN in a cross-validated demo (its default is 30).
DEMO_CV_CNN_EPOCHS = 8

#: The demo's fine-tuning run: the top block group (efficientnet_lite0's conv_head) and a
#: new classifier on the cached trunk, so its 15 cv folds take seconds.
DEMO_FINETUNE = {"unfreeze": "head", "lr": 1e-3, "lr_factor": 1.0, "epochs": 6,
                 "label": "fine-tune top group"}

#: The demo's transfer-explorer grid (the full default grid is the `explore` command's):
#: every depth, end to end included, at 5 and all training images per class, at one rate
#: (3e-3, the better of 1e-3 and 3e-3 on validation for most depths in three epochs);
#: a second rate doubled the demo's dearest section (the end-to-end cells, 47 s of 67 s).
DEMO_EXPLORE = {"depths": ("0", "1", "2", "all"), "sizes": ("5", "all"), "lrs": (3e-3,),
                "epochs": 3}


def run_demo(out_dir="reports/demo", features_dir=DEFAULT_FEATURES_DIR, progress=True,
             cnn_epochs: int | None = None, protocol: str = "auto",
             insight: bool = True, metric: str = "auto", class_weight: str = "auto") -> dict:
    """The whole chain on the bundled flowers subset; returns table rows and the report path.

    Extract efficientnet_lite0 layer2-4 -> logreg and svm on each tap ->
    pixel and scratch-CNN baselines -> one fine-tuning run (the top block
    group, :data:`DEMO_FINETUNE`) -> the feature hierarchy -> a small
    transfer-explorer grid (:data:`DEMO_EXPLORE`, on the store's holdout
    split) -> HTML report, all in a new timestamped folder under ``out_dir``
    (nothing is overwritten).  ``auto`` is cv on the 150 bundled photos
    (:func:`pipeline.runs.protocol.resolve_protocol`).  ``insight=False``
    stops after the baselines (no fine-tuning, hierarchy or explorer).
    ``metric`` and ``class_weight`` as for ``fit`` (``auto``: by the class balance;
    the bundled flowers are balanced: accuracy, no weights).
    """
    from ..configs import BaselineConfig, ExploreConfig, ExtractConfig, FinetuneConfig, FitConfig
    from ..extraction.job import run_extract
    from ..train.trunk_cache import TrunkCache
    from .baseline import run_baseline
    from .explore import run_explore
    from .finetune import run_finetune
    from .hierarchy import run_hierarchy
    from .report import build_report

    t0 = time.perf_counter()
    stamp = time.strftime("%Y%m%d-%H%M%S")
    folder = Path(out_dir) / stamp
    runs_dir = folder / "runs"
    summary = run_extract(ExtractConfig(out=str(features_dir), progress=progress,
                                        layers=("layer2", "layer3", "layer4")))
    if cnn_epochs is None:  # under cv, 15 trainings + the final one: keep the demo short
        cnn_epochs = resolve_protocol(protocol, FeatureStore(summary.path)).pick(
            holdout=None, cv=DEMO_CV_CNN_EPOCHS)
    records = []
    judged = {"features": str(summary.path), "protocol": protocol, "metric": metric,
              "class_weight": class_weight}
    for clf in ("logreg", "svm"):
        records += [r for r, _ in run_fit(FitConfig(layer="all", clf=clf, **judged),
                                          runs_dir)]
    for kind in ("pixels", "cnn"):
        epochs = cnn_epochs if kind == "cnn" else None
        rec, _ = run_baseline(BaselineConfig(kind=kind, epochs=epochs, **judged), runs_dir)
        records.append(rec)
    if insight:
        cache = TrunkCache(folder / "cache")   # the fine-tuning run's and the grid's
        rec, _ = run_finetune(FinetuneConfig(**DEMO_FINETUNE, **judged), runs_dir, cache)
        records.append(rec)
        run_hierarchy(runs_dir=runs_dir)
        run_explore(ExploreConfig(features=str(summary.path), **DEMO_EXPLORE), runs_dir, cache)
    report = build_report(runs_dir, folder / "report.html")
    return {"extract": summary, "records": records, "report": report,
            "seconds": time.perf_counter() - t0, "folder": folder}


def summary_rows(records, metric: str | None = None) -> list[dict]:
    """One row per run, best first, then the majority-class reference.

    Rows: ``label, metric, select, value, low, high, accuracy, balanced_accuracy,
    macro_f1, seconds, collapsed`` (text, or None), ``reference`` (the last row).
    ``metric`` is the selection metric (default: resolved from the records as the
    report does); ``select`` ranks the rows and is never a test figure: the
    validation score (holdout) or the cross-validated mean (cv); ``value`` with
    its 95% interval is the test figure (holdout) or the cross-validated mean (cv).
    A run that answers one class (``collapsed``) is ranked after every run that
    learned.  The other metrics are the scored predictions' (test or out-of-fold).
    """
    records = [as_record(r) for r in records]
    metric = metric or resolve_report_metric(records)[0]
    rows = []
    for r in records:
        sc, scored, collapsed = score(r, metric), test_metrics(r), collapse_of(r)
        rows.append({"label": r.label, "metric": metric, "select": sc["select"],
                     "value": sc["value"], "low": sc["low"], "high": sc["high"],
                     "accuracy": scored["accuracy"],
                     "balanced_accuracy": scored["balanced_accuracy"],
                     "macro_f1": scored["macro_f1"], "seconds": r.fit_seconds,
                     "collapsed": collapsed["text"] if collapsed else None,
                     "reference": False})
    rows.sort(key=lambda row: (row["collapsed"] is not None, -row["select"]))
    ref = majority_reference(records[0], metric) if records else None
    if ref:
        rows.append({"label": ref["name"], "metric": metric, "select": None,
                     "value": ref["value"], "low": ref["low"], "high": ref["high"],
                     "accuracy": ref["accuracy"], "balanced_accuracy": ref["balanced_accuracy"],
                     "macro_f1": ref["macro_f1"], "seconds": 0.0, "collapsed": None,
                     "reference": True})
    return rows
