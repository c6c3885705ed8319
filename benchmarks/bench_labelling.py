"""Benchmark of the labelling loop: what ``predict --rank`` picks against random picks.

On a feature store of the full flowers (default ``/work/stores/flowers_full.h5``,
efficientnet_lite0, read only), the pool is the store's train + val rows and the
evaluation its test rows (used for nothing but the scores).  Each seed starts
from 5 labelled images per class drawn at random from the pool, then runs 5
rounds, each adding 20 images chosen by one strategy:

- ``margin+kmeans``: what ``predict --rank margin`` does (k-means of the
  L2-normalised tap vectors of the 10 x 20 least-margin images into 20
  clusters, the image nearest each centre:
  :func:`pipeline.heads.ranking.rank_for_labelling`);
- ``margin+kcenter``: ``--diversity kcenter`` (greedy k-center among the same
  candidates, away from the labelled images);
- ``margin``: the 20 least-margin images (``--diversity none``);
- ``kcenter``: k-center alone on the whole unlabelled pool (the core-set pick);
- ``random``: 20 images drawn uniformly from the unlabelled pool.

After each round a logistic-regression head (``make_head("logreg", C)``, the
project's head) is fitted on the labelled rows, ``C`` chosen by stratified
K-fold cross-validation on those rows only (K = min(5, smallest class)), and
scored on test: accuracy and balanced accuracy.  Prints one table per metric,
rounds x strategies, mean ± sd over the seeds, and the time.

    python benchmarks/bench_labelling.py [--store STORE.h5] [--tap layer4] [--seeds 3]
                                         [--first-seed 0]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from pipeline.heads.ranking import kcenter_greedy, rank_for_labelling  # noqa: E402
from pipeline.heads.selection import fit_head, make_head, predict_proba  # noqa: E402
from pipeline.store.hdf5 import open_store  # noqa: E402

STRATEGIES = ("margin+kmeans", "margin+kcenter", "margin", "kcenter", "random")
C_GRID = tuple(10.0 ** e for e in np.arange(-3, 0.01, 0.5))


def fit_cv(X, y, seed: int):
    """The logreg head with ``C`` chosen by stratified K-fold on ``(X, y)`` alone."""
    from sklearn.metrics import accuracy_score
    from sklearn.model_selection import StratifiedKFold

    folds = StratifiedKFold(min(5, int(np.bincount(y).min())), shuffle=True,
                            random_state=seed)
    scores = np.zeros(len(C_GRID))
    for tr, va in folds.split(X, y):
        for j, c in enumerate(C_GRID):
            head = fit_head(make_head("logreg", c, seed), X[tr], y[tr])
            scores[j] += accuracy_score(y[va], head.predict(X[va]))
    best = C_GRID[int(np.argmax(scores))]          # ties: the smaller C (stronger penalty)
    return fit_head(make_head("logreg", best, seed), X, y), best


def pick(strategy: str, head, X, labelled, unlabelled, k: int, rng):
    """``k`` rows of ``unlabelled`` (indices into ``X``) chosen by ``strategy``."""
    if strategy == "random":
        return rng.choice(unlabelled, size=k, replace=False)
    if strategy == "kcenter":
        return unlabelled[kcenter_greedy(X[unlabelled], k, labelled=X[labelled])]
    proba = predict_proba(head, X[unlabelled])
    diversity = strategy.partition("+")[2] or "none"
    ranking = rank_for_labelling(proba, k, "margin", X[unlabelled], X[labelled], diversity)
    return unlabelled[ranking.order]


def start(y_pool, per_class: int, rng) -> np.ndarray:
    return np.concatenate([rng.choice(np.flatnonzero(y_pool == c), per_class, replace=False)
                           for c in np.unique(y_pool)])


def loop(X, y, X_test, y_test, strategy, seed, args) -> list[dict]:
    """One seed's curve: ``[{labelled, accuracy, balanced_accuracy, C}]`` per round."""
    from sklearn.metrics import accuracy_score, balanced_accuracy_score

    rng = np.random.default_rng(seed)
    labelled = start(y, args.start, rng)           # the same start for every strategy
    pick_rng = np.random.default_rng([seed, 1])
    curve = []
    for r in range(args.rounds + 1):
        head, c = fit_cv(X[labelled], y[labelled], seed)
        pred = head.predict(X_test)
        curve.append({"labelled": len(labelled), "C": c,
                      "accuracy": accuracy_score(y_test, pred),
                      "balanced_accuracy": balanced_accuracy_score(y_test, pred)})
        if r < args.rounds:
            unlabelled = np.setdiff1d(np.arange(len(y)), labelled)
            new = pick(strategy, head, X, labelled, unlabelled, args.add, pick_rng)
            labelled = np.concatenate([labelled, new])
    return curve


def table(results: dict, metric: str, args) -> str:
    seeds = len(next(iter(results.values())))
    head = "| round | labelled | " + " | ".join(STRATEGIES) + " |"
    lines = [f"{metric}, test ({seeds} seeds, mean ± sd)", "", head,
             "|" + "---|" * (len(STRATEGIES) + 2)]
    for r in range(args.rounds + 1):
        n = results[STRATEGIES[0]][0][r]["labelled"]
        cells = []
        for s in STRATEGIES:
            v = np.array([curve[r][metric] for curve in results[s]])
            cells.append(f"{v.mean():.3f} ± {v.std(ddof=1) if len(v) > 1 else 0:.3f}")
        lines.append(f"| {r} | {n} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--store", default="/work/stores/flowers_full.h5")
    ap.add_argument("--tap", default="layer4")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--first-seed", type=int, default=0)
    ap.add_argument("--start", type=int, default=5, help="labelled images per class at first")
    ap.add_argument("--add", type=int, default=20, help="images added per round")
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args(argv)

    t0 = time.perf_counter()
    store = open_store(args.store)
    X_pool = np.concatenate([store.X(args.tap, "train"), store.X(args.tap, "val")])
    y_pool = np.concatenate([store.y("train"), store.y("val")])
    X_test, y_test = store.xy(args.tap, "test")
    print(f"# {Path(args.store).name}, tap {args.tap}: pool {len(y_pool)} (train + val), "
          f"test {len(y_test)}, {len(store.classes)} classes; start {args.start}/class, "
          f"+{args.add} x {args.rounds} rounds, "
          f"seeds {args.first_seed}..{args.first_seed + args.seeds - 1}", flush=True)
    results = {s: [] for s in STRATEGIES}
    for seed in range(args.first_seed, args.first_seed + args.seeds):
        for s in STRATEGIES:
            results[s].append(loop(X_pool, y_pool, X_test, y_test, s, seed, args))
        print(f"# seed {seed} done, {time.perf_counter() - t0:.0f} s", flush=True)
    for metric in ("accuracy", "balanced_accuracy"):
        print()
        print(table(results, metric, args))
    cs = sorted({c["C"] for runs in results.values() for curve in runs for c in curve})
    print(f"\nC chosen by CV on the labelled rows, over all rounds: {', '.join(map(str, cs))}")
    print(f"total {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
