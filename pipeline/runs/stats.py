"""Statistics of accuracies and of paired comparisons: intervals and tests.
"""

from __future__ import annotations

import math

import numpy as np


def wilson_interval(correct: int, n: int, z: float = 1.959964) -> tuple[float, float]:
    """95% Wilson score interval for a proportion ``correct / n``."""
    if n == 0:
        return (0.0, 1.0)
    p = correct / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    # rounding can put an end a hair on the wrong side of p (0.9999999 at n of n)
    return (float(min(p, max(0.0, centre - half))), float(max(p, min(1.0, centre + half))))


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


# Nadeau-Bengio corrected resampled t statistics. The J folds of a repeated
# k-fold (or repeated hold-out) share most of their training images, so their
# scores are positively correlated and the plain sd / sqrt(J) is too small; the
# correction inflates the variance of the mean from var/J to (1/J + n_test/n_train) var.


def t_interval(values, confidence: float = 0.95) -> tuple[float, float]:
    """Student-t interval of the mean of ``values`` (shape (n,)): mean ± t_{n-1} sd / sqrt(n).

    ``sd`` uses ddof=1; (mean, mean) when n < 2.
    """
    from scipy.stats import t as student_t

    v = np.asarray(values, dtype=float).ravel()
    mean = float(v.mean()) if v.size else float("nan")
    if v.size < 2:
        return (mean, mean)
    half = student_t.ppf((1 + confidence) / 2, v.size - 1) * v.std(ddof=1) / np.sqrt(v.size)
    return (float(mean - half), float(mean + half))


def corrected_std(values, n_train: float, n_test: float) -> float:
    """Nadeau-Bengio corrected sd of the mean of J resampled scores (shape (J,)).

    ``sqrt((1/J + n_test/n_train) * var(values, ddof=1))``; nan when J < 2.
    """
    v = np.asarray(values, dtype=float).ravel()
    if v.size < 2:
        return float("nan")
    return float(np.sqrt((1 / v.size + n_test / n_train) * v.var(ddof=1)))


def corrected_interval(scores, n_train: float, n_test: float,
                       confidence: float = 0.95) -> tuple[float, float, float]:
    """(mean, low, high) of J fold scores (shape (J,)): mean ± t_{J-1} * corrected_std.

    ``low``/``high`` are clamped to [0, 1] (scores are accuracies); (mean, mean, mean) when J < 2.
    """
    from scipy.stats import t as student_t

    s = np.asarray(scores, dtype=float).ravel()
    mean = float(s.mean()) if s.size else float("nan")
    if s.size < 2:
        return (mean, mean, mean)
    half = student_t.ppf((1 + confidence) / 2, s.size - 1) * corrected_std(s, n_train, n_test)
    return (mean, float(max(0.0, mean - half)), float(min(1.0, mean + half)))


def corrected_ttest(differences, n_train: float, n_test: float) -> dict:
    """Corrected paired t-test of J per-fold score differences A - B (shape (J,), same folds).

    Returns ``t``, ``df`` = J - 1, two-sided ``p_value``, ``p_one_sided`` = P(T >= t)
    (small when A is better), ``mean`` difference and ``n_folds`` = J. All differences 0:
    t = 0, p_value = 1; all equal and nonzero: t = ±inf, p_value = 0; else nan when J < 2.
    """
    from scipy.stats import t as student_t

    d = np.asarray(differences, dtype=float).ravel()
    j = int(d.size)
    mean = float(d.mean()) if j else float("nan")
    if j and not d.any():
        t_stat = 0.0                        # identical on every fold: no evidence either way
    elif j < 2:
        t_stat = float("nan")               # one fold gives no variance estimate
    elif np.ptp(d) == 0:
        t_stat = math.copysign(math.inf, mean)  # the same nonzero difference on every fold
    else:
        t_stat = mean / corrected_std(d, n_train, n_test)
    if t_stat == 0:
        p_two, p_one = 1.0, 0.5             # also when J = 1, where t_{0} is undefined
    else:
        p_two = float(2 * student_t.sf(abs(t_stat), j - 1))   # sf(|t|) <= 0.5
        p_one = float(student_t.sf(t_stat, j - 1))
    return {"t": float(t_stat), "df": j - 1, "p_value": p_two, "p_one_sided": p_one,
            "mean": mean, "n_folds": j}
