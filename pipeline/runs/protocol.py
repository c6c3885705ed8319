"""Evaluation protocols: which one a store gets, and everything that depends on it.

``holdout`` judges every method once on the store's fixed test split (the
hyperparameter chosen on its validation split).  ``cv`` uses the store's
fixed repeated stratified K-fold (5 folds x 3 repeats): every method is
fitted on the same outer training folds, its hyperparameters chosen inside
them, and scored on the outer test folds; every image gets one out-of-fold
prediction per repeat.  ``auto`` is cv for small data, where one split
cannot tell strategies apart: fewer than :data:`AUTO_CV_MAX_IMAGES` images,
or a holdout test split under :data:`AUTO_CV_MIN_TEST` images.

The decision is one object, a :class:`Protocol` (:class:`Holdout` or
:class:`CrossValidation`), got from :func:`resolve_protocol` (a store) or
:func:`protocol_of` (a run record).  Code asks it instead of comparing names:
which fitting path a workflow takes (:meth:`Protocol.pick`), which metrics block
is scored and must be in a record, a record's score and interval, how two runs
are tested against each other, and the words the report and the CLI print.
Its ``name`` is written in the record (``protocol``) and its ``why`` too
(``protocol_reason``); the names appear nowhere else in the package.

A cv record's accuracy is the mean over folds with the Nadeau-Bengio
corrected 95% interval (the folds' training sets overlap, so the plain t
interval is too narrow); see :mod:`pipeline.runs.stats`.  The record also
keeps every fold's balanced accuracy and macro-F1 (``cv.fold_metrics``), so
the report can rank and test runs on whichever of them selects.
"""

from __future__ import annotations

import hashlib
import logging
from typing import ClassVar

import numpy as np

from ..balance import METRIC_LABELS, METRICS, metric_values
from ..errors import UsageError
from ..options import PROTOCOLS
from .stats import (
    N_BOOT,
    bootstrap_interval,
    corrected_interval,
    corrected_ttest,
    paired_bootstrap,
    wilson_interval,
)

log = logging.getLogger(__name__)

#: ``auto`` picks cv below this many images ...
AUTO_CV_MAX_IMAGES = 2000
#: ... or when the holdout test split has fewer images than this.
AUTO_CV_MIN_TEST = 100

#: What a record must hold of the metrics of its scored predictions (``Protocol.scored``).
REQUIRED_METRICS = ("accuracy", "n", "balanced_accuracy", "macro_f1", "per_class",
                    "confusion_matrix")
#: ... and of the ``cv`` block of a cross-validated record (the folds' ids and sizes: what
#: a paired test of two runs reads).
REQUIRED_CV = ("mean", "ci", "fold_scores", "fold_ids", "fold_n_train", "fold_n_test")


class Protocol:
    """How runs are judged; asked, never compared by name (a splitter object, in the
    spirit of scikit-learn's ``model_selection``).

    ``name`` is what a record stores (``holdout`` or ``cv``), ``why`` how it was
    chosen (``None`` when not recorded).  Class attributes say what differs:

    - ``cross_validated``: scored on out-of-fold predictions of every image;
    - ``scored``: the record's metrics block of its scored predictions (``test`` or
      ``oof``); ``judged``: the blocks a collapse is looked for in, in order;
    - words: ``short`` (the scored figure's column head: ``test`` / ``cv``),
      ``select_short`` (the selecting figure's: ``val`` / ``cv``), ``selects_on``
      (``validation`` / ``cv``), ``score_words`` (``test`` / ``cross-validated``),
      ``scored_where`` (``test`` / ``out-of-fold``).

    A protocol equals another of its kind, and its own name (as a ``str`` enum
    member would), whatever its ``why``.
    """

    name: ClassVar[str]
    cross_validated: ClassVar[bool]
    scored: ClassVar[str]
    judged: ClassVar[tuple[str, ...]]
    short: ClassVar[str]
    select_short: ClassVar[str]
    selects_on: ClassVar[str]
    score_words: ClassVar[str]
    scored_where: ClassVar[str]

    def __init__(self, why: str | None = None):
        self.why = why

    def __eq__(self, other):
        if isinstance(other, Protocol):
            return self.name == other.name
        if isinstance(other, str):
            return self.name == other
        return NotImplemented

    def __hash__(self):
        return hash(self.name)

    def __str__(self):
        return self.name

    def __repr__(self):
        return f"{type(self).__name__}(why={self.why!r})"

    def pick(self, *, holdout, cv):
        """``holdout`` or ``cv``, whichever belongs to this protocol: the fitting path, the
        record builder, a file key (``protocol.pick(holdout=_fit_holdout, cv=_fit_cv)``)."""
        raise NotImplementedError

    # ---------------------------------------------------------------- records

    def missing(self, data) -> list[str]:
        """The fields a record (a parsed JSON object) of this protocol lacks for the report:
        its scored metrics block with :data:`REQUIRED_METRICS` (and, under cv, its ``cv``
        block with :data:`REQUIRED_CV`)."""
        if "metrics" not in data:
            return []
        metrics = data["metrics"]
        if not isinstance(metrics, dict) or not isinstance(metrics.get(self.scored), dict):
            return [f"metrics.{self.scored}"]
        return [f"metrics.{self.scored}.{k}" for k in REQUIRED_METRICS
                if k not in metrics[self.scored]]

    def score(self, record, metric: str) -> dict:
        """What ``record`` scored in ``metric``: see :func:`pipeline.runs.groups.score`."""
        raise NotImplementedError

    def fold_spread(self, record, metric: str = "accuracy"):
        """``{sd, min, max, n}`` of a run's per-fold ``metric``; None without folds."""
        return None

    def paired(self, rec_a, rec_b, metric: str, mcnemar: dict):
        """The paired test of two runs of this protocol on the same images, in ``metric``,
        given McNemar's on their shared predictions: see
        :func:`pipeline.runs.groups.compare`."""
        raise NotImplementedError

    def part_words(self, part: str) -> str:
        """A metrics block's name in words: ``validation``, ``test`` or ``out-of-fold``."""
        return "validation" if part == "val" else self.scored_where

    # ---------------------------------------------------------------- words

    def score_name(self, label: str) -> str:
        """``test accuracy`` / ``cross-validated accuracy`` (``label``: the metric's)."""
        return f"{self.score_words} {label}"

    def selected_by(self, label: str) -> str:
        """What chose the best run, in words: never a test figure."""
        raise NotImplementedError

    def describe_test(self, metric: str, n_folds=None) -> str:
        """How the verdict's paired tests were made, in words."""
        raise NotImplementedError

    def where(self, n: int, n_folds=None) -> str:
        """Where a score was measured: ``on 551 test images`` / ``over 15 folds of ...``."""
        raise NotImplementedError

    def interval_name(self, metric: str) -> str:
        """The name of a score's 95% interval in ``metric``."""
        raise NotImplementedError


class Holdout(Protocol):
    """The store's fixed split: chosen on validation, scored once on the test split."""

    name = "holdout"
    cross_validated = False
    scored = "test"
    judged = ("val", "test")
    short, select_short, selects_on, score_words = "test", "val", "validation", "test"
    scored_where = "test"

    def pick(self, *, holdout, cv):
        return holdout

    def score(self, record, metric: str) -> dict:
        m, val = record.metrics[self.scored], record.metrics.get("val") or {}
        used = metric if metric in m else "accuracy"
        if used == "accuracy":
            low, high = wilson_interval(round(m["accuracy"] * m["n"]), m["n"])
        else:
            y_true, y_pred = record.scored_labels()
            low, high = (bootstrap_interval(used, y_true, y_pred)
                         if len(y_true) == len(y_pred) > 0 else (m[used], m[used]))
        return {"value": m[used], "low": low, "high": high,
                "select": val.get(used, val.get("accuracy", 0.0)), "metric": used,
                "fallback": used != metric, "n": m["n"], "folds": None}

    def paired(self, rec_a, rec_b, metric: str, mcnemar: dict):
        if metric == "accuracy":
            return {**mcnemar, "metric": "accuracy"}
        boot = paired_bootstrap(metric, *_shared_predictions(rec_a, rec_b))
        return {**boot, "test": "bootstrap", "metric": metric, "mcnemar": mcnemar,
                "a_only": mcnemar["a_only"], "b_only": mcnemar["b_only"]}

    def selected_by(self, label: str) -> str:
        return f"validation {label}"

    def describe_test(self, metric: str, n_folds=None) -> str:
        if metric == "accuracy":
            return "exact McNemar test on the shared test images"
        return (f"paired bootstrap of the {METRIC_LABELS.get(metric, metric)} difference over "
                f"the shared test images ({N_BOOT:,} resamples)")

    def where(self, n: int, n_folds=None) -> str:
        return f"on {n} test images"

    def interval_name(self, metric: str) -> str:
        return "Wilson CI" if metric == "accuracy" else "bootstrap interval"


class CrossValidation(Protocol):
    """The store's repeated stratified K-fold, nested: scored on every image out of fold."""

    name = "cv"
    cross_validated = True
    scored = "oof"
    judged = ("oof",)
    short, select_short, selects_on, score_words = "cv", "cv", "cv", "cross-validated"
    scored_where = "out-of-fold"

    def pick(self, *, holdout, cv):
        return cv

    def missing(self, data) -> list[str]:
        block = data.get("cv")
        return super().missing(data) + (["cv"] if not isinstance(block, dict) else [
            f"cv.{k}" for k in REQUIRED_CV if k not in block])

    @staticmethod
    def _fold_metrics(record) -> dict:
        return record.cv.get("fold_metrics") or {}

    def score(self, record, metric: str) -> dict:
        cv = record.cv
        per_fold = self._fold_metrics(record).get(metric)
        used = metric if metric == "accuracy" or per_fold else "accuracy"
        if used == "accuracy":
            mean, low, high = cv["mean"], cv["ci"][0], cv["ci"][1]
        else:
            mean, low, high = corrected_interval(per_fold, float(np.mean(cv["fold_n_train"])),
                                                 float(np.mean(cv["fold_n_test"])))
        return {"value": mean, "low": low, "high": high, "select": mean, "metric": used,
                "fallback": used != metric, "n": record.metrics[self.scored]["n"],
                "folds": len(cv["fold_scores"])}

    def fold_spread(self, record, metric: str = "accuracy"):
        """``{sd, min, max, n}`` of the per-fold ``metric`` (accuracy when the record has no
        per-fold values of it)."""
        scores = self._fold_metrics(record).get(metric) or record.cv["fold_scores"]
        sd = float(np.std(scores, ddof=1)) if len(scores) > 1 else 0.0
        return {"sd": sd, "min": min(scores), "max": max(scores), "n": len(scores)}

    def paired(self, rec_a, rec_b, metric: str, mcnemar: dict):
        fa, fb = rec_a.cv, rec_b.cv
        if fa["fold_ids"] != fb["fold_ids"]:
            return None
        va = self._fold_metrics(rec_a).get(metric)
        vb = self._fold_metrics(rec_b).get(metric)
        used = metric if (metric != "accuracy" and va and vb) else "accuracy"
        if used == "accuracy":
            va, vb = fa["fold_scores"], fb["fold_scores"]
        diffs = np.asarray(va) - np.asarray(vb)
        t = corrected_ttest(diffs, float(np.mean(fa["fold_n_train"])),
                            float(np.mean(fa["fold_n_test"])))
        return {**t, "test": "corrected-t", "metric": used, "mcnemar": mcnemar,
                "a_only": mcnemar["a_only"], "b_only": mcnemar["b_only"], "n": mcnemar["n"]}

    def selected_by(self, label: str) -> str:
        return f"the cross-validated mean {label}"

    def describe_test(self, metric: str, n_folds=None) -> str:
        return (f"corrected resampled paired t-test (Nadeau-Bengio) of the per-fold "
                f"{METRIC_LABELS.get(metric, metric)} on the same {n_folds} folds")

    def where(self, n: int, n_folds=None) -> str:
        return f"over {n_folds} folds of {n} images"

    def interval_name(self, metric: str) -> str:
        return "corrected resampled-t interval"


#: Every protocol a record may name, by name (``auto`` is a rule, not a protocol).
PROTOCOL_TYPES = {cls.name: cls for cls in (Holdout, CrossValidation)}


def protocol_named(name: str, why: str | None = None) -> Protocol:
    """The protocol called ``name`` (``holdout`` or ``cv``), chosen because ``why``."""
    if name not in PROTOCOL_TYPES:
        raise UsageError(f"unknown protocol {name!r}; valid: {', '.join(PROTOCOL_TYPES)}",
                         param="protocol")
    return PROTOCOL_TYPES[name](why)


def protocol_of(record) -> Protocol:
    """The protocol ``record`` was judged under: a run record's own (:class:`RunRecord`
    ``.protocol``), or read from a parsed one (``protocol``, default holdout, and
    ``protocol_reason``)."""
    if isinstance(getattr(record, "protocol", None), Protocol):
        return record.protocol
    return protocol_named(record.get("protocol", Holdout.name), record.get("protocol_reason"))


def resolve_protocol(protocol: str, store) -> Protocol:
    """The protocol ``protocol`` (auto, holdout or cv) names for ``store``: ``auto``
    decides by size; its ``why`` says how it was chosen."""
    if protocol not in PROTOCOLS:
        raise UsageError(f"unknown protocol {protocol!r}; valid: {', '.join(PROTOCOLS)}",
                         param="protocol")
    n, n_test = len(store), store.split_sizes()["test"]
    if protocol in PROTOCOL_TYPES:
        return protocol_named(protocol, f"{protocol} (asked for)")
    if n < AUTO_CV_MAX_IMAGES or n_test < AUTO_CV_MIN_TEST:
        return CrossValidation(
            f"cv (auto: {n:,} images, {n_test} in the holdout test split; cv below "
            f"{AUTO_CV_MAX_IMAGES:,} images or {AUTO_CV_MIN_TEST} test images)")
    return Holdout(f"holdout (auto: {n:,} images, {n_test} in the test split; cv is used "
                   f"below {AUTO_CV_MAX_IMAGES:,} images or {AUTO_CV_MIN_TEST} test images)")


def _shared_predictions(rec_a, rec_b):
    """``(y_true, pred_a, pred_b)`` ``(n,)`` on the scored images both runs share, by path."""
    pa, pb = rec_a.predictions, rec_b.predictions
    index_b = {path: i for i, path in enumerate(pb.get("paths") or [])}
    rows = [(i, index_b[path]) for i, path in enumerate(pa.get("paths") or []) if path in index_b]
    y = [pa["y_true"][i] for i, _ in rows]
    return (np.asarray(y, dtype=np.int64), np.asarray([pa["y_pred"][i] for i, _ in rows]),
            np.asarray([pb["y_pred"][j] for _, j in rows]))


def folds_fingerprint(store) -> str:
    """Identity of a store's cross-validation: SHA-256 of its paths and fold ids (as in
    use: :meth:`~pipeline.store.hdf5.FeatureStore.use_split` may have changed them)."""
    digest = hashlib.sha256()
    for path, row in zip(store.paths, store.folds):
        digest.update(f"{path}\0{','.join(map(str, row))}\n".encode())
    return digest.hexdigest()
def cv_result(folds: list, y, classes, n_repeats: int) -> dict:
    """The ``cv`` block, metrics and out-of-fold predictions of a cross-validated run.

    ``folds`` are objects with ``repeat, fold, test (rows), proba (n_test,
    n_classes), params, n_train`` (e.g. :class:`pipeline.heads.crossval.FoldResult`);
    ``y`` is ``(n_images,)``.  Returns ``{"cv": ..., "metrics": ..., "predictions": ...}``
    where predictions hold the out-of-fold labels of every repeat and the
    probabilities of repeat 0, in store row order, for the rows some fold scored
    (``rows``: a given test split is in no fold and not scored here).
    """
    from .metrics import evaluate  # scikit-learn: not imported by readers of records

    y = np.asarray(y)
    n = len(y)
    pred = np.full((n_repeats, n), -1, dtype=np.int64)
    proba0 = np.zeros((n, len(classes)))
    scores, n_train, n_test = [], [], []
    fold_metrics = {m: [] for m in METRICS}
    for f in folds:
        p = np.asarray(f.proba).argmax(axis=1)
        pred[f.repeat, f.test] = p
        if f.repeat == 0:
            proba0[f.test] = f.proba
        scores.append(float(np.mean(p == y[f.test])))
        for m, v in metric_values(y[f.test], p, len(classes)).items():
            fold_metrics[m].append(v)
        n_train.append(int(f.n_train))
        n_test.append(len(f.test))
    mean, lo, hi = corrected_interval(scores, float(np.mean(n_train)), float(np.mean(n_test)))
    rows = np.flatnonzero(pred[0] >= 0)
    pred, proba0, y = pred[:, rows], proba0[rows], y[rows]
    per_repeat = [float(np.mean(pred[r] == y)) for r in range(n_repeats)]
    cv = {"n_folds": int(max(f.fold for f in folds)) + 1, "n_repeats": n_repeats,
          "fold_ids": [[int(f.repeat), int(f.fold)] for f in folds], "fold_scores": scores,
          "fold_n_train": n_train, "fold_n_test": n_test, "mean": mean, "ci": [lo, hi],
          "sd": float(np.std(scores, ddof=1)) if len(scores) > 1 else 0.0,
          "repeat_accuracy": per_repeat, "fold_params": [f.params for f in folds],
          "fold_metrics": fold_metrics}
    return {"cv": cv, "rows": rows,
            "metrics": {CrossValidation.scored: evaluate(y, pred[0], classes)},
            "predictions": {"y_true": [int(v) for v in y], "y_pred": pred[0].tolist(),
                            "y_pred_repeats": pred.tolist(),
                            "proba": np.round(proba0, 5).tolist()}}
