"""Run records grouped into strategies (repeats of one method), and paired tests between them.

Works for both protocols: holdout records are scored on the test split and
selected by validation accuracy; cv records by their cross-validated mean.
"""

from __future__ import annotations

import logging
import math
from collections import OrderedDict

import numpy as np

from .stats import corrected_ttest, mcnemar_exact, wilson_interval

log = logging.getLogger(__name__)


def is_cv(record) -> bool:
    return record.get("protocol") == "cv"


def test_metrics(record) -> dict:
    """The metrics of a run's scored predictions: the test split (holdout) or the
    out-of-fold predictions of repeat 0 (cv)."""
    m = record["metrics"]
    return m["oof"] if is_cv(record) else m["test"]


def score(record) -> dict:
    """What a run scored and what it may be selected by.

    ``value`` with its 95% interval ``low``-``high`` (cv: the fold mean with the
    Nadeau-Bengio corrected interval; holdout: test accuracy with the Wilson
    interval) over ``n`` images; ``select`` is never a test figure: the
    cross-validated mean (cv) or the validation accuracy (holdout).
    """
    if is_cv(record):
        cv = record["cv"]
        return {"value": cv["mean"], "low": cv["ci"][0], "high": cv["ci"][1],
                "select": cv["mean"], "select_balanced": test_metrics(record)["balanced_accuracy"],
                "n": len(record["predictions"]["y_true"]), "folds": len(cv["fold_scores"])}
    m, val = record["metrics"]["test"], record["metrics"].get("val") or {}
    low, high = wilson_interval(round(m["accuracy"] * m["n"]), m["n"])
    return {"value": m["accuracy"], "low": low, "high": high,
            "select": val.get("accuracy", 0.0),
            "select_balanced": val.get("balanced_accuracy", 0.0),
            "n": m["n"], "folds": None}


def group_key(record) -> str:
    """The strategy a run is a repeat of: its ``group`` (else its label, else its id)."""
    return record.get("group") or record.get("label") or record["run_id"]


def _repeat_key(record):
    """Runs with the same key are the same run done again (same strategy, protocol, store
    and seed); None when the run records no seed, so it cannot be told from a repeat."""
    if record.get("seed") is None:
        return None
    return (group_key(record), record.get("protocol", "holdout"),
            (record.get("features") or {}).get("fingerprint"), record["seed"],
            record.get("split_fingerprint"))


def latest_per_seed(records: list) -> tuple[list, list]:
    """``(kept, superseded)``: each seed of a strategy once, as its latest run.

    A seed run twice (``finetune --resume`` after an interrupted ``--seeds 2``
    writes seed 0 again) is one seed, not two: the run with the latest
    ``created`` wins (on a tie, the later in ``records``); each superseded run is
    logged with its file.  ``kept`` keeps the order of ``records``.
    """
    latest = {}
    for i, r in enumerate(records):
        key = _repeat_key(r)
        if key is not None and (key not in latest or (r.get("created") or "")
                                >= (records[latest[key]].get("created") or "")):
            latest[key] = i
    kept, superseded = [], []
    for i, r in enumerate(records):
        key = _repeat_key(r)
        if key is None or latest[key] == i:
            kept.append(r)
            continue
        superseded.append(r)
        winner = records[latest[key]]
        log.warning("run %s (%s) is superseded by %s, a later run of %s with seed %s; "
                    "counting that seed once", r["run_id"], r.get("_file", "not saved"),
                    winner["run_id"], key[0], key[3])
    return kept, superseded


def group_runs(records: list) -> list:
    """Runs grouped into strategies (same ``group``: repeats with different seeds), best first.

    Each group dict holds its runs, the mean and spread of their accuracy
    (:func:`score`), and ``rep``: the run whose accuracy is the median (the
    one used for paired tests, the confusion matrix and the mistakes).
    Groups are ranked by what :func:`score` allows to select on (validation
    accuracy under holdout, the cross-validated mean under cv), never by a
    test figure; ties go to the smaller model.  A seed run twice counts once
    (:func:`latest_per_seed`).
    """
    by_group = OrderedDict()
    for r in latest_per_seed(records)[0]:
        by_group.setdefault((group_key(r), r.get("split_fingerprint")), []).append(r)
    splits_of = {}
    for key, split in by_group:
        splits_of.setdefault(key, []).append(split)
    groups = []
    for (key, _split), runs in by_group.items():
        # runs of one strategy on another split (seed, group rule) are not its repeats:
        # their test images differ; each split is a row of its own, named by its split
        name = key if len(splits_of[key]) == 1 else f"{key} [{split_label(runs[0])}]"
        scores = [score(r) for r in runs]
        accs = np.array([sc["value"] for sc in scores])
        order = np.argsort(accs, kind="stable")
        rep = runs[int(order[(len(runs) - 1) // 2])]
        groups.append({
            "name": name, "runs": runs, "rep": rep, "kind": rep.get("kind"),
            "method": rep.get("method"), "layer": rep.get("layer"),
            "backbone": rep.get("backbone"), "dataset": rep.get("dataset"),
            "protocol": rep.get("protocol", "holdout"),
            "accuracy": float(accs.mean()),
            "spread": float(accs.std(ddof=1)) if len(runs) > 1 else None,
            "accuracies": accs.tolist(),
            "ci": (score(rep)["low"], score(rep)["high"]),
            "selection": float(np.mean([sc["select"] for sc in scores])),
            "selection_balanced": float(np.mean([sc["select_balanced"] for sc in scores])),
            "balanced_accuracy": float(np.mean([test_metrics(r)["balanced_accuracy"]
                                                for r in runs])),
            "macro_f1": float(np.mean([test_metrics(r)["macro_f1"] for r in runs])),
        })

    def size(g):
        n = trainable_params(g["rep"])
        return math.inf if n is None else n

    groups.sort(key=lambda g: (-g["selection"], -g["selection_balanced"], size(g)))
    return groups


def split_label(record) -> str:
    """The split a run was judged on, in words: protocol, seed and group rule."""
    split = record.get("split") or {}
    seed = split.get("seed", record.get("split_seed"))
    groups = split.get("groups") or "none"
    return (f"{record.get('protocol', 'holdout')}, split seed {seed}"
            + ("" if groups == "none" else f", groups {groups}"))


def _correct_by_path(record) -> dict:
    """``{(repeat, path): correct}`` of every scored prediction (cv: every repeat)."""
    p = record.get("predictions") or {}
    rows = p.get("y_pred_repeats") or [p.get("y_pred", [])]
    return {(r, path): t == q for r, preds in enumerate(rows)
            for path, t, q in zip(p.get("paths", []), p.get("y_true", []), preds)}


def paired_test(rec_a, rec_b):
    """Exact McNemar on the predictions both runs made of the same images (cv: the
    out-of-fold predictions of every repeat, pooled), or None if they share none."""
    a, b = _correct_by_path(rec_a), _correct_by_path(rec_b)
    shared = [p for p in a if p in b]
    if not shared or rec_a.get("split_fingerprint") != rec_b.get("split_fingerprint"):
        return None
    res = mcnemar_exact([a[p] for p in shared], [b[p] for p in shared])
    res["n"] = len(shared)
    res["test"] = "mcnemar"
    return res


def compare(rec_a, rec_b):
    """The paired test of two runs judged on the same images, or None.

    cv: the corrected resampled paired t-test of their per-fold accuracies on
    the same folds (``p_value``), with McNemar on the pooled out-of-fold
    predictions as a second view (``mcnemar``).  holdout: exact McNemar on
    the test images.
    """
    mcnemar = paired_test(rec_a, rec_b)
    if mcnemar is None or not (is_cv(rec_a) and is_cv(rec_b)):
        return mcnemar
    fa, fb = rec_a["cv"], rec_b["cv"]
    if fa["fold_ids"] != fb["fold_ids"]:
        return None
    diffs = np.asarray(fa["fold_scores"]) - np.asarray(fb["fold_scores"])
    t = corrected_ttest(diffs, float(np.mean(fa["fold_n_train"])),
                        float(np.mean(fa["fold_n_test"])))
    return {**t, "test": "corrected-t", "mcnemar": mcnemar, "a_only": mcnemar["a_only"],
            "b_only": mcnemar["b_only"], "n": mcnemar["n"]}


def trainable_params(record):
    """Trainable parameters of a run (None when not counted)."""
    return record.get("trainable_params")
