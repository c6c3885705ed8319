"""Run records grouped into strategies (repeats of one method), scored by one selection
metric, flagged when collapsed, and paired tests between them.

Works for both protocols: holdout records are scored on the test split and
selected by their validation score; cv records by their cross-validated mean.
The metric (accuracy, balanced accuracy or macro-F1, :mod:`pipeline.balance`)
is one for the whole comparison: :func:`resolve_report_metric`.  A run that
answers (nearly) one class for every image is *collapsed* (:func:`collapse_of`):
its group is ranked after every group that learned and can never be the best.
"""

from __future__ import annotations

import json
import logging
import math
from collections import OrderedDict
from pathlib import Path

import numpy as np

from ..balance import (
    IMBALANCE_RATIO,
    METRICS,
    class_ratio,
    collapse,
    majority_class,
    metric_values,
    resolve_metric,
)
from ..errors import UsageError
from ..options import SELECTION_METRICS
from .records import RunRecord, as_record
from .stats import mcnemar_exact, wilson_interval

log = logging.getLogger(__name__)


def test_metrics(record) -> dict:
    """The metrics of a run's scored predictions: the test split (holdout) or the
    out-of-fold predictions of repeat 0 (cv)."""
    return as_record(record).scored_metrics


def record_metric(record) -> str:
    """The metric a run was selected by (records before it was recorded: accuracy)."""
    metric = as_record(record).selection_metric
    return metric if metric in METRICS else "accuracy"


def score(record, metric: str | None = None) -> dict:
    """What a run scored in ``metric`` (default: the one it was selected by) and what it
    may be selected by: its protocol's answer
    (:meth:`pipeline.runs.protocol.Protocol.score`).

    ``value`` with its 95% interval ``low``-``high`` over ``n`` images: under cv the
    mean over folds with the Nadeau-Bengio corrected interval (from the record's
    per-fold values of the metric, ``cv.fold_metrics``); under holdout the test
    figure with the Wilson interval (accuracy) or a bootstrap over the test images
    (balanced accuracy, macro-F1).  ``select`` is never a test figure: the
    cross-validated mean (cv) or the validation score (holdout).  ``metric`` is the
    one used: a cv record written before per-fold metrics were kept falls back to
    accuracy (``fallback`` says so).  ``record``: a :class:`RunRecord` (or a parsed one).
    """
    record = as_record(record)
    metric = metric or record_metric(record)
    if metric not in METRICS:
        raise UsageError(f"unknown metric {metric!r}; valid: {', '.join(METRICS)}",
                         param="metric")
    return record.protocol.score(record, metric)


# ------------------------------------------------------------------ the report's metric


def class_counts_of(record) -> np.ndarray | None:
    """Images per class of the data a run was fitted on ``(n_classes,)``: the record's
    ``class_counts`` (every image of the store), else its scored images' labels (cv:
    every image; holdout: the test split, stratified like the rest); None without."""
    record = as_record(record)
    classes = record.class_names()
    counts = record.class_counts
    # by class name; in order for a record without classes, when there is one per class
    if isinstance(counts, dict) and counts and (record.classes or len(counts) == len(classes)):
        try:
            return np.array([int(counts.get(c, 0)) for c in classes] if record.classes
                            else [int(v) for v in counts.values()])
        except (TypeError, ValueError):   # an edited record: count its scored labels instead
            log.warning("run %s: class_counts %r are not counts; counting its scored labels",
                        record.run_id, counts)
    y_true, _ = record.scored_labels()
    if not len(y_true):
        return None
    return np.bincount(y_true, minlength=len(classes))


def imbalanced(record) -> bool:
    """Whether the data a run was fitted on are imbalanced (:func:`class_counts_of`,
    :data:`pipeline.balance.IMBALANCE_RATIO`)."""
    counts = class_counts_of(record)
    return counts is not None and class_ratio(counts) > IMBALANCE_RATIO


def resolve_report_metric(records: list, metric: str = "auto") -> tuple[str, str]:
    """``(metric, why)``: the one selection metric a comparison of ``records`` uses.

    ``metric`` other than ``auto`` is taken as asked.  ``auto``: the metric every run
    was selected by, when they agree; otherwise (runs selected by different metrics,
    or recorded before the metric was) resolved from the data's class counts like a
    run's ``auto`` (:func:`pipeline.balance.resolve_metric`).
    """
    if metric not in SELECTION_METRICS:
        raise UsageError(f"unknown metric {metric!r}; valid: {', '.join(SELECTION_METRICS)}",
                         param="metric")
    if metric != "auto":
        return metric, f"{metric} (asked for)"
    records = [as_record(r) for r in records]
    recorded = OrderedDict()
    for r in records:
        name = r.selection_metric
        recorded.setdefault(name if name in METRICS else None, []).append(r)
    if len(recorded) == 1 and None not in recorded:
        (name, runs), = recorded.items()
        reason = runs[0].selection_metric_reason or name
        return name, f"{reason}; every run was selected by it"
    counts = next((c for c in (class_counts_of(r) for r in records) if c is not None), None)
    classes = next((r.classes for r in records if r.classes), None)
    name, why = resolve_metric("auto", counts if counts is not None else [1], classes)
    if set(recorded) == {None}:
        note = "the runs predate the selection metric, so the report resolved it from the data"
    else:
        note = ("the runs were selected by different metrics ("
                + ", ".join(f"{k or 'not recorded'}: {len(v)}" for k, v in recorded.items())
                + "), so the report resolved one from the data")
    return name, f"{why}; {note}"


# ------------------------------------------------------------------ collapse


def collapse_of(record) -> dict | None:
    """Whether a run answers (nearly) one class for every image: on its selection data
    (validation under holdout) or its scored predictions (test, or out-of-fold under cv).

    Returns ``{class, share, others_as_class, where, text}`` (the first of validation,
    then scored, that collapsed) or None; see :func:`pipeline.balance.collapse`.
    """
    record = as_record(record)
    classes = record.class_names()
    for part in record.protocol.judged:
        m = record.metrics.get(part)
        if not isinstance(m, dict) or "confusion_matrix" not in m:
            continue
        try:
            found = collapse(m["confusion_matrix"])
        except (TypeError, ValueError):       # not a matrix of counts: nothing to judge
            found = None
        if found:
            name = classes[found["class"]] if found["class"] < len(classes) else found["class"]
            n = int(np.sum(m["confusion_matrix"]))
            where = record.protocol.part_words(part)
            return {**found, "class_name": name, "where": where,
                    "text": (f"answers {name} for {found['share']:.0%} of the {n} {where} "
                             f"images, including {found['others_as_class']:.0%} of those of "
                             "the other classes")}
    return None


# ------------------------------------------------------------------ groups


def group_key(record) -> str:
    """The strategy a run is a repeat of: its ``group`` (else its label, else its id)."""
    return record.group or record.label or record.run_id


def setup_key(record) -> str | None:
    """The options a run was made with (its ``setup``, the seed left out), as one string;
    None for records written before the setup was recorded."""
    setup = as_record(record).setup
    return None if setup is None else json.dumps(setup, sort_keys=True, default=str)


def strategy_key(record) -> tuple:
    """What makes two runs repeats of one strategy: the same ``group``, the same options
    (:func:`setup_key`: ``--lr 1e-3`` and ``--lr 1e-2`` are two strategies) and the same
    store (its fingerprint: a store re-extracted over other images is another one)."""
    return (group_key(record), setup_key(record), record.features.get("fingerprint"))


def _repeat_key(record):
    """Runs with the same key are the same run done again (same strategy, options, store,
    protocol and seed); None when the run records no seed, so it cannot be told from a
    repeat."""
    if record.seed is None:
        return None
    return (*strategy_key(record), record.protocol.name, record.seed,
            record.split_fingerprint)


def current_store_runs(records: list) -> tuple[list, list]:
    """``(kept, stale)``: the runs of the store now at each recorded store path, and those
    of an earlier store there (re-extracted since, e.g. ``extract --overwrite`` after a
    class folder was added: other classes, other images).

    The store a path now holds is the one its newest run (latest ``created``) was fit
    on; each stale run is logged with its file and both fingerprints, so a report never
    pools or ranks runs of two stores as one.  Runs without a store path are kept.
    ``kept`` keeps the order of ``records``.
    """
    records = [as_record(r) for r in records]
    newest = {}
    for r in records:
        path = r.features.get("path")
        if path and (path not in newest or (r.created or "") >= (newest[path].created or "")):
            newest[path] = r
    kept, stale = [], []
    for r in records:
        path, fp = r.features.get("path"), r.features.get("fingerprint")
        current = newest.get(path)
        if current is None or fp == current.features.get("fingerprint"):
            kept.append(r)
            continue
        stale.append(r)
        log.warning("run %s (%s) was fit on an earlier store at %s (fingerprint %s; the "
                    "newest runs, e.g. %s, use fingerprint %s): left out, since runs of two "
                    "stores are never pooled; fit it again on the current store, or move its "
                    "record out of the runs folder", r.run_id, r.file or "not saved", path,
                    (fp or "none")[:16], current.run_id,
                    (current.features.get("fingerprint") or "none")[:16])
    return kept, stale


def latest_per_seed(records: list) -> tuple[list, list]:
    """``(kept, superseded)``: each seed of a strategy once, as its latest run.

    A seed run twice (``finetune --resume`` after an interrupted ``--seeds 2``
    writes seed 0 again) is one seed, not two: the run with the latest
    ``created`` wins (on a tie, the later in ``records``); each superseded run is
    logged with its file.  ``kept`` keeps the order of ``records``.
    """
    records = [as_record(r) for r in records]
    latest = {}
    for i, r in enumerate(records):
        key = _repeat_key(r)
        if key is not None and (key not in latest or (r.created or "")
                                >= (records[latest[key]].created or "")):
            latest[key] = i
    kept, superseded = [], []
    for i, r in enumerate(records):
        key = _repeat_key(r)
        if key is None or latest[key] == i:
            kept.append(r)
            continue
        superseded.append(r)
        winner = records[latest[key]]
        log.warning("run %s (%s) is superseded by %s, a later run of %s with the same "
                    "options, store and seed %s; counting that seed once", r.run_id,
                    r.file or "not saved", winner.run_id, key[0], r.seed)
    return kept, superseded


#: Ties on the selection metric go to the next of these (the metric itself left out).
TIEBREAK = ("balanced_accuracy", "macro_f1", "accuracy")


def group_runs(records: list, metric: str | None = None) -> list:
    """Runs grouped into strategies (same ``group``: repeats with different seeds), best first.

    ``metric``: the selection metric of the comparison (None: resolved by
    :func:`resolve_report_metric`).  Each group dict holds its runs, the mean and
    spread of their score in it (``value``, ``spread``; :func:`score`), their mean
    accuracy, balanced accuracy and macro-F1, ``collapsed`` (the runs that answer
    one class, :func:`collapse_of`), and ``rep``: the run whose score is the median
    (the one used for paired tests, the confusion matrix and the mistakes).
    Groups are ranked by what :func:`score` allows to select on (validation score
    under holdout, the cross-validated mean under cv), never by a test figure;
    ties go to the next metric of :data:`TIEBREAK`, then the smaller model.  A
    group with a collapsed run is ranked after every group without one: it did
    not learn, and it never comes first while one that did is there.  A seed
    run twice counts once (:func:`latest_per_seed`).
    """
    records = [as_record(r) for r in records]
    metric = metric or resolve_report_metric(records)[0]
    tiebreak = next(m for m in TIEBREAK if m != metric)
    by_group = OrderedDict()
    for r in latest_per_seed(records)[0]:
        by_group.setdefault((*strategy_key(r), r.split_fingerprint), []).append(r)
    names = group_names(by_group)
    groups = []
    for key, runs in by_group.items():
        name = names[key]
        scores = [score(r, metric) for r in runs]
        values = np.array([sc["value"] for sc in scores])
        order = np.argsort(values, kind="stable")
        rep = runs[int(order[(len(runs) - 1) // 2])]
        rep_score = scores[int(order[(len(runs) - 1) // 2])]
        collapsed = [(r, c) for r, c in ((r, collapse_of(r)) for r in runs) if c]
        groups.append({
            "name": name, "runs": runs, "rep": rep, "kind": rep.kind,
            "method": rep.method, "layer": rep.layer,
            "backbone": rep.backbone, "dataset": rep.dataset,
            "protocol": rep.protocol, "metric": metric,
            "value": float(values.mean()),
            "spread": float(values.std(ddof=1)) if len(runs) > 1 else None,
            "values": values.tolist(),
            "ci": (rep_score["low"], rep_score["high"]),
            "fallback": any(sc["fallback"] for sc in scores),
            **{m: float(np.mean([_shown(r, m) for r in runs])) for m in METRICS},
            "selection": float(np.mean([sc["select"] for sc in scores])),
            "selection_tiebreak": float(np.mean([score(r, tiebreak)["select"] for r in runs])),
            "collapsed": [{"run_id": r.run_id, **c} for r, c in collapsed],
            "collapsed_text": _collapsed_text(collapsed, len(runs)),
        })

    def size(g):
        n = trainable_params(g["rep"])
        return math.inf if n is None else n

    groups.sort(key=lambda g: (bool(g["collapsed"]), -g["selection"], -g["selection_tiebreak"],
                               size(g)))
    return groups


def group_names(by_group: dict) -> dict:
    """``{key: name}`` of the groups of :func:`group_runs` (keys: :func:`strategy_key` and the
    split's fingerprint): the ``group`` itself, and, when several groups share it, in
    brackets what tells them apart: the options that differ (``lr 0.01``), the store
    (its file and fingerprint) and the split (:func:`split_label`).  Runs of one
    strategy with other options, on another store or split are not its repeats (other
    training, other test images): each is a row of its own."""
    variants = OrderedDict()
    for key, runs in by_group.items():
        variants.setdefault(key[0], []).append((key, runs[0]))
    names = {}
    for name, found in variants.items():
        if len(found) == 1:
            names[found[0][0]] = name
            continue
        setups = [r.setup or {} for _key, r in found]
        differ = sorted(k for k in set().union(*setups)
                        if len({json.dumps(s.get(k), default=str) for s in setups}) > 1)
        several = {i: len({key[i] for key, _r in found}) > 1 for i in (2, 3)}
        for key, r in found:
            parts = [f"{k.replace('_', ' ')} {_value((r.setup or {}).get(k))}" for k in differ]
            if several[2]:
                parts.append(f"store {Path(r.features.get('path') or '?').name} "
                             f"{(key[2] or 'none')[:8]}")
            if several[3]:
                parts.append(split_label(r))
            names[key] = f"{name} [{'; '.join(parts) or r.run_id}]"
    return names


def _value(value) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def split_label(record) -> str:
    """The split a run was judged on, in words: protocol, seed and group rule."""
    record = as_record(record)
    seed = record.split.get("seed", record.split_seed)
    groups = record.split.get("groups") or "none"
    return (f"{record.protocol.name}, split seed {seed}"
            + ("" if groups == "none" else f", groups {groups}"))


def _shown(record, metric: str) -> float:
    """A run's figure in ``metric`` for a table: its :func:`score` (the cv mean over folds),
    or the pooled out-of-fold figure of a cv record without per-fold values of it."""
    sc = score(record, metric)
    return test_metrics(record)[metric] if sc["fallback"] else sc["value"]


def _collapsed_text(collapsed: list, n_runs: int) -> str | None:
    """``answers daisy for ...`` (``in 2 of 3 seeds answers ...``), or None."""
    if not collapsed:
        return None
    first = collapsed[0][1]["text"]
    if n_runs == 1:
        return first
    return f"in {len(collapsed)} of {n_runs} seeds {first} (e.g. run {collapsed[0][0].run_id})"


def majority_reference(record, metric: str) -> dict | None:
    """The majority-class reference on a run's scored images: a classifier that answers
    the class with the most images (in training, as in the whole data: the split and
    the folds are stratified) for every image.  Its accuracy is that class's share,
    its balanced accuracy 1/K, its macro-F1 that of one class's F1 over K classes.

    Returns ``{name, class_name, value, low, high, accuracy, balanced_accuracy,
    macro_f1, n}`` (``value`` in ``metric``, Wilson interval for accuracy), or None
    when the run has no scored labels.
    """
    record = as_record(record)
    counts = class_counts_of(record)
    y_true, _ = record.scored_labels()
    if counts is None or not len(y_true):
        return None
    classes = record.class_names() or [str(i) for i in range(len(counts))]
    c = majority_class(counts)
    values = metric_values(y_true, np.full(len(y_true), c), max(len(classes), c + 1))
    low, high = ((wilson_interval(round(values["accuracy"] * len(y_true)), len(y_true)))
                 if metric == "accuracy" else (values[metric], values[metric]))
    return {"name": f"majority class ({classes[c]}), reference", "class_name": classes[c],
            "value": values[metric], "low": low, "high": high, "n": len(y_true), **values}


# ------------------------------------------------------------------ paired tests


def _correct_by_path(record) -> dict:
    """``{(repeat, path): correct}`` of every scored prediction (cv: every repeat)."""
    p = record.predictions
    rows = p.get("y_pred_repeats") or [p.get("y_pred", [])]
    return {(r, path): t == q for r, preds in enumerate(rows)
            for path, t, q in zip(p.get("paths", []), p.get("y_true", []), preds)}


def paired_test(rec_a, rec_b):
    """Exact McNemar on the predictions both runs made of the same images (cv: the
    out-of-fold predictions of every repeat, pooled), or None if they share none."""
    rec_a, rec_b = as_record(rec_a), as_record(rec_b)
    a, b = _correct_by_path(rec_a), _correct_by_path(rec_b)
    shared = [p for p in a if p in b]
    if not shared or rec_a.split_fingerprint != rec_b.split_fingerprint:
        return None
    res = mcnemar_exact([a[p] for p in shared], [b[p] for p in shared])
    res["n"] = len(shared)
    res["test"] = "mcnemar"
    return res


def compare(rec_a, rec_b, metric: str = "accuracy"):
    """The paired test of two runs judged on the same images, in ``metric``, or None:
    their protocol's (:meth:`pipeline.runs.protocol.Protocol.paired`).

    cv: the corrected resampled paired t-test of their per-fold values of
    ``metric`` on the same folds (``p_value``; records without per-fold values of
    it fall back to accuracy, ``metric`` says which was tested), with McNemar on
    the pooled out-of-fold predictions as a second view (``mcnemar``).  holdout:
    exact McNemar on the test images for accuracy; for balanced accuracy and
    macro-F1 a paired bootstrap over the shared test images
    (:func:`pipeline.runs.stats.paired_bootstrap`: ``mean`` difference a - b, its
    ``ci`` and ``p_value``), McNemar's counts kept for the table.  Runs of two
    protocols: McNemar on accuracy.
    """
    rec_a, rec_b = as_record(rec_a), as_record(rec_b)
    mcnemar = paired_test(rec_a, rec_b)
    if mcnemar is None:
        return None
    if rec_a.protocol != rec_b.protocol:
        return {**mcnemar, "metric": "accuracy"}
    return rec_a.protocol.paired(rec_a, rec_b, metric, mcnemar)


def trainable_params(record: RunRecord):
    """Trainable parameters of a run (None when not counted)."""
    return record.trainable_params
