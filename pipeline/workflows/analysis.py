"""Analyses of a feature store that the report shows: few-shot curves, feature map,
leakage check (duplicate pairs).

They fit models (heads on a few images per class, a PCA), so they run here, in a workflow,
and are saved as an analysis record beside the run records; the report only
reads that record.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np

from ..errors import StoreError, WorkbenchError, program
from ..files import atomic_write, sha256_text
from ..options import TAP_ORDER
from ..runs.groups import group_runs
from ..runs.records import store_candidates
from .fewshot import FEWSHOT_BUDGET, fewshot_curves

log = logging.getLogger(__name__)


#: The analysis record's layout; part of the cache key, so a record of an older
#: layout (schema 1: "efficiency" curves) is recomputed, never read as this one.
ANALYSIS_SCHEMA = 4  # 3: adds "leakage"; 4: its store-adaptive near rule


#: Seconds the few-shot fits may take (the name is older than the curves).
EFFICIENCY_BUDGET = FEWSHOT_BUDGET


#: Duplicate pairs kept in the analysis record (cross-split pairs first); counts cover all.
LEAKAGE_PAIRS_KEPT = 200


#: Test points drawn per panel of the feature map.
FEATURE_MAP_MAX_POINTS = 1500


def locate_store(record, runs_dir=None) -> dict:
    """The feature store ``record`` was fit on, found and checked.

    Tries :func:`pipeline.runs.records.store_candidates` in order and takes the
    first file whose fingerprint is the recorded one.  Returns ``{"store":
    FeatureStore or None, "status", "path", "note"}``: status ``ok``, ``different``
    (a store is there but it is another one: re-extracted or replaced),
    ``unreadable`` or ``missing``; ``note`` (None when ok) is the sentence the
    report shows, and is logged as a warning.
    """
    from ..store.hdf5 import FeatureStore

    recorded = record.features.get("path")
    want = record.features.get("fingerprint")
    candidates = store_candidates(record, runs_dir)
    different = unreadable = None
    for path in candidates:
        if not path.is_file():
            continue
        try:
            store = FeatureStore(path)
        except (StoreError, OSError) as exc:
            unreadable = unreadable or (path, exc)
            continue
        if want and store.fingerprint != want:
            different = different or (path, store.fingerprint)
            continue
        if not want:
            log.warning("run %s does not record its store's fingerprint; using %s unchecked",
                        record.run_id, path)
        elif str(path) != recorded:
            log.info("feature store %s of run %s found at %s", recorded, record.run_id, path)
        split = record.split
        try:  # the split the run was judged on (its seed and group rule), not the stored one
            store.use_split(split.get("seed"), split.get("groups"))
        except WorkbenchError as exc:
            log.warning("the split of run %s cannot be rebuilt (%s); using the stored split",
                        record.run_id, exc)
        return {"store": store, "status": "ok", "path": str(path), "note": None}
    if different:
        path, found = different
        status, note = "different", (
            f"The feature store at {path} has fingerprint {found[:16]}, not the store the "
            f"best frozen run was fit on (fingerprint {want[:16]}): it was re-extracted or "
            "replaced, so it is not used here. Restore that store, or fit the heads again "
            "on this one.")
    elif unreadable:
        path, exc = unreadable
        status, note = "unreadable", (f"The feature store {path} of the best frozen run "
                                      f"cannot be read ({exc}).")
    else:
        path = recorded
        looked = ", ".join(str(p) for p in candidates) or "nowhere: the run names no store"
        status, note = "missing", (
            f"The feature store {recorded} of the best frozen run is missing (looked at "
            f"{looked}); restore it, or run `{program()} extract` and `fit` again.")
    log.warning("%s", note)
    return {"store": None, "status": status, "path": str(path), "note": note}


def open_best_store(groups: list, runs_dir=None):
    """:func:`locate_store` of the best frozen run; None without one."""
    frozen = [g for g in groups if g["kind"] == "frozen"]
    return locate_store(frozen[0]["rep"], runs_dir) if frozen else None


def _tap_rank(tap) -> int:
    return TAP_ORDER.index(tap) if tap in TAP_ORDER else len(TAP_ORDER)


# ------------------------------------------------------------------ entry point


def analyse(records: list, budget: float = EFFICIENCY_BUDGET, runs_dir=None) -> dict:
    """The analyses of the best frozen run's store that the report shows (JSON-ready).

    ``{"store": path, "store_status": ok | different | unreadable | missing | None,
    "fewshot": {...}, "feature_map": {...}}``; see :func:`locate_store`,
    :func:`pipeline.workflows.fewshot.fewshot_curves` and :func:`feature_map`.
    ``runs_dir`` is where ``records`` were read, for stores named by relative paths.
    """
    groups = group_runs(records)
    found = open_best_store(groups, runs_dir)
    store = found and (found["store"] or {"note": found["note"]})
    return {"schema": ANALYSIS_SCHEMA, "kind": "analysis",
            "store": found and found["path"], "store_status": found and found["status"],
            "fewshot": _fewshot(store, budget),
            "feature_map": feature_map(store), "leakage": leakage(store)}


def load_or_analyse(records: list, runs_dir, budget: float = EFFICIENCY_BUDGET) -> dict:
    """:func:`analyse`, cached as ``<runs_dir>/analysis/<key>.json`` for these runs and budget."""
    key = sha256_text(json.dumps([sorted(r.run_id for r in records), budget,
                                  ANALYSIS_SCHEMA]))[:16]
    path = Path(runs_dir) / "analysis" / f"analysis-{key}.json"
    if path.is_file():
        try:
            cached = json.loads(path.read_text(encoding="utf-8"))
            if isinstance(cached, dict) and {"fewshot", "feature_map", "leakage"} <= cached.keys():
                return cached
            log.warning("recomputing the analysis: %s is not an analysis record", path)
        except (OSError, ValueError) as exc:
            log.warning("recomputing the analysis: %s is unreadable (%s)", path, exc)
    result = analyse(records, budget, runs_dir)
    if result["fewshot"].get("skipped") or result["store_status"] not in (None, "ok"):
        return result  # cut short by the budget, or no store to analyse: not worth keeping
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_write(path, "w", encoding="utf-8") as fh:
            json.dump(result, fh)
    except OSError as exc:  # a cache: the report does not need it
        log.warning("the analysis is not cached: cannot write %s (%s)", path, exc)
    return result


# ------------------------------------------------------------------ few-shot curves


def _fewshot(store, budget: float) -> dict:
    """The JSON of :func:`pipeline.workflows.fewshot.fewshot_curves` of ``store`` (None:
    no frozen run; ``{"note"}``: :func:`locate_store` found no usable store): a note
    instead when there is none."""
    if store is None:
        return {"curves": {}, "skipped": [], "note": "No frozen-feature runs yet, so there "
                f"are no cached features to refit heads on: run `{program()} extract` and `fit`."}
    if isinstance(store, dict):
        return {"curves": {}, "skipped": [],
                "note": f"{store['note']} The curves cannot be computed without it."}
    return fewshot_curves(store, budget=budget).to_dict()


# ------------------------------------------------------------------ feature map


def feature_map(store) -> dict:
    """PCA (after standardising) of the test features at each tap: ``panels`` of
    ``{title, xy (n, 2), labels (n,)}`` for the report to draw."""
    if store is None:
        return {"panels": [], "note": "No frozen-feature runs yet, so no feature store "
                f"to project: run `{program()} extract` and `fit`."}
    if isinstance(store, dict):
        return {"panels": [], "note": store["note"]}
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


# ------------------------------------------------------------------ leakage check


def leakage(store) -> dict:
    """:func:`pipeline.store.leakage.find_duplicates` of ``store``, its pairs cut to
    :data:`LEAKAGE_PAIRS_KEPT` (those that cross a split first), or a ``note``."""
    if store is None:
        return {"pairs": [], "note": "No frozen-feature runs yet, so no feature store to "
                f"check for duplicates: run `{program()} extract` and `fit`."}
    if isinstance(store, dict):
        return {"pairs": [], "note": store["note"]}
    from ..store.leakage import find_duplicates

    found = find_duplicates(store)
    # the order find_duplicates gave (exact, then near by hash distance) within each group
    found["pairs"] = sorted(found["pairs"], key=lambda p: (
        not p["cross_split"], p["kind"] != "exact"))[:LEAKAGE_PAIRS_KEPT]
    return {**found, "data_root": str(store.data_root), "store": str(store.path),
            "backbone": store.attrs.get("backbone"), "split_sizes": store.split_sizes(),
            "note": None}
