"""Statistics of accuracies and of paired comparisons: intervals and tests.
"""

from __future__ import annotations

import numpy as np


def wilson_interval(correct: int, n: int, z: float = 1.959964) -> tuple[float, float]:
    """95% Wilson score interval for a proportion ``correct / n``."""
    if n == 0:
        return (0.0, 1.0)
    p = correct / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return (float(max(0.0, centre - half)), float(min(1.0, centre + half)))


def mcnemar_exact(correct_a, correct_b) -> dict:
    """Exact McNemar test on paired per-image correctness (bool arrays, same images).

    ``b`` = images A got right and B wrong, ``c`` = the reverse; the two-sided
    p-value is the binomial probability of a split at least as uneven as
    ``b : c`` under p = 0.5.
    """
    from scipy.stats import binomtest

    a = np.asarray(correct_a, dtype=bool)
    b_ = np.asarray(correct_b, dtype=bool)
    if a.shape != b_.shape:
        raise ValueError(f"paired arrays differ in shape: {a.shape} vs {b_.shape}")
    b = int(np.sum(a & ~b_))
    c = int(np.sum(~a & b_))
    p = 1.0 if b + c == 0 else float(binomtest(b, b + c, 0.5).pvalue)
    return {"a_only": b, "b_only": c, "p_value": min(1.0, p)}


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
