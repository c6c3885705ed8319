"""What to label next: uncertainty scores of a head's probabilities and a diversity step.

Active learning by pool-based batch selection, numpy (and scikit-learn's k-means;
no torch): ``predict --rank`` and the labelling benchmark
(``benchmarks/bench_labelling.py``) both call :func:`rank_for_labelling`.

Uncertainty (:func:`uncertainty`, larger = less sure), from probabilities
``(n, n_classes)``:

- ``margin``: ``1 - (p1 - p2)``, the two largest probabilities (margin
  sampling, Scheffer et al. 2001); the default;
- ``entropy``: ``-sum p log p`` (Shannon entropy, Settles 2009's survey);
- ``least-confident``: ``1 - p1`` (Lewis & Gale 1994).

Uncertainty alone picks near-duplicates: a batch of 20 from one confused
corner of the feature space teaches the head little more than one of them.
The diversity step spreads the batch among the ``pool * k`` most uncertain
candidates (``pool`` = 10), on L2-normalised vectors (the head's input
features for a frozen head):

- ``kmeans`` (the default): k-means of the candidates into ``k`` clusters,
  weighted by their uncertainty, and in each cluster the candidate nearest
  its centre, ordered by uncertainty ("diverse mini-batch active learning",
  Zhdanov 2019; the cluster-then-uncertain hybrids of Citovsky et al. 2021
  and BADGE, Ash et al., ICLR 2020, are of the same family);
- ``kcenter``: greedy k-center (farthest-first) of the core-set approach
  (Sener & Savarese, ICLR 2018).  Given the labelled vectors, the first pick
  is the candidate farthest from them and every later one the candidate
  farthest from them and from the picks so far, so a batch also avoids what
  is already labelled; without them the first pick is the most uncertain;
- ``none``: the ``k`` most uncertain.

Why k-means by default: on the full flowers (``benchmarks/bench_labelling.py``,
docs/labelling.md) margin + k-means beat random picks in every round, while
margin + k-center lost to random after the first: farthest-first picks the
outliers of the candidates (odd photos), the known weakness of core-set picks
at small budgets (Hacohen et al., ICML 2022, "Active learning on a budget").
k-means ignores the labelled vectors: the uncertainty filter already keeps
away from what the head has learned.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import UsageError, opt
from ..options import DEFAULT_DIVERSITY, DIVERSITY_STEPS, UNCERTAINTY_SCORES

__all__ = ["Ranking", "kcenter_greedy", "kmeans_picks", "rank_for_labelling", "uncertainty"]

#: Candidates the diversity step chooses among: this many times ``k`` of the most uncertain.
DEFAULT_POOL = 10


def uncertainty(proba, score: str = "margin") -> np.ndarray:
    """``(n,)`` uncertainty of each row of ``proba`` ``(n, n_classes)``; larger = less sure.

    ``score``: ``margin`` (``1 - (p1 - p2)``), ``entropy`` (nats) or ``least-confident``
    (``1 - p1``)."""
    p = np.asarray(proba, dtype=np.float64)
    if p.ndim != 2 or p.shape[1] < 2:
        raise ValueError(f"probabilities must be (n, n_classes >= 2), got shape {p.shape}")
    if score == "margin":
        top2 = -np.partition(-p, 1, axis=1)[:, :2]
        return 1.0 - (top2[:, 0] - top2[:, 1])
    if score == "entropy":
        safe = np.clip(p, 1e-12, 1.0)
        return -(p * np.log(safe)).sum(axis=1)
    if score == "least-confident":
        return 1.0 - p.max(axis=1)
    raise UsageError(f"{opt('rank', score)} is not one of {', '.join(UNCERTAINTY_SCORES)}",
                     param="rank")


def _unit(vectors) -> np.ndarray:
    v = np.asarray(vectors, dtype=np.float64)
    norms = np.linalg.norm(v, axis=1, keepdims=True)
    return v / np.where(norms > 0, norms, 1.0)


def kcenter_greedy(vectors, k: int, labelled=None, first: int = 0) -> np.ndarray:
    """Indices of ``k`` rows of ``vectors`` ``(n, d)`` picked farthest-first, in pick order.

    Each pick is the row farthest (Euclidean, after L2 normalisation) from the
    rows of ``labelled`` ``(m, d)`` and the picks so far; with no ``labelled``
    rows the first pick is row ``first``.  Ties go to the lower index.
    """
    x = _unit(vectors)
    n = len(x)
    k = min(int(k), n)
    if k <= 0:
        return np.zeros(0, dtype=np.int64)
    nearest = np.full(n, np.inf)
    if labelled is not None and len(labelled):
        # unit vectors: |a - b|^2 = 2 - 2 a.b, one matrix product per block of 4096 rows
        seen = _unit(labelled)
        for s in range(0, len(seen), 4096):
            nearest = np.minimum(nearest, (2.0 - 2.0 * x @ seen[s:s + 4096].T).min(axis=1))
        pick = int(np.argmax(nearest))
    else:
        pick = int(first)
    picks = []
    for _ in range(k):
        picks.append(pick)
        nearest = np.minimum(nearest, ((x - x[pick]) ** 2).sum(axis=1))
        nearest[picks] = -1.0
        pick = int(np.argmax(nearest))
    return np.asarray(picks, dtype=np.int64)


def kmeans_picks(vectors, k: int, weights=None, seed: int = 0) -> np.ndarray:
    """Indices of ``k`` rows of ``vectors`` ``(n, d)``: k-means (L2-normalised rows,
    weighted by ``weights`` ``(n,)``) into ``k`` clusters, then in each the row nearest
    its centre; ordered by ``weights``, largest first (Zhdanov 2019)."""
    from sklearn.cluster import KMeans

    x = _unit(vectors)
    k = min(int(k), len(x))
    if k <= 0:
        return np.zeros(0, dtype=np.int64)
    w = np.ones(len(x)) if weights is None else np.asarray(weights, dtype=np.float64)
    km = KMeans(n_clusters=k, n_init=3, random_state=seed).fit(x, sample_weight=w + 1e-12)
    picks = []
    for c in range(k):
        members = np.flatnonzero(km.labels_ == c)
        if len(members):
            d = ((x[members] - km.cluster_centers_[c]) ** 2).sum(axis=1)
            picks.append(int(members[np.argmin(d)]))
    picks = np.asarray(picks, dtype=np.int64)
    return picks[np.argsort(-w[picks], kind="stable")]


@dataclass
class Ranking:
    """What to label next: ``order`` the row indices, first to label first (``(k,)``);
    ``scores`` the uncertainty of every row (``(n,)``, larger = less sure)."""

    order: np.ndarray
    scores: np.ndarray
    score: str = "margin"
    diversity: str = DEFAULT_DIVERSITY


def rank_for_labelling(proba, k: int, score: str = "margin", vectors=None, labelled=None,
                       diversity: str = DEFAULT_DIVERSITY, pool: int = DEFAULT_POOL) -> Ranking:
    """The ``k`` rows of ``proba`` ``(n, n_classes)`` to label next (see the module).

    ``diversity="kmeans"`` picks them by :func:`kmeans_picks`, ``"kcenter"`` by
    :func:`kcenter_greedy` (away from ``labelled`` ``(m, d)``, same space; None: no
    labelled rows), on ``vectors`` ``(n, d)`` among the ``pool * k`` most uncertain
    rows; ``"none"`` (or no ``vectors``) takes the ``k`` most uncertain.  ``k`` larger
    than ``n`` ranks all rows.
    """
    if int(k) < 1:
        raise UsageError(f"{opt('rank_top', k)} must be >= 1", param="rank_top")
    if diversity not in DIVERSITY_STEPS:
        raise UsageError(f"{opt('diversity', diversity)} is not one of "
                         f"{', '.join(DIVERSITY_STEPS)}", param="diversity")
    if int(pool) < 1:
        raise UsageError(f"{opt('pool', pool)} must be >= 1", param="pool")
    scores = uncertainty(proba, score)
    by_score = np.argsort(-scores, kind="stable")
    k = min(int(k), len(scores))
    if diversity == "none" or vectors is None:
        return Ranking(by_score[:k], scores, score, "none")
    vectors = np.asarray(vectors)
    if len(vectors) != len(scores):
        raise ValueError(f"{len(vectors)} vectors for {len(scores)} probability rows")
    candidates = by_score[:min(len(scores), int(pool) * k)]
    if diversity == "kmeans":
        picks = kmeans_picks(vectors[candidates], k, scores[candidates])
    else:
        picks = kcenter_greedy(vectors[candidates], k, labelled)
    return Ranking(candidates[picks], scores, score, diversity)
