"""Statistics of accuracies and of paired comparisons: intervals and tests.

Accuracy has exact tools (the Wilson interval, McNemar's test); balanced
accuracy and macro-F1 are not proportions of images, so under holdout they get
a bootstrap over the test images instead (:func:`bootstrap_interval`,
:func:`paired_bootstrap`), vectorised through per-class counts.
"""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np

from ..balance import values_from_counts

#: Bootstrap resamples of the test images (intervals and paired tests under holdout).
N_BOOT = 2000
#: Resamples computed at once (memory: this many x test images floats).
BOOT_CHUNK = 250


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


# Bootstrap over test images. Resampling n images with replacement is the same as
# weighting each image by a multinomial count, so every resample's per-class counts
# (true positives, true images, predicted images) are one matrix product of those
# counts with the images' one-hot classes: thousands of resamples cost a few products.


def _onehots(y_true, y_pred, n_classes):
    eye = np.eye(n_classes)
    truth, pred = eye[y_true], eye[y_pred]
    return truth * (y_true == y_pred)[:, None], truth, pred


def _resampled(metric, onehots, weights):
    """``metric`` of each row of multinomial ``weights`` ``(B, n)``: ``(B,)``."""
    tp, truth, pred = onehots
    return values_from_counts(metric, weights @ tp, weights @ truth, weights @ pred)


def _draws(n, n_boot, seed):
    """Multinomial image counts ``(rows, n)`` of ``n_boot`` resamples, in chunks."""
    rng = np.random.default_rng(seed)
    done = 0
    while done < n_boot:
        rows = min(BOOT_CHUNK, n_boot - done)
        yield rng.multinomial(n, np.full(n, 1.0 / n), size=rows).astype(float)
        done += rows


def _arrays(*labels):
    arrays = [np.asarray(a, dtype=np.int64).ravel() for a in labels]
    return arrays, int(max(a.max(initial=0) for a in arrays)) + 1


def bootstrap_interval(metric: str, y_true, y_pred, n_boot: int = N_BOOT, seed: int = 0,
                       confidence: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap interval of ``metric`` (pipeline.balance.METRICS) over the
    images ``y_true``, ``y_pred`` ``(n,)``; resamples seeded by ``seed``."""
    (y_true, y_pred), k = _arrays(y_true, y_pred)
    return _bootstrap_interval(metric, y_true.tobytes(), y_pred.tobytes(), k, n_boot, seed,
                               confidence)


@lru_cache(maxsize=512)  # a report asks for the same run's interval from several sections
def _bootstrap_interval(metric, true_bytes, pred_bytes, k, n_boot, seed, confidence):
    y_true, y_pred = np.frombuffer(true_bytes, np.int64), np.frombuffer(pred_bytes, np.int64)
    if not len(y_true):
        return (0.0, 1.0)
    hot = _onehots(y_true, y_pred, k)
    values = np.concatenate([_resampled(metric, hot, w) for w in _draws(len(y_true), n_boot,
                                                                        seed)])
    tail = (1 - confidence) / 2 * 100
    lo, hi = np.percentile(values, [tail, 100 - tail])
    return float(lo), float(hi)


def paired_bootstrap(metric: str, y_true, pred_a, pred_b, n_boot: int = N_BOOT, seed: int = 0,
                     confidence: float = 0.95) -> dict:
    """Paired bootstrap of ``metric(a) - metric(b)`` on the same images ``(n,)``.

    Both runs are scored on each resample of the images, so the difference keeps
    their pairing.  Returns ``mean`` (the observed difference), ``ci`` (percentile
    interval), two-sided ``p_value`` (the share of resampled differences, centred on
    the observed one, at least as far from it as the observed one is from 0: the
    bootstrap test of "no difference", with the +1 correction), ``n`` and ``n_boot``.
    """
    (y_true, pred_a, pred_b), k = _arrays(y_true, pred_a, pred_b)
    n = len(y_true)
    if n == 0:
        return {"mean": 0.0, "ci": [0.0, 0.0], "p_value": 1.0, "n": 0, "n_boot": 0}
    hot_a, hot_b = _onehots(y_true, pred_a, k), _onehots(y_true, pred_b, k)
    ones = np.ones((1, n))
    observed = float(_resampled(metric, hot_a, ones)[0] - _resampled(metric, hot_b, ones)[0])
    diffs = np.concatenate([_resampled(metric, hot_a, w) - _resampled(metric, hot_b, w)
                            for w in _draws(n, n_boot, seed)])
    tail = (1 - confidence) / 2 * 100
    lo, hi = np.percentile(diffs, [tail, 100 - tail])
    if observed == 0:
        p = 1.0
    else:
        p = float((1 + np.sum(np.abs(diffs - observed) >= abs(observed))) / (n_boot + 1))
    return {"mean": observed, "ci": [float(lo), float(hi)], "p_value": min(1.0, p), "n": n,
            "n_boot": int(n_boot)}
