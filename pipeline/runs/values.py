"""The values a run record may hold: every score a finite number in [0, 1], every count a
whole number >= 0, every per-class array as long as the classes, every per-image and
per-fold list as long as the others.

:func:`value_problems` lists what is wrong with the values of a parsed record (a JSON
object whose fields are there and of the right JSON type), each problem naming its field
(``metrics.test.accuracy is NaN, not a number in [0, 1]``: values as the file has them).
:func:`pipeline.runs.records.record_problem` adds them to what it finds missing or of
the wrong type, so a record with one is refused when it is read, naming its file and the
field (:func:`pipeline.runs.records.load_records` skips it with a warning, and the report
is written from the others).  What is checked is what the report and the commands read;
keys this version does not know are kept as they are.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping

import numpy as np

#: The scores of a metrics block, each a number in [0, 1].
SCORES = ("accuracy", "balanced_accuracy", "macro_f1")
#: The scores of a class in a metrics block's ``per_class``.
CLASS_SCORES = ("precision", "recall", "f1")
#: The scores of an epoch in a run's ``history`` (None when not measured).
EPOCH_SCORES = ("train_accuracy", "val_accuracy", "val_balanced_accuracy", "val_macro_f1",
                "train_top_share")
#: The largest count a record may hold: the largest whole number a JSON reader keeps exact.
MAX_COUNT = 2 ** 53
#: Problems named in a message; the rest are counted.
SHOWN = 5


class Problems(list):
    """The problems found in a record, and the checks that add to them; each check says
    whether the value passed."""

    def number(self, where: str, value, low: float = 0.0, high: float = 1.0,
               none: bool = False) -> bool:
        """A finite number (not a boolean) in ``[low, high]``; None too when ``none``."""
        if value is None and none:
            return True
        ok = _is_number(value) and math.isfinite(value) and low <= value <= high
        if not ok:
            self.append(f"{where} is {_shown(value)}, not {_range(low, high)}")
        return ok

    def count(self, where: str, value, least: int = 0, none: bool = False) -> bool:
        """A whole number (not a boolean) from ``least`` to :data:`MAX_COUNT`."""
        if value is None and none:
            return True
        ok = _is_int(value) and least <= value <= MAX_COUNT
        if not ok:
            self.append(f"{where} is {_shown(value)}, not a whole number >= {least}")
        return ok

    def text(self, where: str, value, none: bool = True) -> bool:
        """A string; None too when ``none``."""
        ok = isinstance(value, str) or (value is None and none)
        if not ok:
            self.append(f"{where} is {_shown(value)}, not a string")
        return ok

    def kind(self, where: str, value, kind: type, none: bool = True) -> bool:
        """A JSON object (``kind`` dict) or array (list); None too when ``none``."""
        ok = isinstance(value, kind) or (value is None and none)
        if not ok:
            words = "an object" if kind is dict else "an array"
            self.append(f"{where} is {_shown(value)}, not {words}")
        return ok

    def array(self, where: str, value, length: int | None = None, what: str = "") -> bool:
        """A list, of ``length`` items when given (``what``: what sets the length)."""
        if not self.kind(where, value, list, none=False):
            return False
        if length is not None and len(value) != length:
            self.append(f"{where} has {len(value)} item(s), not {length} ({what})")
            return False
        return True

    def numbers(self, where: str, values, length=None, what="", low=0.0, high=1.0) -> bool:
        """A list of finite numbers in ``[low, high]`` (of ``length`` when given)."""
        return self.array(where, values, length, what) and all(
            self.number(f"{where}[{i}]", v, low, high) for i, v in enumerate(values))

    def counts(self, where: str, values, length=None, what="", least: int = 0) -> bool:
        """A list of whole numbers >= ``least`` (of ``length`` when given)."""
        return self.array(where, values, length, what) and all(
            self.count(f"{where}[{i}]", v, least) for i, v in enumerate(values))

    def labels(self, where: str, values, n_classes: int | None, length=None) -> bool:
        """A list of class indices, each below ``n_classes`` when known."""
        if not self.counts(where, values, length, "one per scored image"):
            return False
        bad = next((i for i, v in enumerate(values)
                    if n_classes is not None and v >= n_classes), None)
        if bad is not None:
            self.append(f"{where}[{bad}] is {values[bad]}, not a class index below "
                        f"{n_classes} (the record has {n_classes} classes)")
        return bad is None

    def summary(self) -> str | None:
        """The problems in a sentence (the first :data:`SHOWN`), or None without any."""
        if not self:
            return None
        more = f"; ... and {len(self) - SHOWN} more" if len(self) > SHOWN else ""
        return "invalid values: " + "; ".join(self[:SHOWN]) + more


def _is_int(value) -> bool:
    """An integer (a numpy one too: a record built in memory), never a boolean."""
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def _is_number(value) -> bool:
    """A float or an integer a float holds exactly (numpy ones too), never a boolean."""
    if _is_int(value):
        return abs(int(value)) <= MAX_COUNT
    return isinstance(value, (float, np.floating))


def seconds_or_zero(value) -> float:
    """A time read from a side record (explore's): a finite number >= 0, else 0 (a record
    written before the field, or a damaged one)."""
    return float(value) if _is_number(value) and math.isfinite(value) and value >= 0 else 0.0


def _range(low: float, high: float) -> str:
    if high == math.inf:
        return f"a finite number >= {low:g}"
    return f"a number in [{low:g}, {high:g}]"


def _shown(value) -> str:
    """``value`` in a message as the file has it (JSON: ``"0.9"``, ``NaN``, ``null``), cut
    short."""
    try:
        text = json.dumps(value)
    except (TypeError, ValueError):       # not from a JSON file: a record built in memory
        text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


# ------------------------------------------------------------------ the record


def value_problems(data: Mapping, scored: str) -> Problems:
    """What is wrong with the values of ``data`` (a parsed record whose fields are there
    and of their JSON type); ``scored``: its protocol's scored metrics block (``test`` or
    ``oof``).  Empty when nothing is."""
    found = Problems()
    classes = data.get("classes") or []
    if found.array("classes", classes) and all(
            found.text(f"classes[{i}]", c, none=False) for i, c in enumerate(classes)):
        if len(set(classes)) < len(classes):
            found.append("classes has a name twice")
    n_classes = len(classes) or _matrix_size(data, scored)
    found.number("fit_seconds", data.get("fit_seconds", 0.0), high=math.inf)
    found.count("trainable_params", data.get("trainable_params"), none=True)
    for key in ("split_seed", "seed"):
        found.count(key, data.get(key), none=True)
    _metrics(found, data.get("metrics") or {}, classes, n_classes)
    _predictions(found, data.get("predictions") or {}, n_classes,
                 (data.get("metrics") or {}).get(scored, {}).get("n"))
    if data.get("cv") is not None:
        _cv(found, data["cv"])
    _history(found, data.get("history") or [])
    for where, block in (("finetune", data.get("finetune")),
                         ("hyperparameters", data.get("hyperparameters"))):
        if isinstance(block, dict):   # -1: no epoch kept (every validation loss was nan)
            found.count(f"{where}.best_epoch", block.get("best_epoch"), least=-1, none=True)
    _store(found, data)
    return found


def _matrix_size(data: Mapping, scored: str) -> int | None:
    """The classes a record without ``classes`` has: its scored confusion matrix's rows."""
    block = (data.get("metrics") or {}).get(scored)
    matrix = block.get("confusion_matrix") if isinstance(block, dict) else None
    return len(matrix) if isinstance(matrix, list) and matrix else None


def _metrics(found: Problems, metrics: Mapping, classes: list, n_classes) -> None:
    """Each metrics block: scores in [0, 1], ``n`` a count, a ``(K, K)`` confusion matrix
    of counts adding up to ``n``, per-class scores of the record's classes."""
    for part, block in metrics.items():
        where = f"metrics.{part}"
        if not found.kind(where, block, dict, none=False):
            continue
        for key in SCORES:
            if key in block:
                found.number(f"{where}.{key}", block[key])
        n_ok = "n" in block and found.count(f"{where}.n", block["n"])
        if "confusion_matrix" in block:
            cm = block["confusion_matrix"]
            if _matrix(found, f"{where}.confusion_matrix", cm, n_classes) and n_ok \
                    and sum(map(sum, cm)) != block["n"]:
                found.append(f"{where}.confusion_matrix adds up to {sum(map(sum, cm))} "
                             f"images, not {where}.n = {block['n']}")
        if "per_class" in block:
            _per_class(found, f"{where}.per_class", block["per_class"], classes)


def _matrix(found: Problems, where: str, cm, n_classes) -> bool:
    """A square matrix of counts, one row and column per class."""
    size = n_classes if n_classes is not None else (len(cm) if isinstance(cm, list) else None)
    if not found.array(where, cm, size, "one row per class"):
        return False
    return all(found.counts(f"{where}[{i}]", row, size, "one column per class")
               for i, row in enumerate(cm))


def _per_class(found: Problems, where: str, per_class, classes: list) -> None:
    """``{class: {precision, recall, f1, support}}`` of the record's classes only."""
    if not found.kind(where, per_class, dict, none=False):
        return
    unknown = [c for c in per_class if classes and c not in classes]
    if unknown:
        found.append(f"{where} names {_shown(unknown[0])}, not one of the record's "
                     f"{len(classes)} classes")
    for name, scores in per_class.items():
        if not found.kind(f"{where}.{name}", scores, dict, none=False):
            continue
        missing = [k for k in (*CLASS_SCORES, "support") if k not in scores]
        if missing:
            found.append(f"{where}.{name} has no {', '.join(missing)}")
        for key in CLASS_SCORES:
            if key in scores:
                found.number(f"{where}.{name}.{key}", scores[key])
        if "support" in scores:
            found.count(f"{where}.{name}.support", scores["support"])


def _predictions(found: Problems, pred: Mapping, n_classes, n_scored) -> None:
    """Per-image lists of one length (the scored block's ``n``): paths, labels below the
    number of classes, a row of class probabilities per image."""
    n = len(pred["y_true"]) if isinstance(pred.get("y_true"), list) else None
    if n is not None and _is_int(n_scored) and n != n_scored:
        found.append(f"predictions.y_true has {n} label(s), not as many as the scored "
                     f"images ({n_scored})")
    paths = pred.get("paths")
    if "paths" in pred and found.array("predictions.paths", paths, n, "one per scored image"):
        bad = next((i for i, p in enumerate(paths) if not isinstance(p, str)), None)
        if bad is not None:
            found.text(f"predictions.paths[{bad}]", paths[bad], none=False)
    for key in ("y_true", "y_pred"):
        if key in pred:
            found.labels(f"predictions.{key}", pred[key], n_classes, n)
    if pred.get("y_pred_repeats") is not None and found.array("predictions.y_pred_repeats",
                                                              pred["y_pred_repeats"]):
        for i, row in enumerate(pred["y_pred_repeats"]):
            found.labels(f"predictions.y_pred_repeats[{i}]", row, n_classes, n)
    proba = pred.get("proba")
    if proba is not None and found.array("predictions.proba", proba, n,
                                         "one row per scored image"):
        for i, row in enumerate(proba):
            if not found.numbers(f"predictions.proba[{i}]", row, n_classes,
                                 "one probability per class"):
                break


def _cv(found: Problems, cv) -> None:
    """The cv block: per-fold scores, sizes and ids of one length, the mean and its
    interval in [0, 1] (these are there in a cv record:
    :data:`pipeline.runs.protocol.REQUIRED_CV`; under holdout, in none)."""
    if not found.kind("cv", cv, dict, none=False):
        return
    scores = cv.get("fold_scores")
    n = len(scores) if isinstance(scores, list) else None
    if found.numbers("cv.fold_scores", scores) and not scores:
        found.append("cv.fold_scores is empty, not a score per fold")
    for key in ("fold_n_train", "fold_n_test"):
        found.counts(f"cv.{key}", cv.get(key), n, "one per fold", least=1)
    if found.array("cv.fold_ids", cv.get("fold_ids"), n, "one per fold"):
        for i, ids in enumerate(cv["fold_ids"]):
            found.counts(f"cv.fold_ids[{i}]", ids, 2, "repeat and fold")
    metrics = cv.get("fold_metrics")
    if found.kind("cv.fold_metrics", metrics, dict):
        for key, values in (metrics or {}).items():
            if values is not None:
                found.numbers(f"cv.fold_metrics.{key}", values, n, "one per fold")
    found.number("cv.mean", cv.get("mean"))
    if found.numbers("cv.ci", cv.get("ci"), 2, "low and high") and cv["ci"][0] > cv["ci"][1]:
        found.append(f"cv.ci is {_shown(cv['ci'])}: its low end above its high end")
    if "sd" in cv:
        found.number("cv.sd", cv["sd"])
    if "repeat_accuracy" in cv:
        found.numbers("cv.repeat_accuracy", cv["repeat_accuracy"])
    for key in ("n_folds", "n_repeats"):
        if key in cv:
            found.count(f"cv.{key}", cv[key], least=1)


def _history(found: Problems, history: list) -> None:
    """Each epoch: its number, accuracies in [0, 1], losses (a diverged run's may be nan
    or inf), learning rates and seconds."""
    for i, h in enumerate(history):
        where = f"history[{i}]"
        if not found.kind(where, h, dict, none=False):
            continue
        found.count(f"{where}.epoch", h.get("epoch"), least=1)
        for key in EPOCH_SCORES:
            found.number(f"{where}.{key}", h.get(key), none=True)
        for key in ("train_loss", "val_loss"):
            value = h.get(key)
            if value is not None and not _is_number(value):
                found.append(f"{where}.{key} is {_shown(value)}, not a number")
        lrs = h.get("lr")
        if found.kind(f"{where}.lr", lrs, dict):
            for group, lr in (lrs or {}).items():
                found.number(f"{where}.lr.{group}", lr, high=math.inf)
        found.number(f"{where}.seconds", h.get("seconds"), high=math.inf, none=True)


def _store(found: Problems, data: Mapping) -> None:
    """What the record says of its store and split: names, counts per split and class,
    the extraction's speed and cost."""
    features = data.get("features") or {}
    for key in ("path", "fingerprint", "backbone"):
        found.text(f"features.{key}", features.get(key))
    found.number("features.images_per_second", features.get("images_per_second"),
                 high=math.inf, none=True)
    cost = features.get("cost")
    if found.kind("features.cost", cost, dict) and cost:
        params, gflops = cost.get("params"), cost.get("gflops")
        if found.kind("features.cost.params", params, dict):
            for tap, value in (params or {}).items():
                found.count(f"features.cost.params.{tap}", value, none=True)
        if found.kind("features.cost.gflops", gflops, dict):
            for tap, value in (gflops or {}).items():
                found.number(f"features.cost.gflops.{tap}", value, high=math.inf, none=True)
    for key, value in (data.get("split_sizes") or {}).items():
        found.count(f"split_sizes.{key}", value)
    counts, classes = data.get("class_counts"), data.get("classes") or []
    if found.kind("class_counts", counts, dict):
        for name, value in (counts or {}).items():
            if classes and name not in classes:
                found.append(f"class_counts names {_shown(name)}, not one of the record's "
                             f"{len(classes)} classes")
            found.count(f"class_counts.{name}", value)
    _split(found, data.get("split") or {})
    preview = data.get("augmentation_preview")
    if found.kind("augmentation_preview", preview, dict) and preview:
        found.text("augmentation_preview.file", preview.get("file"))
    _calibration(found, data.get("calibration"))


def _calibration(found: Problems, block) -> None:
    """The calibration block (:func:`pipeline.calibration.calibration_block`): its
    temperature, errors and reliability bins, as the report draws them."""
    if not found.kind("calibration", block, dict) or not block:
        return
    found.number("calibration.temperature", block.get("temperature"), low=1e-6, high=1e6)
    for key in ("ece", "ece_scaled"):
        found.number(f"calibration.{key}", block.get(key), none=True)
    for key in ("nll", "nll_scaled"):
        found.number(f"calibration.{key}", block.get(key), high=math.inf, none=True)
    bins = block.get("reliability") or {}
    if found.kind("calibration.reliability", bins, dict):
        for side in ("before", "after"):
            rows = bins.get(side) or []
            if not found.kind(f"calibration.reliability.{side}", rows, list):
                continue
            for i, row in enumerate(rows):
                where = f"calibration.reliability.{side}[{i}]"
                if found.kind(where, row, dict, none=False):
                    for key in ("confidence", "accuracy"):
                        found.number(f"{where}.{key}", row.get(key))
                    found.count(f"{where}.n", row.get("n"))


def _split(found: Problems, split: Mapping) -> None:
    """The split block: its seed and group count, rule, source and notes, and the images
    of each class in train, val and test."""
    found.count("split.seed", split.get("seed"), none=True)
    found.count("split.n_groups", split.get("n_groups"), none=True)
    for key in ("groups", "source"):
        found.text(f"split.{key}", split.get(key))
    notes = split.get("notes")
    if notes is not None and found.array("split.notes", notes):
        for i, note in enumerate(notes):
            found.text(f"split.notes[{i}]", note, none=False)
    sizes = split.get("class_sizes")
    if found.kind("split.class_sizes", sizes, dict):
        for name, row in (sizes or {}).items():
            found.counts(f"split.class_sizes.{name}", row, 3, "train, val and test")
