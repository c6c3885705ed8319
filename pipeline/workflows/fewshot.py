"""Few-shot curves of a feature store: accuracy against k labelled images per class.

For every tap of a store, and for raw pixels decoded from the store's images,
a head (standardise + logistic regression) is fitted on exactly ``k`` images
per class drawn at random from *all* rows of the store, for k = 1, 2, 4, ...
while every class keeps at least k + 1 images outside the draw.  Its C is
chosen without any labelled image beyond those k per class: by stratified
cross-validation among the drawn images (``min(k, 5)`` folds) over a coarse
grid, and fixed at :data:`FEWSHOT_DEFAULT_C` for k = 1, where there is nothing
to cross-validate.  Each draw is scored on every image it did not draw, and
each (curve, k) point is the mean over the draws with a Student-t 95% band.
The store's train/val/test split plays no part: it would hand the head more
labelled images than k.

The result is a :class:`FewShotResult` of :class:`FewShotCurve` of
:class:`FewShotPoint` (each point's ``accuracy`` named as a run record's metric);
its :meth:`FewShotResult.to_dict` is the JSON the analysis workflow saves and the
report draws.
"""

from __future__ import annotations

import importlib
import logging
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from ..data.split import draw_rows
from ..errors import UsageError, opt
from ..options import TAP_ORDER
from ..parallel import run_in_order
from ..runs.stats import t_interval

log = logging.getLogger(__name__)


#: Seconds the few-shot fits may take; what is left is listed as skipped.
FEWSHOT_BUDGET = 30.0


#: Random draws of k images per class behind each point (the fewest allowed).
FEWSHOT_DRAWS = 5


#: C searched by the inner cross-validation: the decades of the middle of the
#: logreg head's grid (:mod:`pipeline.heads.kinds.logreg`), small to large (on
#: the bundled flowers 1e-4 and 100 chose the same predictions as 1e-3 and 10).
FEWSHOT_GRID = (1e-3, 1e-2, 1e-1, 1.0, 10.0)


#: C at k = 1 (one image per class: no fold could hold out an image of every
#: class).  scikit-learn's default, fixed in advance and tuned on no data.
FEWSHOT_DEFAULT_C = 1.0


#: Folds of the inner cross-validation, at most (fewer when k is smaller).
FEWSHOT_MAX_FOLDS = 5


#: Rows scored per predict call, so scoring never copies a whole store as float64.
_SCORE_BLOCK = 4096

#: Images decoded per call when building the pixel matrix, between budget checks.
_DECODE_BLOCK = 256

#: A point costs about this many times the one at half its k (measured on the
#: flowers: 1.2x to 4.7x, the most for wide features at large k).
_GROWTH = 4.0


@dataclass
class DrawScore:
    """One draw's head (:func:`fit_draw`): its ``accuracy`` on the ``n_scored`` images it
    did not draw, the ``C`` chosen among the drawn ones, and the ``seconds`` it took."""

    accuracy: float
    C: float
    n_scored: int
    seconds: float = 0.0


@dataclass
class FewShotPoint:
    """A curve at ``k`` images per class: over its draws, the mean ``accuracy`` with its
    s.d. ``sd`` and Student-t 95% band ``low``-``high``; per draw (``(draws,)``) the
    ``accuracies`` and the chosen ``C``; the images each draw scored (``n_scored``) and
    the seconds of every draw together."""

    k: int
    accuracy: float
    sd: float
    low: float
    high: float
    accuracies: list
    C: list
    n_scored: int
    seconds: float

    def to_dict(self) -> dict:
        """The point as the analysis record writes it: the mean accuracy is ``mean``."""
        return {"k": self.k, "mean": self.accuracy, "sd": self.sd, "low": self.low,
                "high": self.high, "accuracies": self.accuracies, "C": self.C,
                "n_scored": self.n_scored, "seconds": self.seconds}


@dataclass
class FewShotCurve:
    """The points of one tap (``kind="tap"``) or of raw pixels (``"pixels"``), ``dim``
    features wide, k increasing."""

    kind: str
    dim: int
    points: list = field(default_factory=list)

    def to_dict(self) -> dict:
        return {"kind": self.kind, "dim": self.dim, "points": [p.to_dict() for p in self.points]}


@dataclass
class FewShotResult:
    """The few-shot curves of a store (:func:`fewshot_curves`) and how they were drawn.

    ``curves`` maps a name (a tap, shallow to deep, then ``"pixels NxN"``) to its
    :class:`FewShotCurve`; ``shots`` the k tried, ``draws`` per k, ``seed``; the C
    ``grid``, ``default_C`` (k = 1) and ``max_folds`` of the inner cross-validation;
    the store (``store``, ``backbone``, ``n_images``, ``n_classes``,
    ``smallest_class``); the ``budget``, the ``seconds`` spent and ``n_jobs``;
    ``skipped``: the curves or points left out and why; ``note``: why there is no
    curve at all (None when there are).
    """

    shots: list
    draws: int
    seed: int
    pixel_size: int
    n_images: int
    n_classes: int
    smallest_class: int
    backbone: str | None
    store: str
    budget: float
    n_jobs: int
    curves: dict = field(default_factory=dict)
    grid: list = field(default_factory=lambda: list(FEWSHOT_GRID))
    default_C: float = FEWSHOT_DEFAULT_C
    max_folds: int = FEWSHOT_MAX_FOLDS
    seconds: float = 0.0
    skipped: list = field(default_factory=list)
    note: str | None = None

    def to_dict(self) -> dict:
        """The JSON the analysis record keeps under ``fewshot`` (the report reads it)."""
        out = {key: getattr(self, key) for key in _LAYOUT}
        out["curves"] = {name: curve.to_dict() for name, curve in self.curves.items()}
        return out


#: The order of :meth:`FewShotResult.to_dict`'s keys (the analysis record's, schema 4).
_LAYOUT = ("curves", "shots", "draws", "seed", "grid", "default_C", "max_folds", "pixel_size",
           "n_images", "n_classes", "smallest_class", "backbone", "store", "budget", "seconds",
           "n_jobs", "skipped", "note")


def shots_allowed(labels, shots=None) -> list:
    """The k of ``shots`` (default 1, 2, 4, ...) that leave every class of ``labels``
    (shape (n,)) at least k + 1 images outside a draw of k, increasing."""
    counts = np.bincount(np.asarray(labels))
    smallest = int(counts[counts > 0].min()) if counts.any() else 0
    if shots is None:
        shots, k = [], 1
        while 2 * k + 1 <= smallest:
            shots.append(k)
            k *= 2
        return shots
    bad = [k for k in shots if int(k) != k or k < 1]
    if bad:
        raise UsageError(f"{opt('shots')} must be positive whole numbers of images per "
                         f"class; got {list(shots)}", param="shots")
    return sorted({int(k) for k in shots if 2 * k + 1 <= smallest})


def _row_space(A, B):
    """``(A V, B V)`` for ``V`` (n_features, r) an orthonormal basis of the row space of
    ``A`` (n, n_features), r <= n.

    An L2-penalised linear model fitted on the rows of ``A`` has its weights
    in that row space (any part outside it changes no score on ``A`` and adds
    penalty), so logistic regression on ``A V`` is the same model with r
    instead of n_features weights per class: its decision function on
    ``B V`` is the one the full fit gives on ``B``.
    """
    eigenvalues, U = np.linalg.eigh(A @ A.T)
    keep = eigenvalues > eigenvalues.max() * 1e-10
    U, s = U[:, keep], np.sqrt(eigenvalues[keep])
    V = (A.T @ U) / s
    return U * s, B @ V


def _logreg_path(A, y, B, grid, tol: float = 1e-4, max_iter: int = 3000) -> list:
    """Predictions on ``B`` (m, r) of logistic regression fitted on ``A`` (n, r), ``y`` (n,)
    in 0..n_classes - 1, at each C of ``grid`` in order, each fit warm-started from the last.

    The fit of scikit-learn's ``LogisticRegression(C=C)`` (lbfgs, multinomial,
    unpenalised intercept): the same objective, mean log-loss +
    ||W||^2 / (2 C n), minimised by the same L-BFGS-B with the same stopping
    rule, so the same optimum; without the input checks and array-API
    dispatch around each loss evaluation, which cost more than the fit on a
    few images (measured: 3x faster for k <= 32, tests/test_fewshot.py checks
    the predictions agree).  With two classes scikit-learn fits one binomial
    weight vector, which is the softmax fit at half the penalty.
    """
    from scipy.optimize import minimize

    n, r = A.shape
    n_classes = int(y.max()) + 1
    Y = np.eye(n_classes)[y]
    w = np.zeros((r + 1) * n_classes)
    preds = []
    for c in grid:
        l2 = (2.0 if n_classes == 2 else 1.0) / (c * n)

        def loss_grad(w, l2=l2):
            W, b = w[:-n_classes].reshape(r, n_classes), w[-n_classes:]
            Z = A @ W + b
            Z -= Z.max(axis=1, keepdims=True)
            P = np.exp(Z)
            total = P.sum(axis=1)
            P /= total[:, None]
            loss = (np.log(total).sum() - np.vdot(Z, Y)) / n + 0.5 * l2 * np.vdot(W, W)
            D = (P - Y) / n
            return loss, np.concatenate([(A.T @ D + l2 * W).ravel(), D.sum(axis=0)])

        w = minimize(loss_grad, w, jac=True, method="L-BFGS-B",
                     options={"maxiter": max_iter, "maxls": 50, "gtol": tol,
                              "ftol": 64 * np.finfo(float).eps}).x
        W, b = w[:-n_classes].reshape(r, n_classes), w[-n_classes:]
        preds.append(np.argmax(B @ W + b, axis=1))
    return preds


def choose_c(X_drawn, y_drawn, grid=FEWSHOT_GRID, default_c: float = FEWSHOT_DEFAULT_C,
             seed: int = 0) -> float:
    """C for a head on the drawn images only: ``X_drawn`` (k * n_classes, n_features),
    ``y_drawn`` (k * n_classes,).

    Stratified ``min(k, 5)``-fold cross-validation over ``grid``: each fold
    standardises with its own training part, as the head does, and fits
    logistic regression at every C there (:func:`_logreg_path`); features
    much wider than the fold are first replaced by their coordinates in its
    row space, the same model (:func:`_row_space`).  Ties go to the smaller
    C (stronger regularisation).  ``default_c`` when k = 1.  The fits run on
    one BLAS thread.
    """
    from sklearn.model_selection import StratifiedKFold
    from sklearn.preprocessing import StandardScaler
    from threadpoolctl import threadpool_limits

    _classes, y_codes = np.unique(y_drawn, return_inverse=True)
    k = int(np.bincount(y_codes).min())
    if k < 2:
        return float(default_c)
    grid = sorted(grid)
    folds = StratifiedKFold(n_splits=min(k, FEWSHOT_MAX_FOLDS), shuffle=True, random_state=seed)
    correct = np.zeros(len(grid))
    _import_solvers()
    # Many small fits: one BLAS thread each is several times faster than a contended pool.
    with threadpool_limits(1):
        for fit_rows, val_rows in folds.split(X_drawn, y_codes):
            scaler = StandardScaler().fit(X_drawn[fit_rows])
            X_fit = scaler.transform(X_drawn[fit_rows]).astype(np.float64)
            X_val = scaler.transform(X_drawn[val_rows]).astype(np.float64)
            if 2 * len(fit_rows) <= X_fit.shape[1]:
                X_fit, X_val = _row_space(X_fit, X_val)
            for i, pred in enumerate(_logreg_path(X_fit, y_codes[fit_rows], X_val, grid)):
                correct[i] += np.sum(pred == y_codes[val_rows])
    return float(grid[int(np.argmax(correct))])   # argmax: the first, smallest C of a tie


def fit_draw(X, y, rows, grid=FEWSHOT_GRID, default_c: float = FEWSHOT_DEFAULT_C,
             seed: int = 0) -> DrawScore:
    """Fit the head on rows ``rows`` of ``X`` (n, n_features) / ``y`` (n,) and score it
    on every other row.

    C comes from :func:`choose_c` on the drawn rows alone, so no row outside
    ``rows`` shapes the head (``make_head("logreg", C)``, on one BLAS thread).
    Returns its :class:`DrawScore` (``seconds`` left at 0).
    """
    from threadpoolctl import threadpool_limits

    from ..heads.selection import make_head

    rows = np.asarray(rows)
    X_drawn, y_drawn = np.asarray(X[rows], dtype=np.float32), y[rows]
    c = choose_c(X_drawn, y_drawn, grid, default_c, seed)
    scored = np.setdiff1d(np.arange(len(y)), rows)
    correct = 0
    _import_solvers()
    with threadpool_limits(1):
        model = make_head("logreg", c, seed).fit(X_drawn, y_drawn)
        for start in range(0, len(scored), _SCORE_BLOCK):
            block = scored[start:start + _SCORE_BLOCK]
            pred = model.predict(np.asarray(X[block], dtype=np.float32))
            correct += int(np.sum(pred == y[block]))
    return DrawScore(accuracy=correct / max(len(scored), 1), C=c, n_scored=int(len(scored)))


def _pixels(store, size: int, deadline: float):
    """``(X (n, 3 * size * size) uint8, reason)``: the store's images decoded as the
    pixel baseline decodes them, or ``(None, why not)``."""
    from ..train.baselines import pixel_matrix

    if not store.data_root.is_dir():
        return None, f"the image folder {store.data_root} is gone"
    blocks = []
    for start in range(0, len(store.paths), _DECODE_BLOCK):
        if time.time() > deadline:
            return None, "decoding the images ran over the budget"
        X, _ok, bad = pixel_matrix(store.data_root, store.paths[start:start + _DECODE_BLOCK],
                                   size)
        if bad:
            # Every curve is drawn from the same rows; a pixel curve on fewer would not compare.
            return None, (f"{len(bad)} of the store's images no longer decode under "
                          f"{store.data_root}, e.g. {bad[0][0]}: {bad[0][1]}")
        blocks.append(X)
    return np.concatenate(blocks), None


def _cv_seed(seed: int, draw: int, k: int) -> int:
    """The inner folds' seed of one draw: fixed by (seed, draw, k), never by the features."""
    return int(np.random.SeedSequence([seed, draw, k]).generate_state(1)[0])


def _point(k: int, results: list) -> FewShotPoint:
    """The point at ``k`` of a curve's draws (:class:`DrawScore` list)."""
    accs = [r.accuracy for r in results]
    low, high = t_interval(accs)
    return FewShotPoint(k=k, accuracy=float(np.mean(accs)), sd=float(np.std(accs, ddof=1)),
                        low=low, high=high, accuracies=accs, C=[r.C for r in results],
                        n_scored=results[0].n_scored,
                        seconds=float(sum(r.seconds for r in results)))


def _tap_rank(tap) -> int:
    return TAP_ORDER.index(tap) if tap in TAP_ORDER else len(TAP_ORDER)


def _import_solvers():
    """Load scikit-learn's solvers, and with them SciPy's OpenBLAS.

    threadpoolctl limits only the libraries loaded when the limit starts; one
    loaded later runs lbfgs with every thread, spinning against the other
    fits (measured: 20x slower on 2 busy cores).
    """
    for module in ("scipy.optimize", "sklearn.model_selection", "pipeline.heads.selection"):
        importlib.import_module(module)


def _draw_task(X, y, rows, seed: int, deadline: float):
    """:func:`fit_draw` with its seconds; None once past ``deadline`` (``time.time()``,
    so worker processes read the same clock)."""
    if time.time() > deadline:
        return None
    t0 = time.perf_counter()
    out = fit_draw(X, y, rows, seed=seed)
    return replace(out, seconds=time.perf_counter() - t0)


def fewshot_curves(store, pixel_size: int = 32, shots=None, draws: int = FEWSHOT_DRAWS,
                   seed: int = 0, budget: float = FEWSHOT_BUDGET,
                   n_jobs: int = 1) -> FewShotResult:
    """Few-shot accuracy of every tap of ``store`` and of raw pixels.

    ``store`` is a :class:`pipeline.store.hdf5.FeatureStore` or its path;
    ``shots`` the k to try (default 1, 2, 4, ... as far as the data allow:
    :func:`shots_allowed`); ``draws`` (at least 5) random draws per k, the
    same rows for every curve (:func:`draw_rows` with ``seed``);
    ``pixel_size`` the side of the pixel baseline's images.  Points are
    computed k by k, every curve at one k before the next k, until
    ``budget`` seconds are spent: a curve whose next point would not finish
    in time (judged from its last one) stops, and is listed in ``skipped``.
    Every fit runs on one BLAS thread; ``n_jobs`` > 1 runs the draws of one
    k in that many processes, worth it only with idle cores (on 2 vCPUs with
    one busy it was slower: 29 s against 23 s).

    Returns a :class:`FewShotResult` (its ``to_dict()`` is the analysis record's
    JSON); curves are ordered shallow tap to deep, then ``"pixels NxN"``.
    """
    from ..store.hdf5 import FeatureStore

    if isinstance(store, (str, Path)):
        store = FeatureStore(store)
    if int(draws) != draws or draws < FEWSHOT_DRAWS:
        raise UsageError(f"{opt('draws')} must be a whole number of at least "
                         f"{FEWSHOT_DRAWS} (a band over fewer draws says little); got {draws}",
                         param="draws")
    t0 = time.time()
    y = store.y()
    ks = shots_allowed(y, shots)
    pixel_name = f"pixels {pixel_size}x{pixel_size}"
    names = sorted(store.taps, key=_tap_rank) + [pixel_name]
    n_jobs = max(1, min(int(n_jobs), draws * len(names)))
    out = _header(store, y, ks, int(draws), seed, pixel_size, budget, n_jobs)
    if out.note:
        return out
    curves, stopped_at = _compute(store, y, names, out, t0 + budget)
    out.curves = {name: curves[name] for name in names if name in curves}
    for name in names:
        if stopped_at.get(name) is not None:
            left = ks[ks.index(stopped_at[name]):]
            out.skipped.append(f"{name} at k = {', '.join(map(str, left))} "
                               f"(over the {budget:g} s budget)")
    out.seconds = time.time() - t0
    if not out.curves:
        out.note = f"No few-shot point could be computed from {store.path} within the budget."
    log.info("few-shot curves of %s: %d curves, k up to %d, %.1f s on %d process(es)",
             store.path, len(out.curves), ks[-1], out.seconds, n_jobs)
    return out


def _header(store, y, ks, draws, seed, pixel_size, budget, n_jobs) -> FewShotResult:
    """The result's description, with a ``note`` when there is nothing to draw."""
    counts = np.bincount(y, minlength=len(store.classes))
    out = FewShotResult(shots=ks, draws=draws, seed=seed, pixel_size=pixel_size,
                        n_images=len(y), n_classes=int(np.count_nonzero(counts)),
                        smallest_class=int(counts[counts > 0].min()) if len(y) else 0,
                        backbone=store.attrs.get("backbone"), store=str(store.path),
                        budget=budget, n_jobs=int(n_jobs))
    if out.n_classes < 2:
        out.note = f"{store.path} holds fewer than two classes: there is nothing to classify."
    elif not ks:
        out.note = (f"Too few images for a few-shot curve: the smallest class of "
                    f"{store.path} has {out.smallest_class} image(s), and one drawn image "
                    "per class needs at least 3 (2 left to score on).")
    return out


def _compute(store, y, names, plan: FewShotResult, deadline):
    """``(curves, stopped_at)``: the points k by k, every curve at one k before the next,
    each curve stopping once its next point would not finish by ``deadline``.  ``plan``
    (the result's header, :func:`_header`) says the k, draws, seed, pixel size and
    processes; what cannot be drawn is added to its ``skipped``."""
    ks, draws, seed, n_jobs = plan.shots, plan.draws, plan.seed, plan.n_jobs
    pixel_size, skipped = plan.pixel_size, plan.skipped
    pixel_name = names[-1]
    features, curves, cost, stopped_at = {}, {}, {}, {}
    for k in ks:
        live = []
        for name in names:
            if name in stopped_at:
                continue
            if name not in features:
                X, why = ((store.X(name), None) if name != pixel_name
                          else _pixels(store, pixel_size, deadline))
                if X is None:
                    skipped.append(f"{name} ({why})")
                    stopped_at[name] = None
                    continue
                features[name] = X
            live.append(name)
        # Shallow to deep, then pixels: each curve whose estimate still fits the budget.
        planned, load = [], 0.0
        for name in live:
            estimate = draws * _GROWTH * cost.get(name, 0.0) / n_jobs
            if time.time() + load + estimate > deadline:
                stopped_at[name] = k
            else:
                planned.append(name)
                load += estimate
        rows_of = draw_rows(y, k, draws, seed)
        tasks = [(features[name], y, rows, _cv_seed(seed, d, k), deadline)
                 for name in planned for d, rows in enumerate(rows_of)]
        results = run_in_order(_draw_task, tasks, n_jobs)
        for i, name in enumerate(planned):
            done = results[i * draws:(i + 1) * draws]
            if any(r is None for r in done):
                stopped_at[name] = k
                continue
            cost[name] = float(np.mean([r.seconds for r in done]))
            curves.setdefault(name, FewShotCurve(kind="pixels" if name == pixel_name else "tap",
                                                 dim=int(features[name].shape[1])))
            curves[name].points.append(_point(k, done))
    return curves, stopped_at
