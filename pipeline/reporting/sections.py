"""The report's sections, each a dict computed from run records (no model is fitted).

Every section ranks, plots and tests in the one selection metric of the report
(the groups' ``metric``: :func:`pipeline.runs.groups.resolve_report_metric`),
shows the majority-class reference beside the runs, and flags a collapsed
run (one that answers one class) wherever it appears; a collapsed run is never
the best nor the recommendation.

Sentences are the templates' to write: the advice (:func:`advice_section`, the
backbone line of :func:`backbone_advice`) and the notes of an empty section are
worded in ``templates/partials/advice.html`` and ``templates/sections/``, from the
facts (numbers, names, flags) these functions compute.
"""

from __future__ import annotations

import base64
import io
import logging
from collections import OrderedDict
from pathlib import Path

import numpy as np

from ..balance import (
    IMBALANCE_RATIO,
    METRIC_LABELS,
    METRIC_SHORT,
    choice_suffix,
    class_ratio,
    describe_balance,
)
from ..options import TAP_ORDER
from ..runs.groups import (
    class_counts_of,
    collapse_of,
    compare,
    majority_reference,
    score,
    split_label,
    test_metrics,
    trainable_params,
)
from ..runs.stats import holm
from . import plots

#: Tap names from shallow to deep; the x-axis of the depth plot.
log = logging.getLogger(__name__)



MAX_MISTAKES = 24


THUMB_SIZE = 128


SIGNIFICANCE = 0.05


#: "100% training accuracy trap": train accuracy this far above validation accuracy ...
TRAP_GAP = 0.15
#: ... while training accuracy is at least this high (below it the model has not
#: memorised its training images, whatever the gap says).
TRAP_TRAIN_MIN = 0.9


#: The decision grid's boundary between small and large data (training images per class).
LARGE_DATA_PER_CLASS = 1000






def metric_section(groups: list, reason: str | None = None) -> dict:
    """The report's selection metric and why, the class balance it was judged on, and
    the majority-class reference row (on the best run's scored images)."""
    best = groups[0]
    metric = best["metric"]
    counts = class_counts_of(best["rep"])
    classes = best["rep"].class_names()
    fallback = [g["name"] for g in groups if g["fallback"]]
    return {"metric": metric, "label": METRIC_LABELS[metric], "reason": reason or metric,
            "imbalanced": counts is not None and class_ratio(counts) > IMBALANCE_RATIO,
            "balance": describe_balance(counts, classes) if counts is not None else None,
            "ratio": IMBALANCE_RATIO,
            "majority": majority_reference(best["rep"], metric),
            "fallback": fallback,
            "collapsed": [g for g in groups if g["collapsed"]]}


def verdict_section(groups: list, reason: str | None = None) -> dict:
    """The best strategy (selected without test data, never a collapsed one while one that
    learned is there) against every other, in the report's metric, Holm-adjusted."""
    best = groups[0]
    metric = best["metric"]
    label = METRIC_LABELS[metric]
    comparisons = [{"group": g, "test": compare(best["rep"], g["rep"], metric)}
                   for g in groups[1:]]
    tested = [c for c in comparisons if c["test"] is not None]
    for c, adj in zip(tested, holm([c["test"]["p_value"] for c in tested])):
        c["p_holm"] = adj
        c["significant"] = adj < SIGNIFICANCE
    for c in comparisons:
        c.setdefault("p_holm", None)
        c.setdefault("significant", None)
    protocol = best["rep"].protocol
    sc = score(best["rep"], metric)
    info = metric_section(groups, reason)
    majority = info["majority"]
    # a run that learned yet does not clear the majority-class reference is no better than it
    ranking = [{"rank": i + 1, "group": g, "ci": g["ci"],
                "below_majority": bool(majority and not g["collapsed"]
                                       and g["value"] <= majority["value"])}
               for i, g in enumerate(groups)]
    return {"best": best, "ci": best["ci"], "n_test": sc["n"], "ranking": ranking,
            "comparisons": comparisons, "n_tested": len(tested),
            "n_significant": sum(1 for c in tested if c["significant"]), "alpha": SIGNIFICANCE,
            "protocol": protocol, "n_folds": sc["folds"],
            "metric": info, "no_learner": bool(best["collapsed"]),
            "below_majority": [r["group"] for r in ranking if r["below_majority"]],
            "margin": (best["value"] - majority["value"]) if majority else None,
            "score_name": protocol.score_name(label),
            "selected_by": protocol.selected_by(label),
            "test_name": protocol.describe_test(metric, sc["folds"])}


def comparison_rows(groups: list) -> list:
    rows = []
    for g in groups:
        rep = g["rep"]
        lo, hi = g["ci"]
        rows.append({
            "group": g,
            "kind": rep.kind,
            "method": rep.method,
            "backbone": rep.backbone or "",
            "depth": rep.layer or "",
            "head": _head_name(rep),
            "hyperparameters": _format_params(rep.hyperparameters),
            "ci": (lo, hi),
            "selection": g["selection"],
            "scored": test_metrics(rep),
            "folds": rep.protocol.fold_spread(rep, g["metric"]),
            "seconds": float(np.mean([r.fit_seconds or 0.0 for r in g["runs"]])),
            "trainable_params": trainable_params(rep),
            "images_per_second": (rep.features.get("images_per_second")
                                  if rep.kind == "frozen" else None),
            "run_ids": [r.run_id for r in g["runs"]],
        })
    return rows


def _head_name(record) -> str:
    if record.kind == "finetune":
        return "linear, end to end"
    return record.method or ""


def _format_params(params: dict, limit: int = 8) -> str:
    """``k=v, ...`` of the scalar hyperparameters, at most ``limit`` of them."""
    parts = []
    for k, v in params.items():
        if isinstance(v, float):
            v = f"{v:.3g}"
        elif isinstance(v, (dict, list)):
            continue
        parts.append(f"{k}={v}")
    return ", ".join(parts[:limit]) + (f", ... ({len(parts) - limit} more)"
                                       if len(parts) > limit else "")


def depth_section(groups: list) -> dict:
    frozen = [g for g in groups if g["kind"] == "frozen" and g["layer"] in TAP_ORDER]
    if not frozen:   # the template says so
        return {"figure": None, "rows": [], "metric_label": METRIC_LABELS[groups[0]["metric"]]}
    metric = groups[0]["metric"]
    series, collapsed, others = OrderedDict(), {}, {}
    for g in sorted(frozen, key=lambda g: (g["backbone"] or "", g["method"] or "")):
        lo, hi = g["ci"]
        rep = g["rep"]
        name = f"{g['method']} ({g['backbone']})" + choice_suffix(rep.selection_metric,
                                                                  rep.class_weight)
        series.setdefault(name, []).append((g["layer"], g["value"], lo, hi))
        others.setdefault(name, {})[g["layer"]] = _others(g)
        if g["collapsed"]:
            collapsed.setdefault(name, set()).add(g["layer"])
    taps = [t for t in TAP_ORDER if any(p[0] == t for pts in series.values() for p in pts)]
    references = [(g["name"] + (" (collapsed)" if g["collapsed"] else ""), g["value"])
                  for g in groups if g["kind"] == "baseline"]
    tuned = [g for g in groups if g["kind"] == "finetune" and not g["collapsed"]]
    if tuned:
        references.append((f"best fine-tune: {tuned[0]['name']}", tuned[0]["value"]))
    majority = majority_reference(groups[0]["rep"], metric)
    lines = references + ([(majority["name"], majority["value"])] if majority else [])
    rows = [{"name": name, "values": {p[0]: p[1] for p in pts}, "others": others[name],
             "collapsed": sorted(collapsed.get(name, ()), key=_tap_rank)}
            for name, pts in series.items()]
    return {"figure": plots.depth_plot(series, lines, taps, METRIC_LABELS[metric]),
            "rows": rows, "taps": taps, "references": references, "majority": majority,
            "metric_label": METRIC_LABELS[metric]}



def _others(g) -> str:
    """``acc. 98.2% · bal. acc. 95.9% · macro-F1 91.7%`` without the group's own metric: what
    a table cell adds beside it when classes are imbalanced."""
    return " · ".join(f"{METRIC_SHORT[m]} {g[m]:.1%}" for m in METRIC_SHORT
                      if m != g["metric"])


def _tap_rank(tap) -> int:
    return TAP_ORDER.index(tap) if tap in TAP_ORDER else len(TAP_ORDER)


def _pareto(points: list, cost: str, cheaper_is) -> None:
    """Mark in ``front_<cost>`` whether each point is on the Pareto front: no other point
    is at least as accurate and at least as cheap, and strictly better in one."""
    flag = "front_gflops" if cost == "gflops" else "front_speed"
    for p in points:
        if p.get(cost) is None:
            p[flag] = False
            continue
        p[flag] = not any(
            q is not p and q.get(cost) is not None and q["accuracy"] >= p["accuracy"]
            and cheaper_is(q[cost], p[cost], strict=False)
            and (q["accuracy"] > p["accuracy"] or cheaper_is(q[cost], p[cost], strict=True))
            for q in points)


def _fewer(a, b, strict):
    return a < b if strict else a <= b


def _faster(a, b, strict):
    return a > b if strict else a >= b


def backbones_section(groups: list) -> dict:
    """Backbones side by side: per backbone, accuracy at each tap (its best head there,
    chosen without test data), its best tap with cost (parameters and GFLOPs up to the
    tap, measured extraction speed), the Pareto front of accuracy against cost, and the
    backbone this data is best served by.  Computed from run records only."""
    frozen = [g for g in groups if g["kind"] == "frozen" and g["layer"] in TAP_ORDER]
    per_backbone = OrderedDict()
    for g in frozen:
        per_backbone.setdefault(g["backbone"] or "?", []).append(g)
    if len(per_backbone) < 2:   # the template says how to add one
        return {"rows": [], "figure": None, "taps": [], "depth": [], "advice": None}
    rows, depth = [], []
    for backbone, gs in per_backbone.items():
        best_at = {}
        for g in gs:  # per tap, the head chosen without test data (one that learned first)
            if g["layer"] not in best_at or _before(g, best_at[g["layer"]]):
                best_at[g["layer"]] = g
        depth.append({"backbone": backbone,
                      "values": {t: g["value"] for t, g in best_at.items()},
                      "others": {t: _others(g) for t, g in best_at.items()}})
        best = max(best_at.values(), key=lambda g: (not g["collapsed"], g["selection"],
                                                     -_tap_rank(g["layer"])))
        rows.append(_backbone_row(backbone, best))
    rows.sort(key=lambda r: (bool(r["collapsed"]), -r["selection"],
                             r["gflops"] if r["gflops"] is not None else float("inf")))
    points = [{"name": r["backbone"], "accuracy": r["accuracy"], "gflops": r["gflops"],
               "images_per_second": r["images_per_second"]} for r in rows]
    _pareto(points, "gflops", _fewer)
    _pareto(points, "images_per_second", _faster)
    for r, p in zip(rows, points):
        r["pareto"] = p["front_gflops"] or p["front_speed"]
    taps = [t for t in TAP_ORDER if any(t in d["values"] for d in depth)]
    series = OrderedDict()
    for g in frozen:  # accuracy vs depth, one line per backbone (its best head at each tap)
        best_here = next(d for d in depth if d["backbone"] == (g["backbone"] or "?"))
        if best_here["values"].get(g["layer"]) == g["value"]:
            pts = series.setdefault(g["backbone"] or "?", {})
            lo, hi = g["ci"]
            pts.setdefault(g["layer"], (g["layer"], g["value"], lo, hi))
    label = METRIC_LABELS[groups[0]["metric"]]
    majority = majority_reference(groups[0]["rep"], groups[0]["metric"])
    depth_figure = plots.depth_plot({b: list(p.values()) for b, p in series.items()},
                                    [(majority["name"], majority["value"])] if majority else [],
                                    taps, label)
    return {"rows": rows, "depth": depth, "taps": taps,
            "figure": plots.pareto_plot(points, label), "majority": majority,
            "metric_label": label, "depth_figure": depth_figure,
            "advice": backbone_advice(rows, label)}


def _backbone_row(backbone: str, best: dict) -> dict:
    """One backbone's row: its best tap and head (group ``best``) with their cost."""
    rep = best["rep"]
    feats = rep.features
    cost = feats.get("cost") or {}
    tap = best["layer"]
    weights = rep.weights or ""
    return {"backbone": backbone, "tap": tap, "head": best["method"],
            "accuracy": best["value"], "selection": best["selection"],
            "ci": best["ci"], "group": best, "collapsed": best["collapsed_text"],
            "others": _others(best),
            "params": (cost.get("params") or {}).get(tap),
            "gflops": (cost.get("gflops") or {}).get(tap),
            "images_per_second": feats.get("images_per_second") or None,
            "weights": weights, "random_weights": weights.startswith("random-init")}


def _before(g, other) -> bool:
    """Whether group ``g`` is chosen over ``other`` without test data: one that learned
    before a collapsed one, then the higher selection score."""
    return (not g["collapsed"], g["selection"]) > (not other["collapsed"], other["selection"])


def backbone_advice(rows: list, label: str = "accuracy") -> dict:
    """The facts of the line naming the backbone this data is best served by (worded by
    ``templates/partials/advice.html``): ``best`` and ``runner_up`` (rows of
    :func:`backbones_section`, best first), the paired ``test`` between them on the
    shared test images or folds (:func:`judged`; None when they share none), ``cost``
    of the best (``[(kind, value)]`` of what was measured: ``gflops``, ``params``,
    ``images_per_second``), ``cheaper``: the row with the fewest GFLOPs within a point
    of the best, and ``gflops_ratio`` (best / cheaper); ``random_weights``: whether a
    backbone here has random weights; ``label`` the metric's name."""
    best, second = rows[0], rows[1]
    cost = [(kind, best[kind]) for kind in ("gflops", "params", "images_per_second")
            if best[kind] is not None]
    cheaper = [r for r in rows[1:] if r["gflops"] is not None and best["gflops"] is not None
               and r["gflops"] < best["gflops"] and r["accuracy"] >= best["accuracy"] - 0.01]
    cheapest = min(cheaper, key=lambda r: r["gflops"]) if cheaper else None
    return {"best": best, "runner_up": second, "label": label, "cost": cost,
            "test": judged(compare(best["group"]["rep"], second["group"]["rep"],
                                   best["group"]["metric"])),
            "cheaper": cheapest,
            "gflops_ratio": best["gflops"] / cheapest["gflops"] if cheapest else None,
            "random_weights": any(r["random_weights"] for r in rows)}


def judged(test: dict | None) -> dict | None:
    """A paired test (:func:`pipeline.runs.groups.compare`) with ``significant``: its
    p-value under :data:`SIGNIFICANCE`; None stays None."""
    return None if test is None else {**test, "significant": test["p_value"] < SIGNIFICANCE}


def curves_section(records: list, metric: str = "accuracy", groups: list = ()) -> list:
    """The learning curves of every trained run, each named as its group in the tables
    (``groups``: :func:`pipeline.runs.groups.group_runs`; two runs of one label with
    other options read ``[lr 0.001]`` and ``[lr 0.01]``), else by its label."""
    names = {r.run_id: g["name"] for g in groups for r in g["runs"]}
    out = []
    # Seeds of one strategy next to each other, in seed order.
    order = {g: i for i, g in enumerate(OrderedDict.fromkeys(r.group for r in records))}
    for r in sorted(records, key=lambda r: (order[r.group], r.seed or 0)):
        history = r.history
        if not history:
            continue
        best_epoch = ((r.finetune or {}).get("best_epoch")
                      or r.hyperparameters.get("best_epoch"))
        collapsed = collapse_of(r)
        out.append({"record": r, "name": names.get(r.run_id, r.label),
                    "figure": plots.learning_curve_plot(history, best_epoch),
                    "score": score(r, metric)["value"],
                    "score_name": f"{r.protocol.short} {METRIC_LABELS[metric]}",
                    "trap": training_trap(history, collapsed, best_epoch),
                    "collapsed": collapsed, "epochs": len(history),
                    "best_epoch": best_epoch, "preview": augmentation_preview(r)})
    return out


#: Largest augmentation preview embedded (bytes); a bigger file is named, not embedded.
MAX_PREVIEW_BYTES = 400_000


def augmentation_preview(record):
    """``{"src": data URI or None, "info": record.augmentation_preview, "missing"}``
    of a fine-tuning run's stored preview (written when the run was recorded), or None."""
    info = record.augmentation_preview
    if not isinstance(info, dict) or not info.get("file"):
        return None
    path = Path(info["file"])
    try:
        data = path.read_bytes() if path.stat().st_size <= MAX_PREVIEW_BYTES else None
    except OSError as exc:
        log.warning("augmentation preview of run %s not shown: %s", record.run_id, exc)
        return {"src": None, "info": info, "missing": str(path)}
    if data is None:
        return {"src": None, "info": info, "missing": f"{path} (over {MAX_PREVIEW_BYTES:,} B)"}
    return {"src": "data:image/jpeg;base64," + base64.b64encode(data).decode("ascii"),
            "info": info, "missing": None}


def training_trap(history: list, collapsed: dict | None = None, best_epoch=None):
    """What a run's learning curves warn of, with the right explanation, or None.

    ``kind``:

    - ``"collapse"``: the run answers one class (``collapsed``, from
      :func:`pipeline.runs.groups.collapse_of`, or its kept epoch's validation
      predictions, ``val_collapsed`` in the history): whatever the gap between
      training and validation accuracy, it did not memorise, it gave up;
    - ``"memorising"``: the "100% training accuracy trap", training accuracy at
      least :data:`TRAP_TRAIN_MIN` and :data:`TRAP_GAP` above validation (or 99%
      with validation 5 points behind), at the epoch with the largest gap;
    - ``"gap"``: training accuracy that far above validation while itself low
      (under :data:`TRAP_TRAIN_MIN`): not memorising; the two splits differ (class
      mix, augmentation) more than the model fits either.

    Returns ``{kind, epoch, train, val, gap}`` (``text`` for a collapse).
    """
    rows = [h for h in history if h.get("train_accuracy") is not None
            and h.get("val_accuracy") is not None]

    def entry(kind, h, **extra):
        return {"kind": kind, "epoch": h.get("epoch"), "train": h["train_accuracy"],
                "val": h["val_accuracy"], "gap": h["train_accuracy"] - h["val_accuracy"],
                **extra}

    kept = next((h for h in rows if h.get("epoch") == best_epoch), rows[-1] if rows else None)
    if collapsed or (kept is not None and kept.get("val_collapsed")):
        text = (collapsed["text"] if collapsed else
                "answers one class for nearly every validation image at the epoch kept")
        return entry("collapse", kept, text=text) if kept else {
            "kind": "collapse", "epoch": None, "train": None, "val": None, "gap": None,
            "text": text}
    memorising = [h for h in rows
                  if (h["train_accuracy"] >= TRAP_TRAIN_MIN
                      and h["train_accuracy"] - h["val_accuracy"] >= TRAP_GAP)
                  or (h["train_accuracy"] >= 0.99 and h["train_accuracy"] - h["val_accuracy"]
                      >= 0.05)]
    if memorising:
        return entry("memorising", max(memorising,
                                       key=lambda h: h["train_accuracy"] - h["val_accuracy"]))
    gaps = [h for h in rows if h["train_accuracy"] - h["val_accuracy"] >= TRAP_GAP]
    if gaps:
        return entry("gap", max(gaps, key=lambda h: h["train_accuracy"] - h["val_accuracy"]))
    return None


def confusion_section(best: dict) -> dict:
    rep = best["rep"]
    m = test_metrics(rep)
    classes = rep.class_names()
    per_class = [{"name": c, **m["per_class"][c]} for c in classes if c in m["per_class"]]
    return {"group": best, "figure": plots.confusion_plot(m["confusion_matrix"], classes),
            "per_class": per_class, "classes": classes, "matrix": m["confusion_matrix"]}


def shown_mistakes(rep) -> list:
    """Indices into ``rep``'s predictions of the mistakes the gallery shows: the most
    confident first when probabilities were recorded, at most :data:`MAX_MISTAKES`."""
    pred = rep.predictions
    proba = pred.get("proba")
    wrong = [i for i, (t, p) in enumerate(zip(pred.get("y_true", []), pred.get("y_pred", [])))
             if t != p]
    if proba is not None:
        # Most confident mistakes first: they say the most about the model.
        wrong.sort(key=lambda i: -max(proba[i]))
    return wrong[:MAX_MISTAKES]


def mistake_files(rep) -> list:
    """The image files of :func:`shown_mistakes`, under the run's data root."""
    root, paths = Path(rep.data_root or "."), rep.predictions.get("paths", [])
    return [root / paths[i] for i in shown_mistakes(rep)]


def mistakes_section(best: dict, maps: dict | None = None) -> dict:
    """The gallery of ``best``'s most confident mistakes; ``maps``: the workflow's
    class-activation thumbnails of those images (``{"models": [{"title", "short",
    "label", "method", "maps": [data URI or None per image]}], "notes": [...]}``,
    :func:`pipeline.workflows.explain.gallery_maps`), drawn beside each image."""
    rep = best["rep"]
    pred = rep.predictions
    classes = rep.class_names()
    paths, y_true, y_pred = pred.get("paths", []), pred.get("y_true", []), pred.get("y_pred", [])
    proba = pred.get("proba")
    wrong = [i for i, (t, p) in enumerate(zip(y_true, y_pred)) if t != p]
    root = Path(rep.data_root or ".")
    maps = maps or {}
    models = maps.get("models") or []
    items = []
    for n, i in enumerate(shown_mistakes(rep)):
        top = []
        if proba is not None:
            order = np.argsort(proba[i])[::-1][:3]
            top = [(classes[k], float(proba[i][k])) for k in order]
        items.append({"path": paths[i], "true": classes[y_true[i]],
                      "pred": classes[y_pred[i]], "top": top,
                      "thumb": thumbnail(root / paths[i]),
                      "cams": [{"src": m["maps"][n], "short": m["short"], "label": m["label"],
                                "cls": m["classes"][n]}
                               for m in models if n < len(m["maps"]) and m["maps"][n]]})
    return {"group": best, "cards": items, "n_wrong": len(wrong), "n": len(y_true),
            "has_proba": proba is not None, "root": str(root),
            "cam_models": models, "cam_notes": list(maps.get("notes") or [])}


def image_uri(pixels: np.ndarray, size: int = THUMB_SIZE) -> str:
    """A JPEG data URI of uint8 RGB ``pixels`` ``(H, W, 3)`` fitted in ``size`` px."""
    from PIL import Image

    img = Image.fromarray(np.ascontiguousarray(pixels, dtype=np.uint8))
    img.thumbnail((size, size))
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=80)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def thumbnail(path, size: int = THUMB_SIZE):
    """A JPEG data URI of the image at ``path`` fitted in ``size`` px, or None if unreadable."""
    from PIL import Image, ImageOps

    try:
        with Image.open(path) as img:
            img.draft("RGB", (size, size))
            img = ImageOps.exif_transpose(img).convert("RGB")
            img.thumbnail((size, size))
            buf = io.BytesIO()
            img.save(buf, format="JPEG", quality=75)
    except (OSError, ValueError) as exc:
        log.warning("no thumbnail for %s: %s", path, exc)
        return None
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def feature_map_section(fmap: dict) -> dict:
    """The feature-map section from the analysis workflow's PCA panels (figure drawn here)."""
    panels = [(p["title"], np.asarray(p["xy"], dtype=float).reshape(-1, 2),
               np.asarray(p["labels"], dtype=int)) for p in fmap.get("panels") or []]
    figure = plots.feature_map_plot(panels, fmap["classes"]) if panels else None
    return {**fmap, "figure": figure}


def advice_section(groups: list) -> dict:
    """Place the dataset on the data-size x similarity grid from measured quantities: the
    facts the advice is worded from (``templates/partials/advice.html``, with the
    verdict's).

    ``per_class`` training images per class, ``size`` (small | large: at least
    ``threshold``, :data:`LARGE_DATA_PER_CLASS`); ``depth_gain``, the deepest tap
    against the best shallower one (``deep``, ``deep_acc``, ``other``, ``other_acc``,
    ``gain``, ``better``, ``test``; None under two taps), the ``similarity`` to
    ImageNet it shows (similar | different; None unmeasured) and the grid's ``cell``;
    ``best_frozen``, the best frozen group that learned; ``finetune_gain`` (``tuned``,
    ``frozen``, ``gain``, ``test``, ``time_ratio``, ``clears_noise``) and
    ``baseline_gap`` (``baseline``, ``frozen``, ``gap``), None without those runs.
    Every ``test`` is :func:`judged`.
    """
    rep = groups[0]["rep"]
    n_classes = len(rep.classes) or 1
    n_train = rep.split_sizes.get("train", 0)
    per_class = n_train / n_classes
    size = "large" if per_class >= LARGE_DATA_PER_CLASS else "small"
    # a collapsed run learned nothing: it says nothing of a tap and is never recommended
    learned = [g for g in groups if not g["collapsed"]]
    frozen = [g for g in learned if g["kind"] == "frozen" and g["layer"] in TAP_ORDER]
    depth_gain, similarity = _depth_gain(frozen)
    best_frozen = frozen[0] if frozen else None
    tuned = [g for g in learned if g["kind"] == "finetune"]
    baselines = [g for g in learned if g["kind"] == "baseline"]
    baseline_gap = None
    if baselines and best_frozen:
        baseline_gap = {"baseline": baselines[0], "frozen": best_frozen,
                        "gap": best_frozen["value"] - baselines[0]["value"]}
    return {"per_class": per_class, "n_train": n_train, "n_classes": n_classes, "size": size,
            "similarity": similarity, "depth_gain": depth_gain,
            "finetune_gain": _finetune_gain(tuned[0], best_frozen) if tuned and best_frozen
            else None,
            "baseline_gap": baseline_gap, "best_frozen": best_frozen,
            "cell": (size, similarity) if similarity else None,
            "threshold": LARGE_DATA_PER_CLASS}


def _depth_gain(frozen: list) -> tuple[dict | None, str | None]:
    """``(depth_gain, similarity)`` of :func:`advice_section` from the ``frozen`` groups
    that learned; ``(None, None)`` with fewer than two taps."""
    by_tap = {}
    for g in frozen:  # per tap, the head chosen without test data
        if g["layer"] not in by_tap or g["selection"] > by_tap[g["layer"]][1]["selection"]:
            by_tap[g["layer"]] = (g["value"], g)
    taps = sorted(by_tap, key=_tap_rank)
    if len(taps) < 2:
        return None, None
    deepest = taps[-1]
    best_other = max(taps[:-1], key=lambda t: by_tap[t][0])
    gain = by_tap[deepest][0] - by_tap[best_other][0]
    test = judged(compare(by_tap[deepest][1]["rep"], by_tap[best_other][1]["rep"],
                          by_tap[deepest][1]["metric"]))
    # The deepest tap is the most ImageNet-specific: the data look different from
    # ImageNet only when a shallower tap beats it by more than the noise.
    shallower_wins = gain < -0.01 and test is not None and test["significant"]
    return ({"deep": deepest, "deep_acc": by_tap[deepest][0], "other": best_other,
             "other_acc": by_tap[best_other][0], "gain": gain, "better": gain >= 0,
             "test": test},
            "different" if shallower_wins else "similar")


def _finetune_gain(tuned: dict, frozen: dict) -> dict:
    """What the best fine-tuning group ``tuned`` gains over the best frozen one, and
    whether the gain clears the noise (significant and positive)."""
    test = judged(compare(tuned["rep"], frozen["rep"], tuned["metric"]))
    gain = tuned["value"] - frozen["value"]
    tuned_s, frozen_s = tuned["rep"].fit_seconds or 0, frozen["rep"].fit_seconds or 0
    extra_minutes = (tuned_s - frozen_s) / 60
    return {"tuned": tuned, "frozen": frozen, "gain": gain, "test": test,
            "time_ratio": tuned_s / max(frozen_s, 1e-3), "extra_minutes": extra_minutes,
            # points of the metric gained per extra minute of training (extraction aside)
            "points_per_minute": gain * 100 / extra_minutes if extra_minutes > 0 else None,
            "clears_noise": bool(test and test["significant"] and gain > 0)}


def provenance_section(records: list, groups: list, stale: list = ()) -> dict:
    """The provenance facts of ``records``; ``stale``: runs left out because they were fit
    on an earlier store at a path whose newest runs use another
    (:func:`pipeline.runs.groups.current_store_runs`), each with its store."""
    rep = groups[0]["rep"]
    stores = OrderedDict()
    for r in records:
        f = r.features
        if f.get("path"):
            stores.setdefault(f["path"], {"path": f["path"], "fingerprint": f.get("fingerprint"),
                                          "backbone": f.get("backbone"),
                                          "tta": f.get("tta", "none")})
    backbones = OrderedDict()
    for r in records:
        if r.backbone:
            backbones.setdefault((r.backbone, r.weights), 0)
            backbones[(r.backbone, r.weights)] += 1
    versions = OrderedDict()
    for r in records:
        for k, v in r.versions.items():
            versions.setdefault(k, [])
            if v not in versions[k]:
                versions[k].append(v)
    machines = list(OrderedDict.fromkeys(
        ", ".join(f"{k}: {v}" for k, v in r.machine.items()) for r in records))
    created = sorted(r.created or "" for r in records)
    return {
        "runs": records, "stores": list(stores.values()),
        "backbones": [{"backbone": b, "weights": w, "runs": n} for (b, w), n in backbones.items()],
        "data_roots": list(OrderedDict.fromkeys(r.data_root for r in records)),
        "split_seed": rep.split_seed, "split_sizes": rep.split_sizes,
        "split_fingerprints": list(OrderedDict.fromkeys(r.split_fingerprint for r in records)),
        "versions": versions, "machines": machines,
        "first": created[0], "last": created[-1],
        "stale": [{"run_id": r.run_id, "label": r.label, "created": r.created,
                   "path": r.features.get("path"),
                   "fingerprint": (r.features.get("fingerprint") or "")[:16],
                   "classes": r.classes} for r in stale],
    }


#: What each data layout is called in the report.
LAYOUT_WORDS = {"classes": "one folder per class", "splits": "split folders (train/val/test)",
                "table": "a label table"}


def data_section(records: list, groups: list) -> dict:
    """The data the best strategy was judged on: layout, classes with their images per
    split, the split's source, groups and notes; and every other split among the runs
    (runs on another split are shown, never pooled, and not compared with the best)."""
    rep = groups[0]["rep"]
    split = rep.split
    sizes = split.get("class_sizes") or {}
    rows = [{"name": c, "train": v[0], "val": v[1], "test": v[2], "total": sum(v)}
            for c, v in sizes.items()]
    totals = [r["total"] for r in rows if r["total"]]
    others = OrderedDict()
    for r in records:
        fp = r.split_fingerprint
        if fp != rep.split_fingerprint:
            others.setdefault(fp, {"label": split_label(r), "runs": 0})["runs"] += 1
    return {"layout": LAYOUT_WORDS.get(rep.layout or "classes", rep.layout),
            "dataset": rep.dataset, "source": split.get("source"),
            "seed": split.get("seed", rep.split_seed),
            "groups": split.get("groups") or "none", "n_groups": split.get("n_groups"),
            "groups_apart": split.get("groups_apart", True),
            "test_given": bool(split.get("test_given")), "notes": split.get("notes") or [],
            "protocol": rep.protocol, "rows": rows,
            "ratio": (max(totals) / min(totals)) if totals else None,
            "imbalanced": bool(totals) and max(totals) / min(totals) > IMBALANCE_RATIO,
            "other_splits": list(others.values())}
