"""Leakage check of a feature store: exact and near-duplicate image pairs.

Exact duplicates are files with the same SHA-256 (the store's ``/sha256``
column); near-duplicates are pairs whose pooled vectors at the store's deepest
tap (``layer4`` when stored: the tap the threshold was calibrated on) have a
cosine similarity of at least :data:`NEAR_THRESHOLD` after L2 normalisation.
Similarities are computed as a blockwise matrix product, ``block`` rows
against every row at a time, so memory is ``block x N`` floats, not ``N x N``.
Every pair is told apart by where its two images sit: the same or different
split (train/val/test) and the same or different class.  numpy only, no torch.
"""

from __future__ import annotations

import logging
from collections import Counter, defaultdict

import h5py
import numpy as np

from ..options import TAP_ORDER
from .hdf5 import reading

log = logging.getLogger(__name__)


#: Cosine similarity (L2-normalised efficientnet_lite0 layer4, avg-pooled) at or above
#: which two different files are called near-duplicates; calibrated on the full
#: flowers set (README "Leakage check": the distribution and the pairs looked at).
NEAR_THRESHOLD = 0.95


#: Backbone and tap the threshold was calibrated on; the tap is used when the store holds it.
CALIBRATED_BACKBONE, CALIBRATED_TAP = "efficientnet_lite0", "layer4"


#: Near pairs kept (most similar first); the counts are always over every pair.
MAX_PAIRS = 5000


SPLITS = ("train", "val", "test")


def leakage_tap(taps) -> str:
    """:data:`CALIBRATED_TAP` if among ``taps``, else the deepest of them."""
    if CALIBRATED_TAP in taps:
        return CALIBRATED_TAP
    return max(taps, key=lambda t: TAP_ORDER.index(t) if t in TAP_ORDER else -1)


def normalised(store, tap: str) -> np.ndarray:
    """``(n_images, C)`` float32 rows of ``tap`` scaled to unit length (zero rows stay 0)."""
    X = store.X(tap)
    norms = np.linalg.norm(X, axis=1, keepdims=True)
    return X / np.where(norms > 0, norms, 1.0)


def near_pairs(Z: np.ndarray, threshold: float, block: int = 512, max_pairs: int = MAX_PAIRS):
    """Pairs ``i < j`` of rows of ``Z`` (unit rows) with ``Z[i] . Z[j] >= threshold``.

    Returns ``(pairs (m, 2) int64, similarity (m,) float32, n_total)``: the
    ``max_pairs`` most similar of the ``n_total`` found.
    """
    ij, s, n_total = np.zeros((0, 2), np.int64), np.zeros(0, np.float32), 0
    n = len(Z)
    for start in range(0, n, block):
        S = Z[start:start + block] @ Z.T                    # (b, n)
        rows, cols = np.nonzero(S >= threshold)
        keep = cols > rows + start                           # upper triangle only
        rows, cols = rows[keep], cols[keep]
        n_total += len(rows)
        ij = np.concatenate([ij, np.stack([rows + start, cols], axis=1)])
        s = np.concatenate([s, S[rows, cols].astype(np.float32)])
        if len(s) > max_pairs:  # keep memory bounded by max_pairs, not by the pairs found
            top = np.argpartition(-s, max_pairs - 1)[:max_pairs]
            ij, s = ij[top], s[top]
    order = np.argsort(-s, kind="stable")[:max_pairs]
    return ij[order], s[order], n_total


def nearest_similarity(Z: np.ndarray, block: int = 512) -> np.ndarray:
    """``(n_images,)`` each row's highest cosine similarity to any other row (calibration)."""
    best = np.full(len(Z), -1.0, dtype=np.float32)
    for start in range(0, len(Z), block):
        S = Z[start:start + block] @ Z.T
        S[np.arange(len(S)), np.arange(start, start + len(S))] = -1.0
        best[start:start + len(S)] = S.max(axis=1)
    return best


def exact_pairs(sha256) -> list:
    """Pairs ``(i, j)``, ``i < j``, of rows with the same file hash."""
    groups = defaultdict(list)
    for i, digest in enumerate(sha256):
        groups[digest].append(i)
    return [(a, b) for rows in groups.values() if len(rows) > 1
            for k, a in enumerate(rows) for b in rows[k + 1:]]


def store_sha256(store) -> list:
    with reading(store.path), h5py.File(store.path, "r") as f:
        return [s.decode() if isinstance(s, bytes) else s for s in f["sha256"][()]]


def find_duplicates(store, threshold: float = NEAR_THRESHOLD, tap: str | None = None,
                    block: int = 512, max_pairs: int = MAX_PAIRS) -> dict:
    """Exact and near-duplicate pairs of ``store`` (a FeatureStore), JSON-ready.

    ``{"tap", "threshold", "calibrated", "n_images", "exact": counts, "near": counts,
    "pairs": [...], "n_pairs_kept", "test_with_train_duplicate": [test paths],
    "test_with_trainval_duplicate": [test paths], "oof_with_train_duplicate":
    [paths]}``.  A near pair is a pair of
    *different* files; counts are ``{"total", "cross_split", "cross_class",
    "by_split": {"train-test": n, ...}}``.  ``oof_with_train_duplicate`` lists
    images with a partner in another cross-validation fold (repeat 0), i.e. in
    the training folds when that image is scored out of fold.
    """
    tap = tap or leakage_tap(store.taps)
    sha = store_sha256(store)
    exact = exact_pairs(sha)
    ij, sim, n_near_all = near_pairs(normalised(store, tap), threshold, block, max_pairs)
    same_file = np.array([sha[i] == sha[j] for i, j in ij], dtype=bool)
    n_near = n_near_all - int(same_file.sum())
    near = [(int(i), int(j), float(s)) for (i, j), s, same in zip(ij, sim, same_file)
            if not same]
    pairs = ([_pair(store, i, j, 1.0, "exact") for i, j in exact]
             + [_pair(store, i, j, s, "near") for i, j, s in near])
    kept_exact = _counts(pairs, "exact")
    out = {"tap": tap, "threshold": threshold, "n_images": len(store),
           "calibrated": threshold == NEAR_THRESHOLD and is_calibrated(store, tap),
           "exact": kept_exact, "near": _counts(pairs, "near"),
           "n_pairs_kept": len(pairs), "pairs": pairs}
    out["near"]["total"] = n_near  # over every pair, not only the kept ones
    out["test_with_train_duplicate"] = _test_with(pairs)
    # a holdout frozen head is refitted on train + val: both are its training images
    out["test_with_trainval_duplicate"] = _test_with(pairs, ("train", "val"))
    out["oof_with_train_duplicate"] = _oof_with_train(store, exact, near)
    return out


def is_calibrated(store, tap: str) -> bool:
    """Whether ``tap`` of ``store`` is what :data:`NEAR_THRESHOLD` was calibrated on
    (:data:`CALIBRATED_BACKBONE` with its ImageNet weights, :data:`CALIBRATED_TAP`)."""
    from ..backbones import get_backbone

    if tap != CALIBRATED_TAP or store.config.get("backbone") != CALIBRATED_BACKBONE:
        return False
    return store.config.get("weights") == get_backbone(CALIBRATED_BACKBONE).imagenet_identity()


def _pair(store, i: int, j: int, similarity: float, kind: str) -> dict:
    si, sj = SPLITS[store.split_codes[i]], SPLITS[store.split_codes[j]]
    ci, cj = store.classes[store.labels[i]], store.classes[store.labels[j]]
    return {"kind": kind, "similarity": round(similarity, 4),
            "a": {"path": store.paths[i], "split": si, "class": ci},
            "b": {"path": store.paths[j], "split": sj, "class": cj},
            "splits": "-".join(sorted((si, sj), key=SPLITS.index)),
            "cross_split": si != sj, "cross_class": ci != cj}


def _counts(pairs, kind: str) -> dict:
    mine = [p for p in pairs if p["kind"] == kind]
    by_split = Counter(p["splits"] for p in mine)
    return {"total": len(mine), "cross_split": sum(p["cross_split"] for p in mine),
            "cross_class": sum(p["cross_class"] for p in mine),
            "by_split": {f"{a}-{b}": by_split.get(f"{a}-{b}", 0)
                         for k, a in enumerate(SPLITS) for b in SPLITS[k:]}}


def _test_with(pairs, splits=("train",)) -> list:
    """Test images with an exact or near-duplicate in one of ``splits``."""
    out = set()
    for p in pairs:
        for x, y in ((p["a"], p["b"]), (p["b"], p["a"])):
            if x["split"] == "test" and y["split"] in splits:
                out.add(x["path"])
    return sorted(out)


def _oof_with_train(store, exact, near) -> list:
    """Images whose duplicate sits in another fold of cross-validation repeat 0."""
    folds = store.folds[:, 0]
    out = set()
    for i, j, *_ in [*exact, *near]:
        if folds[i] != folds[j]:
            out.update((store.paths[i], store.paths[j]))
    return sorted(out)


def summary_line(found: dict) -> str:
    """One sentence of counts for the extract log."""
    e, n = found["exact"], found["near"]
    caveat = ("" if found["calibrated"] else f" (threshold calibrated on {CALIBRATED_BACKBONE} "
              f"ImageNet {CALIBRATED_TAP}: only indicative here)")
    return (f"{e['total']} exact-duplicate pair(s) ({e['cross_split']} across splits, "
            f"{e['cross_class']} across classes) and {n['total']} near-duplicate pair(s) "
            f"(cosine >= {found['threshold']} at {found['tap']}; {n['cross_split']} across "
            f"splits, {n['cross_class']} across classes); "
            f"{len(found['test_with_train_duplicate'])} test image(s) have one in training, "
            f"{len(found['test_with_trainval_duplicate'])} in training or validation"
            + caveat)
