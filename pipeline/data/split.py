"""The fixed, stratified train/val/test split of a manifest.

:func:`assign_split` orders each class by a hash of ``(seed, path)`` and fills
the split quotas in that order, so the split depends on neither file order
nor machine, and images already assigned keep their split when images are
added.
"""

from __future__ import annotations

import hashlib

import numpy as np

from ..errors import DataError

SPLIT_NAMES = ("train", "val", "test")


SPLIT_CODES = {name: code for code, name in enumerate(SPLIT_NAMES)}


DEFAULT_FRACTIONS = (0.70, 0.15, 0.15)


def _split_counts(n: int, fractions) -> tuple[int, int, int]:
    """Train/val/test counts for a class of ``n`` images; val and test get >= 1."""
    n_val = max(1, int(round(n * fractions[1])))
    n_test = max(1, int(round(n * fractions[2])))
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
