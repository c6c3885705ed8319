"""Analyses of a feature store that the report shows: data-efficiency curves, feature map.

They fit models (heads on subsets, a PCA), so they run here, in a workflow,
and are saved as an analysis record beside the run records; the report only
reads that record.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import numpy as np

from ..errors import StoreError
from ..files import atomic_write, sha256_text
from ..options import TAP_ORDER
from ..runs.groups import group_runs

log = logging.getLogger(__name__)


#: Training images per class for the data-efficiency curves (plus "all").
EFFICIENCY_LEVELS = (5, 10, 20, 50, 100)


EFFICIENCY_REPEATS = 3


#: Seconds the data-efficiency refits may take; curves past it are listed as skipped.
EFFICIENCY_BUDGET = 20.0


#: Test points drawn per panel of the feature map.
FEATURE_MAP_MAX_POINTS = 1500


def open_best_store(groups: list):
    """The feature store of the best frozen run: None without one, ``{"missing": path}``
    when it cannot be read."""
    from ..store.hdf5 import FeatureStore

    frozen = [g for g in groups if g["kind"] == "frozen"]
    if not frozen:
        return None
    path = (frozen[0]["rep"].get("features") or {}).get("path")
    try:
        return FeatureStore(path) if path else None
    except (StoreError, OSError) as exc:
        log.warning("feature store of the best frozen run is unreadable: %s", exc)
        return {"missing": str(path)}


def _efficiency_inputs(store, tap, group, subsets) -> dict:
    """What :func:`_fit_subset` needs for one curve: features, labels, the grid to search."""
    from ..heads.selection import GRIDS

    y_tr, y_va, y_te = store.y("train"), store.y("val"), store.y("test")
    if tap != "pixels":
        grid = list(GRIDS[group["method"]][1])[::2]
        return {"method": group["method"], "grid": grid, "X": store.X(tap, "train"), "y": y_tr,
                "X_val": store.X(tap, "val"), "y_val": y_va, "X_test": store.X(tap, "test"),
                "y_test": y_te}
    from ..train.baselines import pixel_matrix

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
    from ..heads.selection import make_head

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


def _tap_rank(tap) -> int:
    return TAP_ORDER.index(tap) if tap in TAP_ORDER else len(TAP_ORDER)


# ------------------------------------------------------------------ entry point


def analyse(records: list, budget: float = EFFICIENCY_BUDGET) -> dict:
    """The analyses of the best frozen run's store that the report shows (JSON-ready).

    ``{"store": path, "efficiency": {...}, "feature_map": {...}}``; see
    :func:`efficiency_curves` and :func:`feature_map`.
    """
    groups = group_runs(records)
    store = open_best_store(groups)
    return {"schema": 1, "kind": "analysis",
            "store": getattr(store, "path", None) and str(store.path),
            "efficiency": efficiency_curves(groups, store, budget),
            "feature_map": feature_map(store)}


def load_or_analyse(records: list, runs_dir, budget: float = EFFICIENCY_BUDGET) -> dict:
    """:func:`analyse`, cached as ``<runs_dir>/analysis/<key>.json`` for these runs and budget."""
    key = sha256_text(json.dumps([sorted(r["run_id"] for r in records), budget]))[:16]
    path = Path(runs_dir) / "analysis" / f"analysis-{key}.json"
    if path.is_file():
        try:
            return json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            log.warning("recomputing the analysis: %s is unreadable (%s)", path, exc)
    result = analyse(records, budget)
    if result["efficiency"].get("skipped"):
        return result  # cut short by the budget: not worth keeping
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(path, "w", encoding="utf-8") as fh:
        json.dump(result, fh)
    return result


# ------------------------------------------------------------------ data efficiency


def _efficiency_jobs(groups, store):
    """``(jobs, methods, has_pixels)``: one ``(name, group, tap)`` per curve, best method first."""
    from ..heads.selection import GRIDS

    frozen = [g for g in groups if g["kind"] == "frozen" and g["method"] in GRIDS
              and (g["rep"].get("features") or {}).get("fingerprint") == store.fingerprint]
    methods = list(dict.fromkeys(g["method"] for g in frozen))
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
    return jobs, methods, pixels is not None


def _nested_subsets(store):
    """``(levels, {n: [row indices per repeat]})`` of nested per-class training subsets."""
    y_tr = store.y("train")
    per_class = np.bincount(y_tr, minlength=len(store.classes))
    smallest = int(per_class[per_class > 0].min())
    levels = [n for n in EFFICIENCY_LEVELS if n < smallest] + ["all"]
    rng = np.random.default_rng(0)
    perms = [[rng.permutation(np.flatnonzero(y_tr == c)) for c in np.unique(y_tr)]
             for _ in range(EFFICIENCY_REPEATS)]
    return levels, {n: [np.concatenate([p[:n] for p in perm]) for perm in perms]
                    for n in levels[:-1]}


def _curve(data, group, levels, subsets, deadline):
    """Points ``[level index, mean, std, min, max]`` of one curve, cut at ``deadline``."""
    points = []
    for i, n in enumerate(levels[:-1]):
        if time.perf_counter() > deadline:
            break
        accs = np.array([_fit_subset(data, idx) for idx in subsets[n]])
        points.append([i, float(accs.mean()), float(accs.std()), float(accs.min()),
                       float(accs.max())])
    if len(points) == len(levels) - 1:
        accs = group["accuracies"]
        points.append([len(levels) - 1, group["accuracy"], float(np.std(accs)),
                       min(accs), max(accs)])
    return points


def efficiency_curves(groups: list, store, budget: float) -> dict:
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
        return {"curves": {}, "skipped": [], "note": "No frozen-feature runs yet, so there "
                "are no cached features to refit heads on: run `python cli.py extract` and `fit`."}
    if isinstance(store, dict):
        return {"curves": {}, "skipped": [], "note": f"The feature store {store['missing']} "
                "of the best frozen run cannot be read, so the curves cannot be computed."}
    from threadpoolctl import threadpool_limits

    jobs, methods, has_pixels = _efficiency_jobs(groups, store)
    levels, subsets = _nested_subsets(store)
    t0 = time.perf_counter()
    curves, table, skipped = {}, [], []
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
            points = _curve(data, group, levels, subsets, t0 + budget)
            if len(points) < len(levels):
                skipped.append(f"{name} (stopped after {len(points)} of {len(levels) - 1} sizes)")
            if points:
                curves[name] = points
                table.append({"name": name, "values": [p[1] for p in points]
                              + [None] * (len(levels) - len(points))})
    # Colour says the tap, line style the head; the pixel baseline is black.
    linestyles = ["-", "--", ":", "-."]
    styles = {name: (("black", "-") if tap == "pixels" else
                     (f"C{_tap_rank(tap)}", linestyles[methods.index(g["method"]) % 4]))
              for name, g, tap in jobs}
    return {"curves": curves, "styles": styles, "levels": levels, "table": table,
            "skipped": skipped, "seconds": time.perf_counter() - t0,
            "repeats": EFFICIENCY_REPEATS, "store": str(store.path), "budget": budget,
            "has_pixels": has_pixels,
            "note": None if curves else "No data-efficiency curve could be computed from the "
            f"cached features in {store.path}."}


# ------------------------------------------------------------------ feature map


def feature_map(store) -> dict:
    """PCA (after standardising) of the test features at each tap: ``panels`` of
    ``{title, xy (n, 2), labels (n,)}`` for the report to draw."""
    if store is None:
        return {"panels": [], "note": "No frozen-feature runs yet, so no feature store "
                "to project: run `python cli.py extract` and `fit`."}
    if isinstance(store, dict):
        return {"panels": [], "note": f"The feature store {store['missing']} cannot be read."}
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
        panels.append({"title": f"{tap} ({X.shape[1]} ch, {ratio:.0%} var.)",
                       "xy": np.round(xy, 4).tolist(), "labels": y[keep].tolist()})
        variance.append((tap, ratio))
    return {"panels": panels, "classes": list(store.classes), "n": len(keep),
            "store": str(store.path), "backbone": store.attrs.get("backbone"),
            "variance": variance, "note": None}
