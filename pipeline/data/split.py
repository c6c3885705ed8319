"""The fixed, stratified train/val/test split of a manifest, and its cross-validation folds.

:func:`assign_split` orders each class by a hash of ``(seed, path)`` and fills
the split quotas in that order, so the split depends on neither file order
nor machine, and images already assigned keep their split when images are
added.  :func:`assign_folds` does the same for repeated stratified K-fold
cross-validation: ``n_repeats`` independent assignments of every image to one
of ``n_folds`` folds, balanced within each class; images added later fill the
smallest folds of their class and earlier images keep their folds.
"""

from __future__ import annotations

import hashlib

import numpy as np

from ..errors import DataError
from ..options import DEFAULT_FRACTIONS

SPLIT_NAMES = ("train", "val", "test")


SPLIT_CODES = {name: code for code, name in enumerate(SPLIT_NAMES)}



def _split_counts(n: int, fractions) -> tuple[int, int, int]:
    """Train/val/test counts for a class of ``n`` images; val and test get >= 1 (none when
    their fraction is 0: validation drawn from a given training split)."""
    n_val = max(1, int(round(n * fractions[1]))) if fractions[1] > 0 else 0
    n_test = max(1, int(round(n * fractions[2]))) if fractions[2] > 0 else 0
    return n - n_val - n_test, n_val, n_test


def _rank_key(seed: int, relpath: str) -> str:
    return hashlib.sha256(f"{seed}\0{relpath}".encode()).hexdigest()


def assign_split(paths, labels, seed: int = 0, fractions=DEFAULT_FRACTIONS,
                 previous: dict | None = None) -> np.ndarray:
    """Stratified split codes (0 train, 1 val, 2 test), shape ``(n_images,)``.

    Within each class, images are ordered by a hash of ``(seed, path)`` and
    the split quotas filled in that order, so the split depends on neither
    file order nor machine.  ``previous`` maps a path to a split code already
    fixed (from a store); those images keep it and only new images fill what
    the enlarged class's quotas still lack, so adding images never moves a
    test image into training.
    """
    if abs(sum(fractions) - 1.0) > 1e-6 or min(fractions) < 0:
        raise DataError(f"split fractions {fractions} must be >= 0 and sum to 1")
    labels = np.asarray(labels)
    previous = previous or {}
    split = np.full(len(paths), -1, dtype=np.int8)
    for label in np.unique(labels):
        members = np.flatnonzero(labels == label)
        targets = list(_split_counts(len(members), fractions))
        fresh = []
        for i in members:
            code = previous.get(paths[i])
            if code is None:
                fresh.append(i)
            else:
                split[i] = code
                targets[code] -= 1
        fresh.sort(key=lambda i: _rank_key(seed, paths[i]))
        # Fill test first, then val, so evaluation splits are never starved.
        order = [2, 1, 0]
        for i in fresh:
            code = next((c for c in order if targets[c] > 0), 0)
            split[i] = code
            targets[code] -= 1
    return split


#: Repeated stratified K-fold of every store: 5 folds x 3 repeats (docs/protocols.md).
CV_FOLDS = 5
CV_REPEATS = 3


def assign_folds(paths, labels, n_folds: int = CV_FOLDS, n_repeats: int = CV_REPEATS,
                 seed: int = 0, previous: dict | None = None) -> np.ndarray:
    """Fold ids ``(n_images, n_repeats)`` int8: repeat ``r`` puts image ``i`` in fold ``[i, r]``.

    Within each class and repeat, images are ordered by a hash of ``(seed, r,
    path)`` and dealt to the folds in turn from a class-dependent offset (so
    small classes do not all start in fold 0).  ``previous`` maps a path to
    its fold ids already fixed (from a store); those keep them, and new images
    go one by one to the fold of their class with the fewest images.
    """
    if n_folds < 2 or n_repeats < 1:
        raise DataError(f"cross-validation needs n_folds >= 2 and n_repeats >= 1, got "
                        f"{n_folds} and {n_repeats}")
    labels = np.asarray(labels)
    previous = previous or {}
    folds = np.full((len(paths), n_repeats), -1, dtype=np.int8)
    for r in range(n_repeats):
        for label in np.unique(labels):
            members = np.flatnonzero(labels == label)
            counts = np.zeros(n_folds, dtype=np.int64)
            fresh = []
            for i in members:
                old = previous.get(paths[i])
                if old is not None and len(old) > r and 0 <= old[r] < n_folds:
                    folds[i, r] = old[r]
                    counts[old[r]] += 1
                else:
                    fresh.append(i)
            fresh.sort(key=lambda i: _rank_key(f"{seed}/fold{r}", paths[i]))
            offset = int(_rank_key(f"{seed}/fold{r}", f"class {label}")[:8], 16) % n_folds
            for i in fresh:
                # fewest images first; ties in turn from the class's offset
                fold = min(range(n_folds), key=lambda f: (counts[f], (f - offset) % n_folds))
                folds[i, r] = fold
                counts[fold] += 1
    return folds


def inner_validation_split(labels, rows, seed: int = 0, fraction: float = 0.15):
    """``rows`` split into ``(training rows, validation rows)``, stratified by ``labels[rows]``
    when every class has two images there; both sorted.  For early stopping inside an
    outer cross-validation training fold.

    Stratified, the validation rows are ``fraction`` of ``rows`` but at least one per
    class (a fold of 3 classes x 2 images validates on 3 of its 6, not on 1, which no
    stratified split can draw); otherwise ``fraction`` of them, at least one.
    :class:`DataError` when ``rows`` hold fewer than 2 images."""
    from sklearn.model_selection import train_test_split

    rows = np.asarray(rows)
    if len(rows) < 2:
        raise DataError(f"a cross-validation training fold holds {len(rows)} image(s): nothing "
                        "to validate on; add images or use --protocol holdout",
                        param="protocol")
    y = np.asarray(labels)[rows]
    counts = np.bincount(y)
    present = counts[counts > 0]
    stratify = y if present.min() >= 2 else None
    n_val = max(1, int(np.ceil(fraction * len(rows))))
    if stratify is not None:
        n_val = max(n_val, len(present))
    tr, va = train_test_split(rows, test_size=n_val, random_state=seed, stratify=stratify)
    return np.sort(tr), np.sort(va)


def draw_rows(labels, k: int, draws: int, seed: int = 0) -> list:
    """``draws`` random draws of exactly ``k`` rows per class of ``labels`` (shape (n,)).

    Returns a list of ``(k * n_classes,)`` int64 row indices, sorted.  Draw
    ``d`` gives every row a random key from ``(seed, d)`` and takes the k
    lowest-keyed rows of each class, so the draws of one ``d`` are nested
    across k (the 2-shot draw holds the 1-shot one) and depend only on the
    labels, never on the features.
    """
    labels = np.asarray(labels)
    out = []
    for d in range(draws):
        keys = np.random.default_rng([seed, d]).random(len(labels))
        picked = [np.flatnonzero(labels == c)[np.argsort(keys[labels == c], kind="stable")[:k]]
                  for c in np.unique(labels)]
        out.append(np.sort(np.concatenate(picked)).astype(np.int64))
    return out
