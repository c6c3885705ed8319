"""Run records grouped into strategies (repeats of one method), and paired tests between them.
"""

from __future__ import annotations

import math
from collections import OrderedDict

import numpy as np

from .stats import mcnemar_exact


def group_runs(records: list) -> list:
    """Runs grouped into strategies (same ``group``: repeats with different seeds), best first.

    Each group dict holds its runs, the mean and spread of their test
    accuracy, and ``rep``: the run whose accuracy is the median (the one
    used for paired tests, the confusion matrix and the mistakes).
    """
    by_group = OrderedDict()
    for r in records:
        by_group.setdefault(r.get("group") or r.get("label") or r["run_id"], []).append(r)
    groups = []
    for name, runs in by_group.items():
        accs = np.array([test_metrics(r)["accuracy"] for r in runs])
        order = np.argsort(accs, kind="stable")
        rep = runs[int(order[(len(runs) - 1) // 2])]
        groups.append({
            "name": name, "runs": runs, "rep": rep, "kind": rep.get("kind"),
            "method": rep.get("method"), "layer": rep.get("layer"),
            "backbone": rep.get("backbone"), "dataset": rep.get("dataset"),
            "accuracy": float(accs.mean()),
            "spread": float(accs.std(ddof=1)) if len(runs) > 1 else None,
            "accuracies": accs.tolist(),
            "balanced_accuracy": float(np.mean([test_metrics(r)["balanced_accuracy"]
                                                for r in runs])),
            "macro_f1": float(np.mean([test_metrics(r)["macro_f1"] for r in runs])),
        })
    def size(g):
        n = trainable_params(g["rep"])
        return math.inf if n is None else n

    groups.sort(key=lambda g: (-g["accuracy"], -g["balanced_accuracy"], size(g)))
    return groups


def _correct_by_path(record) -> dict:
    p = record.get("predictions") or {}
    return {path: t == q for path, t, q in zip(p.get("paths", []), p.get("y_true", []),
                                              p.get("y_pred", []))}


def paired_test(rec_a, rec_b):
    """Exact McNemar on the test images both runs predicted, or None if they share none."""
    a, b = _correct_by_path(rec_a), _correct_by_path(rec_b)
    shared = [p for p in a if p in b]
    if not shared or rec_a.get("split_fingerprint") != rec_b.get("split_fingerprint"):
        return None
    res = mcnemar_exact([a[p] for p in shared], [b[p] for p in shared])
    res["n"] = len(shared)
    return res


def test_metrics(record) -> dict:
    """The test-split metrics of a run record."""
    return record["metrics"]["test"]


def trainable_params(record):
    """Trainable parameters of a run (None when not counted)."""
    return record.get("trainable_params")
