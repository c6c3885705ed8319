"""``demo``: the whole chain on the bundled flowers subset.
"""

from __future__ import annotations

import time
from pathlib import Path

from ..runs.groups import score
from ..runs.protocol import resolve_protocol
from ..store.hdf5 import FeatureStore
from .fit import DEFAULT_FEATURES_DIR, run_fit

#: Maximum epochs of the scratch CNN in a cross-validated demo (its default is 30).
DEMO_CV_CNN_EPOCHS = 8

#: The demo's fine-tuning run: the top block group (efficientnet_lite0's conv_head) and a
#: new classifier on the cached trunk, so its 15 cv folds take seconds.
DEMO_FINETUNE = {"unfreeze": "head", "lr": 1e-3, "lr_factor": 1.0, "epochs": 6,
                 "label": "fine-tune top group"}

#: The demo's transfer-explorer grid (the full default grid is `python cli.py explore`).
DEMO_EXPLORE = {"depths": ("0", "1", "2", "all"), "sizes": ("5", "all"), "lrs": (1e-3, 3e-3),
                "epochs": 3}


def run_demo(out_dir="reports/demo", features_dir=DEFAULT_FEATURES_DIR, progress=True,
             cnn_epochs: int | None = None, protocol: str = "auto",
             insight: bool = True) -> dict:
    """The whole chain on the bundled flowers subset; returns table rows and the report path.

    Extract efficientnet_lite0 layer2-4 -> logreg and svm on each tap ->
    pixel and scratch-CNN baselines -> one fine-tuning run (the top block
    group, :data:`DEMO_FINETUNE`) -> the feature hierarchy -> a small
    transfer-explorer grid (:data:`DEMO_EXPLORE`, on the store's holdout
    split) -> HTML report, all in a new timestamped folder under ``out_dir``
    (nothing is overwritten).  ``auto`` is cv on the 150 bundled photos
    (:func:`pipeline.runs.protocol.resolve_protocol`).  ``insight=False``
    stops after the baselines (no fine-tuning, hierarchy or explorer).
    """
    from ..extraction.job import ExtractConfig, run_extract
    from ..train.finetune import FinetuneConfig
    from .baseline import run_baseline
    from .explore import ExploreConfig, run_explore
    from .finetune import run_finetune
    from .hierarchy import run_hierarchy
    from .report import build_report

    t0 = time.perf_counter()
    stamp = time.strftime("%Y%m%d-%H%M%S")
    folder = Path(out_dir) / stamp
    runs_dir = folder / "runs"
    summary = run_extract(ExtractConfig(out=str(features_dir), progress=progress,
                                        layers=("layer2", "layer3", "layer4")))
    if cnn_epochs is None and resolve_protocol(protocol, FeatureStore(summary.path))[0] == "cv":
        cnn_epochs = DEMO_CV_CNN_EPOCHS  # 15 trainings + the final one: keep the demo short
    records = []
    for clf in ("logreg", "svm"):
        records += [r for r, _ in run_fit(summary.path, "all", clf, runs_dir,
                                          protocol=protocol)]
    for kind in ("pixels", "cnn"):
        opts = {"epochs": cnn_epochs} if (kind == "cnn" and cnn_epochs) else {}
        rec, _ = run_baseline(kind, summary.path, runs_dir, protocol=protocol, **opts)
        records.append(rec)
    if insight:
        cache = folder / "cache"
        rec, _ = run_finetune(FinetuneConfig(features=str(summary.path), **DEMO_FINETUNE),
                              runs_dir, cache, protocol)
        records.append(rec)
        run_hierarchy(runs_dir=runs_dir)
        run_explore(ExploreConfig(features=str(summary.path), **DEMO_EXPLORE), runs_dir, cache)
    report = build_report(runs_dir, folder / "report.html")
    return {"extract": summary, "records": records, "report": report,
            "seconds": time.perf_counter() - t0, "folder": folder}


def summary_rows(records) -> list[tuple]:
    """``(label, selected by, accuracy, low, high, fit seconds)`` best first.

    ``selected by`` is what ranks the rows and never a test figure: the
    validation accuracy (holdout) or the cross-validated mean (cv);
    ``accuracy`` with its 95% interval is the test accuracy (holdout, Wilson)
    or the cross-validated mean (cv, corrected resampled t).
    """
    rows = []
    for r in records:
        sc = score(r)
        rows.append((r["label"], sc["select"], sc["value"], sc["low"], sc["high"],
                     r["fit_seconds"]))
    return sorted(rows, key=lambda row: -row[1])
