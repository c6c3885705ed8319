"""The HTML comparison report: run records (and the feature store) -> one page.

:func:`build_report` reads every run record in a folder, builds one context
dict with a key per section (verdict, comparison table, depth, data
efficiency, learning curves, confusion, mistakes, feature map, advice,
provenance) and renders ``templates/report.html`` with jinja2 autoescaping,
so class names, paths and commands always show as text.  Figures come from
:mod:`pipeline.plots` as inline SVG; thumbnails are inline JPEG.  The page
needs no network.

The report never runs a backbone (torch is never imported).  It reads the
feature store of the best frozen run for two sections: the data-efficiency
curves (scikit-learn heads refitted on subsets of the cached training
features, within a time budget) and the 2-D PCA map of the test features.
"""

from __future__ import annotations

import base64
import io
import logging
import math
import time
from collections import OrderedDict
from pathlib import Path

import numpy as np

from . import plots
from .errors import StoreError
from .metrics import mcnemar_exact, wilson_interval
from .results import load_records

log = logging.getLogger(__name__)

#: Tap names from shallow to deep; the x-axis of the depth plot.
TAP_ORDER = ("layer1", "layer2", "layer3", "layer4", "head")
#: Training images per class for the data-efficiency curves (plus "all").
EFFICIENCY_LEVELS = (5, 10, 20, 50, 100)
EFFICIENCY_REPEATS = 3
#: Seconds the data-efficiency refits may take; curves past it are listed as skipped.
EFFICIENCY_BUDGET = 20.0
#: Test points drawn per panel of the feature map.
FEATURE_MAP_MAX_POINTS = 1500
MAX_MISTAKES = 24
THUMB_SIZE = 128
SIGNIFICANCE = 0.05
#: "100% training accuracy trap": train accuracy this far above validation accuracy.
TRAP_GAP = 0.15
#: The decision grid's boundary between small and large data (training images per class).
LARGE_DATA_PER_CLASS = 1000


# ------------------------------------------------------------------ entry point


def build_report(runs_dir, out_path, overwrite: bool = False,
                 efficiency_budget: float = EFFICIENCY_BUDGET) -> Path:
    """Write the HTML report of every run record in ``runs_dir`` to ``out_path``.

    Refuses to replace an existing ``out_path`` unless ``overwrite``.  Returns
    the path written.  ``efficiency_budget`` caps the seconds spent refitting
    heads for the data-efficiency section.
    """
    out_path = Path(out_path)
    if out_path.exists() and not overwrite:
        raise StoreError(f"report {str(out_path)!r} already exists; pass --overwrite to "
                         "replace it or --out another file")
    records = load_records(runs_dir)
    if not records:
        raise StoreError(f"no run records in {str(runs_dir)!r}; run `python cli.py fit` or "
                         "`python cli.py baseline` first, or pass --runs DIR")
    t0 = time.perf_counter()
    context = build_context(records, efficiency_budget=efficiency_budget)
    html = render(context)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_path.with_name(f".{out_path.name}.tmp")
    tmp.write_text(html, encoding="utf-8")
    tmp.replace(out_path)
    log.info("report of %d runs written to %s (%.1f s, %.0f kB)", len(records), out_path,
             time.perf_counter() - t0, out_path.stat().st_size / 1e3)
    return out_path


def render(context: dict) -> str:
    """The page for ``context``; every ``{{ value }}`` is HTML-escaped."""
    from jinja2 import Environment, PackageLoader, StrictUndefined

    env = Environment(loader=PackageLoader("pipeline", "templates"), autoescape=True,
                      undefined=StrictUndefined, trim_blocks=True, lstrip_blocks=True)
    env.filters["pct"] = _pct
    env.filters["num"] = _num
    return env.get_template("report.html").render(**context)


def build_context(records: list, efficiency_budget: float = EFFICIENCY_BUDGET) -> dict:
    """One dict per section, computed from ``records`` (and the best frozen run's store)."""
    groups = group_runs(records)
    best = groups[0]
    store = _open_store(best, groups)
    verdict = verdict_section(groups)
    advice = advice_section(groups, verdict)
    return {
        "title": f"Transfer-learning report: {best['dataset'] or 'dataset'}",
        "generated": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "n_runs": len(records),
        "verdict": verdict,
        "table": comparison_rows(groups),
        "depth": depth_section(groups),
        "efficiency": efficiency_section(groups, store, efficiency_budget),
        "curves": curves_section(records),
        "confusion": confusion_section(best),
        "mistakes": mistakes_section(best),
        "feature_map": feature_map_section(store),
        "advice": advice,
        "provenance": provenance_section(records, groups),
    }


# ------------------------------------------------------------------ groups of runs


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
        accs = np.array([_test(r)["accuracy"] for r in runs])
        order = np.argsort(accs, kind="stable")
        rep = runs[int(order[(len(runs) - 1) // 2])]
        groups.append({
            "name": name, "runs": runs, "rep": rep, "kind": rep.get("kind"),
            "method": rep.get("method"), "layer": rep.get("layer"),
            "backbone": rep.get("backbone"), "dataset": rep.get("dataset"),
            "accuracy": float(accs.mean()),
            "spread": float(accs.std(ddof=1)) if len(runs) > 1 else None,
            "accuracies": accs.tolist(),
            "balanced_accuracy": float(np.mean([_test(r)["balanced_accuracy"] for r in runs])),
            "macro_f1": float(np.mean([_test(r)["macro_f1"] for r in runs])),
        })
    groups.sort(key=lambda g: (-g["accuracy"], -g["balanced_accuracy"],
                               _params(g["rep"]) if _params(g["rep"]) is not None else math.inf))
    return groups


def _test(record) -> dict:
    return record["metrics"]["test"]


def _params(record):
    return record.get("trainable_params")


def _ci(record) -> tuple:
    m = _test(record)
    return wilson_interval(round(m["accuracy"] * m["n"]), m["n"])


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


def holm(pvalues) -> list:
    """Holm-Bonferroni adjusted p-values, same order as ``pvalues``."""
    p = np.asarray(pvalues, dtype=float)
    order = np.argsort(p)
    adjusted = np.empty_like(p)
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, (len(p) - rank) * p[i])
        adjusted[i] = min(1.0, running)
    return adjusted.tolist()


# ------------------------------------------------------------------ 1 verdict


def verdict_section(groups: list) -> dict:
    best = groups[0]
    lo, hi = _ci(best["rep"])
    comparisons = []
    for g in groups[1:]:
        test = paired_test(best["rep"], g["rep"])
        comparisons.append({"group": g, "test": test})
    tested = [c for c in comparisons if c["test"] is not None]
    for c, adj in zip(tested, holm([c["test"]["p_value"] for c in tested])):
        c["p_holm"] = adj
        c["significant"] = adj < SIGNIFICANCE
    for c in comparisons:
        c.setdefault("p_holm", None)
        c.setdefault("significant", None)
    ranking = [{"rank": i + 1, "group": g, "ci": _ci(g["rep"])} for i, g in enumerate(groups)]
    n_sig = sum(1 for c in tested if c["significant"])
    return {"best": best, "ci": (lo, hi), "n_test": _test(best["rep"])["n"],
            "ranking": ranking, "comparisons": comparisons, "n_tested": len(tested),
            "n_significant": n_sig, "alpha": SIGNIFICANCE}


# ------------------------------------------------------------------ 2 comparison table


def comparison_rows(groups: list) -> list:
    rows = []
    for g in groups:
        rep = g["rep"]
        lo, hi = _ci(rep)
        feats = rep.get("features") or {}
        rows.append({
            "group": g,
            "kind": rep.get("kind"),
            "method": rep.get("method"),
            "backbone": rep.get("backbone") or "",
            "depth": rep.get("layer") or "",
            "head": _head_name(rep),
            "hyperparameters": _format_params(rep.get("hyperparameters") or {}),
            "ci": (lo, hi),
            "seconds": float(np.mean([r.get("fit_seconds") or 0.0 for r in g["runs"]])),
            "trainable_params": _params(rep),
            "images_per_second": (feats.get("images_per_second")
                                  if rep.get("kind") == "frozen" else None),
            "run_ids": [r["run_id"] for r in g["runs"]],
        })
    return rows


def _head_name(record) -> str:
    kind = record.get("kind")
    if kind == "frozen":
        return record.get("method") or ""
    if kind == "finetune":
        return "linear, end to end"
    return record.get("method") or ""


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


# ------------------------------------------------------------------ 3 depth


def depth_section(groups: list) -> dict:
    frozen = [g for g in groups if g["kind"] == "frozen" and g["layer"] in TAP_ORDER]
    if not frozen:
        return {"figure": None, "rows": [],
                "note": "No frozen-feature runs yet: run `python cli.py fit --layer all`."}
    series = OrderedDict()
    for g in sorted(frozen, key=lambda g: (g["backbone"] or "", g["method"] or "")):
        lo, hi = _ci(g["rep"])
        name = f"{g['method']} ({g['backbone']})"
        series.setdefault(name, []).append((g["layer"], g["accuracy"], lo, hi))
    taps = [t for t in TAP_ORDER if any(p[0] == t for pts in series.values() for p in pts)]
    references = [(g["name"], g["accuracy"]) for g in groups if g["kind"] == "baseline"]
    tuned = [g for g in groups if g["kind"] == "finetune"]
    if tuned:
        references.append((f"best fine-tune: {tuned[0]['name']}", tuned[0]["accuracy"]))
    rows = [{"name": name, "values": {p[0]: p[1] for p in pts}} for name, pts in series.items()]
    return {"figure": plots.depth_plot(series, references, taps), "rows": rows, "taps": taps,
            "references": references, "note": None}


# ------------------------------------------------------------------ 4 data efficiency


def _open_store(best: dict, groups: list):
    """The feature store of the best frozen run (the report's only source of features)."""
    from .store import FeatureStore

    frozen = [g for g in groups if g["kind"] == "frozen"]
    if not frozen:
        return None
    path = (frozen[0]["rep"].get("features") or {}).get("path")
    try:
        return FeatureStore(path) if path else None
    except (StoreError, OSError) as exc:
        log.warning("feature store of the best frozen run is unreadable: %s", exc)
        return {"missing": str(path)}


def efficiency_section(groups: list, store, budget: float) -> dict:
    """Test accuracy against training images per class, refitted from cached features.

    For each frozen head method (best first) at each of its taps, and for the
    pixel baseline when one exists: nested random subsets of ``n`` training
    images per class (``EFFICIENCY_REPEATS`` repeats) are fitted and scored on
    the test split.  Frozen heads choose their hyperparameter on the
    validation split from every other value of their grid; the pixel curve
    keeps the C its baseline run chose (pixel fits are 10x dearer).  The
    "all" point is each run's own recorded test accuracy.  Curves stop once
    ``budget`` seconds are spent.
    """
    if store is None:
        return {"figure": None, "skipped": [], "note": "No frozen-feature runs yet, so there "
                "are no cached features to refit heads on: run `python cli.py extract` and `fit`."}
    if isinstance(store, dict):
        return {"figure": None, "skipped": [], "note": f"The feature store {store['missing']} "
                "of the best frozen run cannot be read, so the curves cannot be computed."}
    from threadpoolctl import threadpool_limits

    from .heads import GRIDS

    frozen = [g for g in groups if g["kind"] == "frozen" and g["method"] in GRIDS
              and (g["rep"].get("features") or {}).get("fingerprint") == store.fingerprint]
    methods = list(OrderedDict.fromkeys(g["method"] for g in frozen))
    jobs = [(f"{g['method']} on {g['layer']}", g, g["layer"]) for m in methods
            for g in sorted((g for g in frozen if g["method"] == m),
                            key=lambda g: _tap_rank(g["layer"]))]
    fingerprint = frozen[0]["rep"].get("split_fingerprint") if frozen else None
    pixels = next((g for g in groups if g["method"] == "pixels"
                   and g["rep"].get("split_fingerprint") == fingerprint), None)
    if pixels is not None:
        # Right after the best head's depths, so the budget never drops the baseline first.
        n_best = sum(1 for j in jobs if j[1]["method"] == methods[0])
        jobs.insert(n_best, (pixels["name"], pixels, "pixels"))

    y_tr = store.y("train")
    per_class = np.bincount(y_tr, minlength=len(store.classes))
    smallest = int(per_class[per_class > 0].min())
    levels = [n for n in EFFICIENCY_LEVELS if n < smallest] + ["all"]
    rng = np.random.default_rng(0)
    perms = [[rng.permutation(np.flatnonzero(y_tr == c)) for c in np.unique(y_tr)]
             for _ in range(EFFICIENCY_REPEATS)]
    subsets = {n: [np.concatenate([p[:n] for p in perm]) for perm in perms]
               for n in levels[:-1]}

    t0 = time.perf_counter()
    curves, table, skipped = OrderedDict(), [], []
    # Many small fits: one BLAS thread each is several times faster than a contended pool.
    with threadpool_limits(1):
        for name, group, tap in jobs:
            if time.perf_counter() - t0 > budget:
                skipped.append(name)
                continue
            try:
                data = _efficiency_inputs(store, tap, group, subsets)
            except (OSError, ValueError) as exc:   # pixel curve: images gone; say so, go on
                skipped.append(f"{name} ({exc})")
                continue
            points = []
            for i, n in enumerate(levels[:-1]):
                if time.perf_counter() - t0 > budget:
                    break
                accs = np.array([_fit_subset(data, idx) for idx in subsets[n]])
                points.append((i, float(accs.mean()), float(accs.std()),
                               float(accs.min()), float(accs.max())))
            if len(points) < len(levels) - 1:
                skipped.append(f"{name} (stopped after {len(points)} of {len(levels) - 1} sizes)")
            else:
                accs = group["accuracies"]
                points.append((len(levels) - 1, group["accuracy"], float(np.std(accs)),
                               min(accs), max(accs)))
            if points:
                curves[name] = points
                table.append({"name": name, "values": [p[1] for p in points]
                              + [None] * (len(levels) - len(points))})
    seconds = time.perf_counter() - t0
    # Colour says the tap, line style the head; the pixel baseline is black.
    linestyles = ["-", "--", ":", "-."]
    styles = {name: (("black", "-") if tap == "pixels" else
                     (f"C{_tap_rank(tap)}", linestyles[methods.index(g["method"]) % 4]))
              for name, g, tap in jobs}
    return {"figure": plots.efficiency_plot(curves, levels, styles) if curves else None,
            "levels": levels, "table": table, "skipped": skipped, "seconds": seconds,
            "repeats": EFFICIENCY_REPEATS, "store": str(store.path), "budget": budget,
            "has_pixels": pixels is not None,
            "note": None if curves else "No data-efficiency curve could be computed from the "
            f"cached features in {store.path}."}


def _tap_rank(tap) -> int:
    return TAP_ORDER.index(tap) if tap in TAP_ORDER else len(TAP_ORDER)


def _efficiency_inputs(store, tap, group, subsets) -> dict:
    """What :func:`_fit_subset` needs for one curve: features, labels, the grid to search."""
    from .heads import GRIDS

    y_tr, y_va, y_te = store.y("train"), store.y("val"), store.y("test")
    if tap != "pixels":
        grid = list(GRIDS[group["method"]][1])[::2]
        return {"method": group["method"], "grid": grid, "X": store.X(tap, "train"), "y": y_tr,
                "X_val": store.X(tap, "val"), "y_val": y_va, "X_test": store.X(tap, "test"),
                "y_test": y_te}
    from .baselines import pixel_matrix

    params = group["rep"].get("hyperparameters") or {}
    size = int(params.get("size", 32))
    # Decode only the training images some subset uses (nested subsets: a few per class).
    needed = np.unique(np.concatenate([idx for reps in subsets.values() for idx in reps]))
    train_paths = store.rel_paths("train")
    X_needed, ok, bad = pixel_matrix(store.data_root, [train_paths[i] for i in needed], size)
    X_test, ok_test, bad_test = pixel_matrix(store.data_root, store.rel_paths("test"), size)
    if bad or bad_test:
        raise ValueError(f"{len(bad) + len(bad_test)} images no longer decode")
    X = np.zeros((len(y_tr), X_needed.shape[1]), np.float32)
    X[needed] = X_needed / 255.0
    return {"method": "logreg", "grid": [float(params.get("C", 1.0))], "X": X, "y": y_tr,
            "X_val": None, "y_val": None, "X_test": X_test.astype(np.float32) / 255.0,
            "y_test": y_te}


def _fit_subset(data: dict, idx) -> float:
    """Test accuracy of the head fitted on training rows ``idx`` only (parameter chosen on val)."""
    from .heads import make_head

    X, y = data["X"][idx], data["y"][idx]
    grid = data["grid"]
    if data["method"] == "knn":
        grid = [k for k in grid if k <= len(y)] or [1]
    best, best_acc = None, -1.0
    for value in grid:
        model = make_head(data["method"], value).fit(X, y)
        if len(grid) == 1:
            best = model
            break
        acc = float(np.mean(model.predict(data["X_val"]) == data["y_val"]))
        if acc > best_acc:
            best, best_acc = model, acc
    return float(np.mean(best.predict(data["X_test"]) == data["y_test"]))


# ------------------------------------------------------------------ 5 learning curves


def curves_section(records: list) -> list:
    out = []
    # Seeds of one strategy next to each other, in seed order.
    order = {g: i for i, g in enumerate(OrderedDict.fromkeys(r.get("group") for r in records))}
    for r in sorted(records, key=lambda r: (order[r.get("group")], r.get("seed") or 0)):
        history = r.get("history") or []
        if not history:
            continue
        best_epoch = ((r.get("finetune") or {}).get("best_epoch")
                      or (r.get("hyperparameters") or {}).get("best_epoch"))
        out.append({"record": r, "figure": plots.learning_curve_plot(history, best_epoch),
                    "trap": training_trap(history), "epochs": len(history),
                    "best_epoch": best_epoch})
    return out


def training_trap(history: list):
    """The epoch where training accuracy runs furthest above validation accuracy, if far.

    Returns ``{epoch, train, val, gap}`` when the gap reaches :data:`TRAP_GAP`
    (or training accuracy reaches 99% while validation trails by 5 points),
    else None.
    """
    worst = None
    for h in history:
        tr, va = h.get("train_accuracy"), h.get("val_accuracy")
        if tr is None or va is None:
            continue
        gap = tr - va
        if gap >= TRAP_GAP or (tr >= 0.99 and gap >= 0.05):
            if worst is None or gap > worst["gap"]:
                worst = {"epoch": h.get("epoch"), "train": tr, "val": va, "gap": gap}
    return worst


# ------------------------------------------------------------------ 6 confusion


def confusion_section(best: dict) -> dict:
    rep = best["rep"]
    m = _test(rep)
    classes = rep.get("classes") or list(m["per_class"])
    per_class = [{"name": c, **m["per_class"][c]} for c in classes if c in m["per_class"]]
    return {"group": best, "figure": plots.confusion_plot(m["confusion_matrix"], classes),
            "per_class": per_class, "classes": classes, "matrix": m["confusion_matrix"]}


# ------------------------------------------------------------------ 7 mistakes


def mistakes_section(best: dict) -> dict:
    rep = best["rep"]
    pred = rep.get("predictions") or {}
    classes = rep.get("classes") or []
    paths, y_true, y_pred = pred.get("paths", []), pred.get("y_true", []), pred.get("y_pred", [])
    proba = pred.get("proba")
    wrong = [i for i, (t, p) in enumerate(zip(y_true, y_pred)) if t != p]
    if proba is not None:
        # Most confident mistakes first: they say the most about the model.
        wrong.sort(key=lambda i: -max(proba[i]))
    root = Path(rep.get("data_root") or ".")
    items = []
    for i in wrong[:MAX_MISTAKES]:
        top = []
        if proba is not None:
            order = np.argsort(proba[i])[::-1][:3]
            top = [(classes[k], float(proba[i][k])) for k in order]
        items.append({"path": paths[i], "true": classes[y_true[i]],
                      "pred": classes[y_pred[i]], "top": top,
                      "thumb": thumbnail(root / paths[i])})
    return {"group": best, "cards": items, "n_wrong": len(wrong), "n": len(y_true),
            "has_proba": proba is not None, "root": str(root)}


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


# ------------------------------------------------------------------ 8 feature map


def feature_map_section(store) -> dict:
    """PCA (after standardising) of the test features at each tap, coloured by class."""
    if store is None:
        return {"figure": None, "note": "No frozen-feature runs yet, so no feature store "
                "to project: run `python cli.py extract` and `fit`."}
    if isinstance(store, dict):
        return {"figure": None, "note": f"The feature store {store['missing']} cannot be read."}
    from sklearn.decomposition import PCA
    from sklearn.preprocessing import StandardScaler

    y = store.y("test")
    keep = np.arange(len(y))
    if len(y) > FEATURE_MAP_MAX_POINTS:
        keep = np.sort(np.random.default_rng(0).choice(len(y), FEATURE_MAP_MAX_POINTS,
                                                       replace=False))
    panels, variance = [], []
    for tap in sorted(store.taps, key=_tap_rank):
        X = StandardScaler().fit_transform(store.X(tap, "test")[keep])
        pca = PCA(n_components=2, random_state=0)
        xy = pca.fit_transform(X)
        ratio = float(pca.explained_variance_ratio_.sum())
        panels.append((f"{tap} ({X.shape[1]} ch, {ratio:.0%} var.)", xy, y[keep]))
        variance.append((tap, ratio))
    return {"figure": plots.feature_map_plot(panels, store.classes), "n": len(keep),
            "store": str(store.path), "backbone": store.attrs.get("backbone"),
            "variance": variance, "note": None}


# ------------------------------------------------------------------ 9 advice


def advice_section(groups: list, verdict: dict) -> dict:
    """Place the dataset on the data-size x similarity grid from measured quantities."""
    rep = groups[0]["rep"]
    n_classes = len(rep.get("classes") or []) or 1
    n_train = (rep.get("split_sizes") or {}).get("train", 0)
    per_class = n_train / n_classes
    size = "large" if per_class >= LARGE_DATA_PER_CLASS else "small"

    frozen = [g for g in groups if g["kind"] == "frozen" and g["layer"] in TAP_ORDER]
    by_tap = {}
    for g in frozen:
        if g["accuracy"] > by_tap.get(g["layer"], (-1, None))[0]:
            by_tap[g["layer"]] = (g["accuracy"], g)
    taps = sorted(by_tap, key=_tap_rank)
    depth_gain = similarity = None
    if len(taps) >= 2:
        deepest = taps[-1]
        best_other = max(taps[:-1], key=lambda t: by_tap[t][0])
        depth_gain = {"deep": deepest, "deep_acc": by_tap[deepest][0], "other": best_other,
                      "other_acc": by_tap[best_other][0],
                      "gain": by_tap[deepest][0] - by_tap[best_other][0],
                      "test": paired_test(by_tap[deepest][1]["rep"], by_tap[best_other][1]["rep"])}
        # The deepest tap is the most ImageNet-specific: the data look different from
        # ImageNet only when a shallower tap beats it by more than the noise.
        t = depth_gain["test"]
        shallower_wins = (depth_gain["gain"] < -0.01 and t is not None
                          and t["p_value"] < SIGNIFICANCE)
        similarity = "different" if shallower_wins else "similar"

    best_frozen = frozen[0] if frozen else None
    tuned = [g for g in groups if g["kind"] == "finetune"]
    baselines = [g for g in groups if g["kind"] == "baseline"]
    finetune_gain = None
    if tuned and best_frozen:
        test = paired_test(tuned[0]["rep"], best_frozen["rep"])
        finetune_gain = {"tuned": tuned[0], "frozen": best_frozen,
                         "gain": tuned[0]["accuracy"] - best_frozen["accuracy"], "test": test,
                         "time_ratio": ((tuned[0]["rep"].get("fit_seconds") or 0)
                                        / max(best_frozen["rep"].get("fit_seconds") or 0, 1e-3))}
    baseline_gap = None
    if baselines and best_frozen:
        baseline_gap = {"baseline": baselines[0], "frozen": best_frozen,
                        "gap": best_frozen["accuracy"] - baselines[0]["accuracy"]}

    cell = (size, similarity) if similarity else None
    text = _recommendation(size, similarity, per_class, depth_gain, finetune_gain,
                           baseline_gap, best_frozen, verdict)
    return {"per_class": per_class, "n_train": n_train, "n_classes": n_classes, "size": size,
            "similarity": similarity, "depth_gain": depth_gain, "finetune_gain": finetune_gain,
            "baseline_gap": baseline_gap, "cell": cell, "threshold": LARGE_DATA_PER_CLASS,
            "recommendation": text, "grid": GRID}


#: The course's decision grid: (data size, similarity to ImageNet) -> what to do.
GRID = {
    ("small", "similar"): "Linear classifier on the deepest frozen features.",
    ("small", "different"): "Linear classifier on features from an earlier (middle) layer.",
    ("large", "similar"): "Fine-tune the top blocks (small learning rate) from a frozen-feature "
                          "head.",
    ("large", "different"): "Fine-tune most of the network, or train from scratch.",
}


def _recommendation(size, similarity, per_class, depth_gain, finetune_gain, baseline_gap,
                    best_frozen, verdict) -> list:
    """Plain-language sentences that cite the measured numbers."""
    lines = [f"This dataset has about {per_class:.0f} training images per class: "
             f"{size} data by the grid's rule (large means at least "
             f"{LARGE_DATA_PER_CLASS:,} per class)."]
    if depth_gain:
        direction = "better" if depth_gain["gain"] >= 0 else "worse"
        t = depth_gain["test"]
        noise = (f", McNemar p = {t['p_value']:.3g}: "
                 f"{'significant' if t['p_value'] < SIGNIFICANCE else 'within noise'}" if t else "")
        reason = ("a shallower tap is significantly better, so the images look different "
                  "from ImageNet" if similarity == "different" else
                  "no shallower tap is significantly better, so the ImageNet-specific deep "
                  "features transfer: the images look similar to ImageNet")
        lines.append(
            f"The deepest tap {depth_gain['deep']} scores {depth_gain['deep_acc']:.1%} against "
            f"{depth_gain['other_acc']:.1%} for the best shallower tap {depth_gain['other']} "
            f"({abs(depth_gain['gain']) * 100:.1f} points {direction}{noise}); {reason}.")
        lines.append(f"The grid says: {GRID[(size, similarity)]}")
    else:
        lines.append("Similarity to ImageNet is not measured yet: fit heads on at least two "
                     "taps (`python cli.py fit --layer all`).")
    if baseline_gap:
        lines.append(
            f"Frozen pretrained features ({baseline_gap['frozen']['name']}, "
            f"{baseline_gap['frozen']['accuracy']:.1%}) beat the best baseline "
            f"({baseline_gap['baseline']['name']}, {baseline_gap['baseline']['accuracy']:.1%}) "
            f"by {baseline_gap['gap'] * 100:.1f} points.")
    if finetune_gain:
        t = finetune_gain["test"]
        sig = (f" (McNemar p = {t['p_value']:.3g}: "
               f"{'significant' if t['p_value'] < SIGNIFICANCE else 'within noise'})" if t else "")
        lines.append(
            f"The best fine-tuning run ({finetune_gain['tuned']['name']}) scores "
            f"{finetune_gain['tuned']['accuracy']:.1%}, {finetune_gain['gain'] * 100:+.1f} points "
            f"over the best frozen head{sig}, at {finetune_gain['time_ratio']:.0f}x its "
            "training time.")
        if t and t["p_value"] < SIGNIFICANCE and finetune_gain["gain"] > 0:
            lines.append("Recommendation: fine-tune; the measured gain is real on these test "
                         "images.")
        elif best_frozen:
            lines.append(f"Recommendation: use {best_frozen['name']}; fine-tuning has not "
                         "shown a gain that clears the noise.")
    else:
        lines.append("No fine-tuning runs yet, so the gain of fine-tuning over frozen features "
                     "is not measured (`python cli.py finetune`).")
        if best_frozen:
            lines.append(f"Recommendation for now: {best_frozen['name']} "
                         f"({best_frozen['accuracy']:.1%} test accuracy).")
    best = verdict["best"]
    lo, hi = verdict["ci"]
    lines.append(f"Overall best measured: {best['name']} at {best['accuracy']:.1%} "
                 f"(95% CI {lo:.1%} to {hi:.1%} on {verdict['n_test']} test images).")
    return lines


# ------------------------------------------------------------------ 10 provenance


def provenance_section(records: list, groups: list) -> dict:
    rep = groups[0]["rep"]
    stores = OrderedDict()
    for r in records:
        f = r.get("features") or {}
        if f.get("path"):
            stores.setdefault(f["path"], {"path": f["path"], "fingerprint": f.get("fingerprint"),
                                          "backbone": f.get("backbone")})
    backbones = OrderedDict()
    for r in records:
        if r.get("backbone"):
            backbones.setdefault((r["backbone"], r.get("weights")), 0)
            backbones[(r["backbone"], r.get("weights"))] += 1
    versions = OrderedDict()
    for r in records:
        for k, v in (r.get("versions") or {}).items():
            versions.setdefault(k, [])
            if v not in versions[k]:
                versions[k].append(v)
    machines = list(OrderedDict.fromkeys(
        ", ".join(f"{k}: {v}" for k, v in (r.get("machine") or {}).items()) for r in records))
    created = sorted(r.get("created", "") for r in records)
    return {
        "runs": records, "stores": list(stores.values()),
        "backbones": [{"backbone": b, "weights": w, "runs": n} for (b, w), n in backbones.items()],
        "data_roots": list(OrderedDict.fromkeys(r.get("data_root") for r in records)),
        "split_seed": rep.get("split_seed"), "split_sizes": rep.get("split_sizes") or {},
        "split_fingerprints": list(OrderedDict.fromkeys(r.get("split_fingerprint")
                                                        for r in records)),
        "versions": versions, "machines": machines,
        "first": created[0], "last": created[-1],
    }


# ------------------------------------------------------------------ template filters


def _pct(value, digits: int = 1) -> str:
    return "—" if value is None else f"{value * 100:.{digits}f}%"


def _num(value, fmt: str = ",.0f") -> str:
    return "—" if value is None else format(value, fmt)
