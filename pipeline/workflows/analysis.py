"""Analyses of a feature store that the report shows: few-shot curves, feature map.

They fit models (heads on a few images per class, a PCA), so they run here, in a workflow,
and are saved as an analysis record beside the run records; the report only
reads that record.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np

from ..errors import StoreError
from ..files import atomic_write, sha256_text
from ..options import TAP_ORDER
from ..runs.groups import group_runs
from .fewshot import FEWSHOT_BUDGET, fewshot_curves

log = logging.getLogger(__name__)


#: The analysis record's layout; part of the cache key, so a record of an older
#: layout (schema 1: "efficiency" curves) is recomputed, never read as this one.
ANALYSIS_SCHEMA = 2


#: Seconds the few-shot fits may take (the name is older than the curves).
EFFICIENCY_BUDGET = FEWSHOT_BUDGET


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


def _tap_rank(tap) -> int:
    return TAP_ORDER.index(tap) if tap in TAP_ORDER else len(TAP_ORDER)


# ------------------------------------------------------------------ entry point


def analyse(records: list, budget: float = EFFICIENCY_BUDGET) -> dict:
    """The analyses of the best frozen run's store that the report shows (JSON-ready).

    ``{"store": path, "fewshot": {...}, "feature_map": {...}}``; see
    :func:`pipeline.workflows.fewshot.fewshot_curves` and :func:`feature_map`.
    """
    groups = group_runs(records)
    store = open_best_store(groups)
    return {"schema": ANALYSIS_SCHEMA, "kind": "analysis",
            "store": getattr(store, "path", None) and str(store.path),
            "fewshot": _fewshot(store, budget),
            "feature_map": feature_map(store)}


def load_or_analyse(records: list, runs_dir, budget: float = EFFICIENCY_BUDGET) -> dict:
    """:func:`analyse`, cached as ``<runs_dir>/analysis/<key>.json`` for these runs and budget."""
    key = sha256_text(json.dumps([sorted(r["run_id"] for r in records), budget,
                                  ANALYSIS_SCHEMA]))[:16]
    path = Path(runs_dir) / "analysis" / f"analysis-{key}.json"
    if path.is_file():
        try:
            return json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            log.warning("recomputing the analysis: %s is unreadable (%s)", path, exc)
    result = analyse(records, budget)
    if result["fewshot"].get("skipped"):
        return result  # cut short by the budget: not worth keeping
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(path, "w", encoding="utf-8") as fh:
        json.dump(result, fh)
    return result


# ------------------------------------------------------------------ few-shot curves


def _fewshot(store, budget: float) -> dict:
    """:func:`pipeline.workflows.fewshot.fewshot_curves` of ``store`` as
    :func:`open_best_store` returns it: a note instead when there is none or it
    cannot be read."""
    if store is None:
        return {"curves": {}, "skipped": [], "note": "No frozen-feature runs yet, so there "
                "are no cached features to refit heads on: run `python cli.py extract` and `fit`."}
    if isinstance(store, dict):
        return {"curves": {}, "skipped": [], "note": f"The feature store {store['missing']} "
                "of the best frozen run cannot be read, so the curves cannot be computed."}
    return fewshot_curves(store, budget=budget)


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
