"""The transfer-explorer section: the newest ``explore`` record as an interactive chart.

The record (:mod:`pipeline.workflows.explore`) holds every cell's validation
and test accuracy, Wilson interval, per-image test correctness and training
time.  This module picks, for each training size, the learning rate of each
depth on validation, names the depth that validation prefers, and says with
an exact McNemar test on the same test images whether its gap to the
classifier alone is more than noise.  The chart itself is a small script in
the page over the cells as JSON (no library, nothing fetched).
"""

from __future__ import annotations

from ..errors import program
from ..runs.stats import holm, mcnemar_exact
from ..runs.values import seconds_or_zero

#: Below this p-value (Holm-adjusted over the sizes) a gap is called real.
ALPHA = 0.05


def _size_label(size) -> str:
    return "all" if size is None else str(size)


def best_by_validation(cells: list) -> dict | None:
    """The cell with the highest validation accuracy (ties: fewer trainable parameters,
    then the lower rate); never looks at test figures."""
    if not cells:
        return None
    return max(cells, key=lambda c: (c["val_accuracy"], -c["trainable_params"], -c["lr"]))


def _correct(cell) -> list:
    return [ch == "1" for ch in cell["test_correct"]]


def size_verdicts(record: dict) -> list:
    """One row per training size: the depth validation prefers (each depth at its
    validation-chosen rate), its test accuracy and time, and the McNemar test of it
    against the classifier alone (when both ran and differ)."""
    cells, rows = record["cells"], []
    depths = record["grid"]["depths"]
    for size in record["grid"]["sizes"]:
        here = [c for c in cells if c["per_class"] == size]
        per_depth = {d: best_by_validation([c for c in here if c["depth"] == d]) for d in depths}
        per_depth = {d: c for d, c in per_depth.items() if c is not None}
        best = best_by_validation(list(per_depth.values()))
        if best is None:
            continue
        base = per_depth.get("0")
        test = None
        if base is not None and base is not best:
            test = mcnemar_exact(_correct(best), _correct(base))
        rows.append({"size": _size_label(size), "n_train": best["n_train"], "best": best,
                     "base": base, "test": test, "per_depth": per_depth})
    adjusted = holm([r["test"]["p_value"] for r in rows if r["test"]])
    for r in [r for r in rows if r["test"]]:
        r["p_holm"] = adjusted.pop(0)
        r["real"] = r["p_holm"] < ALPHA
    return rows


def explore_section(record: dict | None) -> dict:
    """The section's context: ``{"note"}`` without a record, else the chart's data
    (``data``, rendered as JSON for the page's script), the verdict rows and the table."""
    if not record or not record.get("cells"):
        return {"note": f"No transfer-explorer record yet: `{program()} explore` trains a grid "
                "of unfreeze depths x training images per class x learning rates on your "
                "split and draws it here."}
    grid = record["grid"]
    prefill = seconds_or_zero(record.get("trunk_cache_seconds"))
    labels = {}
    for c in record["cells"]:
        labels.setdefault(c["depth"], c["label"])
    depths = [d for d in grid["depths"] if d in labels]
    cells = [{k: c[k] for k in ("depth", "per_class", "lr", "val_accuracy", "test_accuracy",
                                "test_low", "test_high", "train_seconds", "trainable_params",
                                "n_train", "best_epoch", "epochs_run")}
             for c in record["cells"]]
    skipped = record.get("skipped") or []
    total = len(grid["depths"]) * len(grid["sizes"]) * len(grid["lrs"]) - len(skipped)
    data = {"depths": depths, "labels": [labels[d] for d in depths],
            "sizes": [_size_label(s) for s in grid["sizes"]], "lrs": grid["lrs"],
            "cells": [{**c, "per_class": _size_label(c["per_class"])} for c in cells]}
    return {"note": None, "record": record, "data": data, "verdicts": size_verdicts(record),
            "skipped": skipped,
            "n_cells": len(cells), "n_planned": total,
            # the trunk outputs of every depth, computed in one pass before the cells (older
            # records: by each depth's first cell, in its seconds)
            "compute_seconds": prefill + sum(c["seconds"] for c in record["cells"]),
            "cache_seconds": prefill + sum(c["cache_seconds"] for c in record["cells"]),
            "table": sorted(record["cells"], key=lambda c: (
                grid["sizes"].index(c["per_class"]) if c["per_class"] in grid["sizes"] else 0,
                depths.index(c["depth"]) if c["depth"] in depths else 0, c["lr"]))}
