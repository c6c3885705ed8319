"""Class balance of a set of labels: when the workbench calls data imbalanced.

One rule for every layer: classes are *imbalanced* when the largest has more
than :data:`IMBALANCE_RATIO` times the images of the smallest.  ``extract``
warns then, and the selection metric and class weighting read it.
"""

from __future__ import annotations

import numpy as np

#: Largest class over smallest class above which the data counts as imbalanced.
IMBALANCE_RATIO = 1.5


def class_counts(labels, n_classes: int | None = None) -> np.ndarray:
    """Images per class ``(n_classes,)`` of integer ``labels``."""
    labels = np.asarray(labels, dtype=np.int64)
    return np.bincount(labels, minlength=n_classes or (int(labels.max()) + 1 if len(labels)
                                                       else 0))


def imbalance_ratio(labels, n_classes: int | None = None, counts: bool = False) -> float:
    """Largest class count over smallest (of the classes present); 1.0 for no labels.
    ``counts``: ``labels`` already are the images per class."""
    counts = np.asarray(labels) if counts else class_counts(labels, n_classes)
    counts = counts[counts > 0]
    return float(counts.max() / counts.min()) if len(counts) else 1.0


def is_imbalanced(labels, n_classes: int | None = None) -> bool:
    """Whether the largest class has more than :data:`IMBALANCE_RATIO` x the smallest."""
    return imbalance_ratio(labels, n_classes) > IMBALANCE_RATIO
