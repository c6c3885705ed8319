"""``demo``: the whole chain on the bundled flowers subset.
"""

from __future__ import annotations

import time
from pathlib import Path

from .fit import DEFAULT_FEATURES_DIR, run_fit


def run_demo(out_dir="reports/demo", features_dir=DEFAULT_FEATURES_DIR, progress=True,
             cnn_epochs: int | None = None) -> dict:
    """The whole chain on the bundled flowers subset; returns table rows and the report path.

    Extract efficientnet_lite0 layer2-4 -> logreg and svm on each tap ->
    pixel and scratch-CNN baselines -> HTML report, all in a new
    timestamped folder under ``out_dir`` (nothing is overwritten).
    """
    from ..extraction.job import ExtractConfig, run_extract
    from .baseline import run_baseline
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
