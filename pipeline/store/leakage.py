"""Leakage check of a feature store: exact and near-duplicate image pairs.

Exact duplicates are files with the same SHA-256 (the store's ``/sha256``
column).  Near-duplicates are two different files showing one picture
(re-encoded, resized, recoloured, edited, re-framed).  No single cosine
threshold tells those apart from look-alikes on every kind of image (brain
MRI slices are as close at layer4 as copies of a flower photo are), so the
rule adapts to the store (docs/leakage.md):

1. **candidates, from the features**: each image's :data:`NEIGHBOURS` nearest
   other files by cosine of the L2-normalised pooled vectors at the store's
   deepest tap (``layer4`` when stored), cosine >= :data:`COS_FLOOR`.  A
   copy's original is among its nearest few however low their cosine (a
   resized copy's can be 0.6), so copies are among the candidates; most
   candidates are look-alikes.
2. **a candidate is a near-duplicate** when either
   - *the pixels confirm it*: the two files' 256-bit perceptual hashes
     (:mod:`pipeline.data.phash`) differ in at most the store's hash
     threshold, :data:`HASH_Z` robust standard deviations below the median
     distance of its candidate pairs (the look-alikes), within
     [:data:`HASH_MIN`, :data:`HASH_MAX`]; or
   - *the features single it out*: its cosine distance is
     :data:`OUTLIER_Z` robust standard deviations (of the log distance) below
     the store's nearest-neighbour distances: re-framed shots of one scene,
     which no global hash matches.

Only the images of candidate pairs are decoded: the most similar pairs first,
:data:`MAX_HASHED` images at most (about 1 ms each on 4 threads).
Features of a backbone without pretrained weights (``random-init``) mean
nothing: there every pair of images is compared by hash alone, at
:data:`HASH_MIN`, the distance plain copies always meet.  Similarities are
computed ``block`` rows against all at a time: memory is ``block x N`` floats,
not ``N x N``.  Each pair is told apart by where its two images sit: the same
or different split (train/val/test) and the same or different class.
"""

from __future__ import annotations

import logging
from collections import Counter, defaultdict
from typing import NamedTuple

import h5py
import numpy as np

from ..data.phash import FLAT, HASH_BITS, close_pairs, hamming, perceptual_hashes
from ..options import TAP_ORDER
from .hdf5 import reading

log = logging.getLogger(__name__)


#: Nearest other images per image that may become candidates.  A copy's original was
#: among the 5 nearest of each of 600 planted copies (re-encoded, resized, brightened,
#: cropped by 5%; flowers and brain MRI), the nearest of 598 of them (docs/leakage.md).
NEIGHBOURS = 5


#: Lowest cosine of a candidate pair whatever the store: the lowest a resized copy
#: (50% of its side) reached with its original at efficientnet_lite0 layer4 was 0.60.
COS_FLOOR = 0.5


#: The hash threshold never goes below this: re-encoded (JPEG q75), resized (to 50%)
#: and brightened (+10%) copies differ from their original in at most 8 of 256 bits,
#: on flower photos and brain MRI alike; different MRI slices in 12 or more.
HASH_MIN = 8


#: ... nor above this (a quarter of the bits): on full flowers every pair within 70
#: bits is one photo, re-edited or a burst shot; unrelated photos are about 128 apart.
HASH_MAX = 64


#: Robust standard deviations (1.4826 x MAD) of the candidate pairs' hash distances
#: that a confirmed pair must lie below their median.
HASH_Z = 4.0


#: Robust standard deviations (1.4826 x MAD of log(1 - cosine)) below the store's
#: median nearest-neighbour distance at which a pair is a near-duplicate without a
#: hash match: cosine >= 0.968 on full flowers (where the pairs above 0.97 were all
#: copies or re-framings of one photo), >= 0.980 on brain MRI (one pair).
OUTLIER_Z = 4.0


#: Candidate pairs needed to estimate the hash threshold (a median and a MAD); with
#: fewer it is HASH_MIN, the threshold that holds on any kind of image.
MIN_REFERENCE = 20


#: Images decoded and hashed at most (about 1 ms each on 4 threads): the most similar
#: pairs first; beyond, the check says how many pairs were left unconfirmed.
MAX_HASHED = 20_000


#: Near pairs kept (closest hashes first); the counts are always over every pair.
MAX_PAIRS = 5000


SPLITS = ("train", "val", "test")


#: Weights identities that start with this are not pretrained (pipeline.backbones).
RANDOM_WEIGHTS = "random-init"


def leakage_tap(taps) -> str:
    """``layer4`` if among ``taps`` (where the rule was measured), else the deepest of them."""
    if "layer4" in taps:
        return "layer4"
    return max(taps, key=lambda t: TAP_ORDER.index(t) if t in TAP_ORDER else -1)


def normalised(store, tap: str) -> np.ndarray:
    """``(n_images, C)`` float32 rows of ``tap`` scaled to unit length (zero rows stay 0)."""
    X = store.X(tap)
    norms = np.linalg.norm(X, axis=1, keepdims=True)
    return X / np.where(norms > 0, norms, 1.0)


def nearest_neighbours(Z: np.ndarray, k: int = NEIGHBOURS, block: int = 512):
    """Each row's ``k`` most similar other rows of ``Z`` (unit rows), most similar first.

    Returns ``(index (n, k') int64, cosine (n, k') float32)``, ``k' = min(k, n - 1)``.
    """
    n = len(Z)
    k = max(0, min(k, n - 1))
    index, cosine = np.zeros((n, k), np.int64), np.zeros((n, k), np.float32)
    if k < 1:
        return index, cosine
    for start in range(0, n, block):
        S = Z[start:start + block] @ Z.T                             # (b, n)
        S[np.arange(len(S)), np.arange(start, start + len(S))] = -np.inf   # not itself
        top = np.argpartition(-S, k - 1, axis=1)[:, :k]
        s = np.take_along_axis(S, top, axis=1)
        order = np.argsort(-s, axis=1, kind="stable")
        index[start:start + len(S)] = np.take_along_axis(top, order, axis=1)
        cosine[start:start + len(S)] = np.take_along_axis(s, order, axis=1)
    return index, cosine


class Candidates(NamedTuple):
    """Step 1 of the rule: ``pairs`` (m, 2) int64 with i < j, most similar first; their
    ``cosine`` (m,); ``nn_median``, the median of each image's cosine to its nearest
    other file; ``outlier_cut``, the cosine from which a pair is a near-duplicate on
    its features alone (None when the distances do not spread)."""

    pairs: np.ndarray
    cosine: np.ndarray
    nn_median: float | None
    outlier_cut: float | None


def candidate_pairs(Z: np.ndarray, sha256=None, k: int = NEIGHBOURS,
                    block: int = 512) -> Candidates:
    """:class:`Candidates` of the unit rows ``Z``: each row's ``k`` nearest other rows
    with cosine >= :data:`COS_FLOOR`, leaving out rows with the same ``sha256`` (an
    exact pair already, and no measure of how close *different* files come)."""
    n = len(Z)
    sha256 = np.asarray(sha256 if sha256 is not None else np.arange(n), dtype=object)
    index, cosine = nearest_neighbours(Z, k, block)
    other = (sha256[index] != sha256[:, None]) & (cosine >= COS_FLOOR)
    rows, slot = np.nonzero(other)
    pairs = np.sort(np.stack([rows, index[rows, slot]], axis=1), axis=1).reshape(-1, 2)
    pairs, first = np.unique(pairs, axis=0, return_index=True)   # (i, j) and (j, i) once
    sim = cosine[rows, slot][first]
    order = np.argsort(-sim, kind="stable")
    # each image's nearest *different file* (rows whose k nearest are all copies: none)
    different = sha256[index] != sha256[:, None]
    has = different.any(axis=1)
    if not has.any():           # fewer than two images, or all copies of one file
        return Candidates(pairs[order], sim[order], None, None)
    nearest = cosine[has, different[has].argmax(axis=1)]
    return Candidates(pairs[order], sim[order], float(np.median(nearest)),
                      outlier_cut(nearest))


def outlier_cut(nn_cosine: np.ndarray) -> float | None:
    """The cosine :data:`OUTLIER_Z` robust standard deviations of ``log(1 - cosine)``
    above the median of ``nn_cosine`` (each image's nearest-other cosine); None when
    half the images or more have a neighbour at the same distance (no spread)."""
    log_d = np.log(np.maximum(1.0 - nn_cosine.astype(np.float64), 1e-6))  # copies: d ~ 0
    median = float(np.median(log_d))
    sd = 1.4826 * float(np.median(np.abs(log_d - median)))
    if sd <= 0:
        return None
    return float(1.0 - np.exp(median - OUTLIER_Z * sd))


def hash_threshold(distances) -> tuple[int, dict]:
    """Step 2's threshold from the hash distances of the candidate pairs:
    ``median - HASH_Z x 1.4826 x MAD`` within [HASH_MIN, HASH_MAX] (HASH_MIN with
    fewer than :data:`MIN_REFERENCE` pairs); also returns the figures it came from."""
    d = np.asarray(distances, dtype=np.float64)
    if len(d) < MIN_REFERENCE:
        return HASH_MIN, {"reference_pairs": int(len(d)), "reference_median": None,
                          "reference_sd": None}
    median = float(np.median(d))
    sd = 1.4826 * float(np.median(np.abs(d - median)))
    h = int(np.clip(np.floor(median - HASH_Z * sd), HASH_MIN, HASH_MAX))
    return h, {"reference_pairs": int(len(d)), "reference_median": median,
               "reference_sd": round(sd, 2)}


def within_budget(pairs: np.ndarray, max_images: int) -> int:
    """How many of ``pairs`` (in order) can be checked while hashing at most
    ``max_images`` distinct images."""
    if not len(pairs):
        return 0
    _, first = np.unique(pairs.ravel(), return_index=True)
    if len(first) <= max_images:
        return len(pairs)
    return int(np.sort(first)[max_images] // 2)   # the pair bringing image max_images + 1


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


def is_pretrained(store) -> bool:
    """Whether the store's features come from trained weights (not ``random-init``)."""
    weights = str(store.config.get("weights") or store.attrs.get("weights") or "")
    return not weights.startswith(RANDOM_WEIGHTS)


def find_duplicates(store, tap: str | None = None, block: int = 512,
                    max_pairs: int = MAX_PAIRS, max_hashed: int = MAX_HASHED) -> dict:
    """Exact and near-duplicate pairs of ``store`` (a FeatureStore), JSON-ready.

    ``{"tap", "rule", "weights", "pretrained", "threshold", "nn_median", "n_candidates",
    "n_checked", "hash", "near_caveat", "n_images", "exact": counts, "near": counts,
    "pairs": [...], "n_pairs_kept", "test_with_train_duplicate": [test paths],
    "test_with_trainval_duplicate": [test paths], "oof_with_train_duplicate": [paths]}``.
    ``rule`` is ``"features+phash"`` (pretrained weights) or ``"phash"`` (every pair
    by hash; random weights), ``threshold`` the candidates' lowest cosine
    (:data:`COS_FLOOR`), ``outlier_cut`` the features-alone cosine, ``hash``
    the confirmation's figures (threshold in bits, images hashed, unreadable or flat
    ones), ``near_caveat`` a sentence when near pairs were not (all) looked for.
    A near pair is a pair of *different* files; counts are ``{"total", "cross_split",
    "cross_class", "by_split": {"train-test": n, ...}}``.  ``oof_with_train_duplicate``
    lists images with a partner in another cross-validation fold (repeat 0), i.e. in
    the training folds when that image is scored out of fold.
    """
    tap = tap or leakage_tap(store.taps)
    sha = store_sha256(store)
    exact = exact_pairs(sha)
    pretrained = is_pretrained(store)
    search = _by_features if pretrained else _by_hash_only
    near, info = search(store, tap, sha, block, max_hashed)
    # hash-confirmed first (closest hashes first), then the feature outliers, most similar first
    near.sort(key=lambda t: (t[3] is None, t[3] or 0, -(t[2] if t[2] is not None else 1.0)))
    n_near = len(near)
    near = near[:max_pairs]
    pairs = ([_pair(store, i, j, 1.0, 0, "exact", "sha256") for i, j in exact]
             + [_pair(store, i, j, s, h, "near", by) for i, j, s, h, by in near])
    out = {"tap": tap, "weights": store.config.get("weights"), "pretrained": pretrained,
           **info, "n_images": len(store), "exact": _counts(pairs, "exact"),
           "near": _counts(pairs, "near"), "n_pairs_kept": len(pairs), "pairs": pairs}
    out["near"]["total"] = n_near  # over every pair, not only the kept ones
    out["test_with_train_duplicate"] = _test_with(pairs)
    # a holdout frozen head is refitted on train + val: both are its training images
    out["test_with_trainval_duplicate"] = _test_with(pairs, ("train", "val"))
    out["oof_with_train_duplicate"] = _oof_with_train(store, exact, near)
    return out


def _by_features(store, tap, sha, block, max_hashed):
    """Near pairs ``[(i, j, cosine, bits or None, by)]`` by the two-step rule, and its figures."""
    c = candidate_pairs(normalised(store, tap), sha, NEIGHBOURS, block)
    cand, cos = c.pairs, c.cosine
    n_checked = within_budget(cand, max_hashed)
    hashes, valid, hash_info = _hash_images(store, np.unique(cand[:n_checked]))
    i, j = cand[:, 0], cand[:, 1]
    hashed = valid[i] & valid[j]                  # False beyond the budget: nothing hashed
    bits = hamming(hashes[i], hashes[j])
    h, reference = hash_threshold(bits[hashed])
    by_hash = hashed & (bits <= h)
    by_features = (cos >= c.outlier_cut) if c.outlier_cut is not None else np.zeros_like(hashed)
    near = [(int(a), int(b), float(s), int(d) if ok else None,
             "hash+features" if bh and bf else "hash" if bh else "features")
            for a, b, s, d, ok, bh, bf in zip(i, j, cos, bits, hashed, by_hash, by_features)
            if bh or bf]
    caveats = []
    if n_checked < len(cand):
        caveats.append(f"only the {n_checked:,} most similar of {len(cand):,} candidate pairs "
                       f"were compared by hash (at most {max_hashed:,} images are hashed)")
    unhashed = int((~hashed[:n_checked]).sum())
    if unhashed:
        caveats.append(f"{unhashed:,} candidate pair(s) could not be compared by hash: an "
                       f"image was unreadable under {store.data_root} or flat (e.g. "
                       f"{hash_info['problems'][0]})")
    return near, {"rule": "features+phash", "threshold": COS_FLOOR,
                  "nn_median": round(c.nn_median, 4) if c.nn_median is not None else None,
                  "outlier_cut": round(c.outlier_cut, 6) if c.outlier_cut is not None else None,
                  "neighbours": NEIGHBOURS, "n_candidates": int(len(cand)),
                  "n_checked": int(n_checked), "n_by_hash": int(by_hash.sum()),
                  "n_by_features": int(by_features.sum()),
                  "hash": {**hash_info, "threshold": h, **reference},
                  "near_caveat": "; ".join(caveats) or None}


def _by_hash_only(store, tap, sha, block, max_hashed):
    """Near pairs ``[(i, j, None, bits)]`` of a store whose features mean nothing:
    every pair of images by hash at :data:`HASH_MIN`, and the figures."""
    why = (f"the features come from weights {store.config.get('weights')!r}, not "
           f"pretrained ones, so their similarities mean nothing")
    info = {"rule": "phash", "threshold": None, "nn_median": None, "outlier_cut": None,
            "neighbours": None, "n_candidates": None, "n_checked": None}
    if len(store) > max_hashed:
        return [], {**info, "hash": None, "near_caveat": (
            f"near-duplicates not searched: {why}, and comparing all {len(store):,} images "
            f"by perceptual hash is over the {max_hashed:,}-image limit")}
    hashes, valid, hash_info = _hash_images(store, np.arange(len(store)))
    rows = np.flatnonzero(valid)           # an unhashed image's zero row would match others
    ij, bits = close_pairs(hashes[rows], HASH_MIN)
    near = [(int(rows[a]), int(rows[b]), None, int(d), "hash") for (a, b), d in zip(ij, bits)
            if sha[rows[a]] != sha[rows[b]]]
    return near, {**info, "hash": {**hash_info, "threshold": HASH_MIN},
                  "near_caveat": f"near-duplicates by perceptual hash only ({why})"}


def _hash_images(store, rows):
    """Hashes of the images ``rows`` of ``store``: ``(hashes (n_images, 32) uint8,
    valid (n_images,) bool, figures)``; rows not hashed are zeros and not valid."""
    hashes = np.zeros((len(store), HASH_BITS // 8), np.uint8)
    valid = np.zeros(len(store), bool)
    found, problems = perceptual_hashes(store.data_root, [store.paths[r] for r in rows])
    hashes[rows] = found
    valid[rows] = [p is None for p in problems]
    flat = sum(1 for p in problems if p and p.startswith(FLAT))
    bad = [f"{store.paths[r]}: {p}" for r, p in zip(rows, problems) if p]
    if bad:
        log.info("perceptual hash: %d of %d image(s) not hashed, e.g. %s", len(bad),
                 len(rows), bad[0])
    return hashes, valid, {"name": f"phash {HASH_BITS} bits", "hashed": int(len(rows)),
                           "unreadable": len(bad) - flat, "flat": flat, "problems": bad[:3]}


def _pair(store, i: int, j: int, similarity, bits, kind: str, by: str) -> dict:
    si, sj = SPLITS[store.split_codes[i]], SPLITS[store.split_codes[j]]
    ci, cj = store.classes[store.labels[i]], store.classes[store.labels[j]]
    return {"kind": kind, "similarity": None if similarity is None else round(similarity, 4),
            "hash_distance": bits, "by": by,
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


def near_rule_text(found: dict) -> str:
    """How the near pairs of ``found`` were found, in one clause (log and report)."""
    hash_ = found.get("hash") or {}
    if found.get("rule") == "phash":
        if not hash_:
            return "not searched"
        return (f"every pair compared by perceptual hash: at most {hash_['threshold']} of "
                f"{HASH_BITS} bits apart")
    outlier = (f"{found['n_by_features']} by their features alone (cosine >= "
               f"{cosine_text(found['outlier_cut'])})" if found.get("outlier_cut") is not None
               else "none by features alone (their distances do not spread)")
    return (f"of {found['n_candidates']:,} candidate pairs (each image's "
            f"{found['neighbours']} nearest at {found['tap']}, cosine >= "
            f"{found['threshold']}), "
            f"{found['n_by_hash']} confirmed by perceptual hash (at most "
            f"{hash_['threshold']} of {HASH_BITS} bits apart) and {outlier}")


def cosine_text(cosine: float) -> str:
    """``cosine`` to 4 decimals, or 6 when 4 would round it to 1 (a toy net's flat images)."""
    return f"{cosine:.4f}" if cosine < 0.99995 else f"{cosine:.6f}"


def summary_line(found: dict) -> str:
    """One sentence of counts for the extract log."""
    e, n = found["exact"], found["near"]
    caveat = f"; {found['near_caveat']}" if found.get("near_caveat") else ""
    return (f"{e['total']} exact-duplicate pair(s) ({e['cross_split']} across splits, "
            f"{e['cross_class']} across classes) and {n['total']} near-duplicate pair(s) "
            f"({n['cross_split']} across splits, {n['cross_class']} across classes; "
            f"{near_rule_text(found)}); "
            f"{len(found['test_with_train_duplicate'])} test image(s) have one in training, "
            f"{len(found['test_with_trainval_duplicate'])} in training or validation"
            + caveat)
