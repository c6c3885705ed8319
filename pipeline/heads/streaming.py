"""Heads on features larger than memory: averaged SGD streamed from the store in blocks.

``fit --clf sgd-logreg`` trains multinomial logistic regression
(:class:`pipeline.heads.SoftmaxSGD`: averaged mini-batch SGD, constant step
``2 / lambda_max`` of the training rows' correlation matrix) without ever
holding a tap's rows in memory.  The standardisation statistics and that
matrix come from one pass over the store (``StandardScaler.partial_fit`` and
a running ``X^T X``, ``n_features^2`` floats); every epoch then visits
the store's row blocks in a new random order, mixes ``buffer_blocks`` of them
(a shuffle buffer: rows are stored class by class) and hands them to
``partial_fit``.  The ``alpha`` grid is in-memory logreg's C grid mapped by
``alpha = 1 / (C * n_train)``, so both choose among the same models; all
values are trained side by side on the same reads; the one with the best
validation score (the selection metric, :mod:`pipeline.balance`) is refitted (same C) on
train + validation and judged once on the test split, as
:func:`pipeline.heads.select_and_fit` does in memory.  Memory is bounded by
``block * buffer_blocks`` rows whatever the number of rows; only the per-row
index columns (paths, labels, split) and the test predictions grow with N.
Balanced class weights are counted on those in-memory label columns (training
rows for the search, training + validation rows for the refit) and handed to
every ``partial_fit``.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import numpy as np
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from ..balance import METRICS, balanced_weights, metric_values
from ..errors import UsageError, program
from .registry import get_head
from .selection import Choice, FitResult, make_head
from .sgd import SGD_EPOCHS

log = logging.getLogger(__name__)

#: Rows per read: one HDF5 chunk of the store.
BLOCK_ROWS = 256
#: Blocks mixed into one ``partial_fit`` call (the shuffle buffer is their rows).
BUFFER_BLOCKS = 16


@dataclass(frozen=True)
class Passes:
    """How the store is streamed: ``epochs`` passes of ``partial_fit``, reading ``block``
    rows at a time and mixing ``buffer_blocks`` blocks in the shuffle buffer (memory is
    bounded by ``block * buffer_blocks`` rows)."""

    epochs: int = SGD_EPOCHS
    block: int = BLOCK_ROWS
    buffer_blocks: int = BUFFER_BLOCKS

    @property
    def window(self) -> int:
        """Rows in memory at once, in every pass."""
        return self.block * self.buffer_blocks

    def check(self) -> None:
        if self.epochs < 1 or self.block < 1 or self.buffer_blocks < 1:
            raise UsageError(f"epochs, block and buffer_blocks must be >= 1, got "
                             f"{self.epochs}, {self.block}, {self.buffer_blocks}")

    def record(self) -> dict:
        """What the fit's hyperparameters keep of it."""
        return {"epochs": int(self.epochs), "block_rows": int(self.block),
                "buffer_blocks": int(self.buffer_blocks)}


def _check_tap(store, tap):
    if tap not in store.taps:
        raise UsageError(
            f"tap {tap!r} is not in {store.path.name}; it holds {', '.join(store.taps)} "
            f"(run `{program()} extract --layer {tap}` to add it)", param="layer")


def _sgd(alpha, seed, eta0, class_weights=None):
    """The ``sgd-logreg`` estimator of :func:`pipeline.heads.make_head` with step ``eta0``
    and per-class weights ``(K,)`` (None: unweighted)."""
    return make_head("sgd-logreg", alpha, seed)[-1].set_params(
        eta0=eta0, class_weight=None if class_weights is None else list(class_weights))


def fit_scalers(store, tap, codes_sets, block: int = BLOCK_ROWS * BUFFER_BLOCKS,
                steps: bool = False):
    """One pass over the store: a ``StandardScaler`` per set of split codes in ``codes_sets``.

    With ``steps``, also returns the SGD step ``2 / lambda_max`` of the first
    set's standardised ``X^T X / n`` (its correlation matrix), from a running
    ``X^T X`` accumulated in the same pass (``n_features^2`` floats, whatever N).
    """
    scalers = [StandardScaler() for _ in codes_sets]
    gram = None
    pos = 0
    for X, _y in store.iter_rows(tap, None, block):
        codes = store.split_codes[pos:pos + len(X)]
        pos += len(X)
        for k, (scaler, wanted) in enumerate(zip(scalers, codes_sets)):
            m = np.isin(codes, wanted)
            if m.any():
                scaler.partial_fit(X[m])
                if steps and k == 0:
                    Xm = X[m].astype(np.float64)
                    if gram is None:
                        gram = Xm.T @ Xm
                    else:
                        gram += Xm.T @ Xm
    if not steps:
        return scalers
    return scalers, _sgd_step(gram, scalers[0])


def _sgd_step(gram, scaler, iterations: int = 100) -> float:
    """``2 / lambda_max`` of the correlation matrix built in place from ``X^T X``."""
    if gram is None:
        return 1.0
    mu, sd = scaler.mean_, scaler.scale_
    gram /= scaler.n_samples_seen_
    gram -= np.outer(mu, mu)
    gram /= sd[:, None]
    gram /= sd[None, :]
    v = np.ones(len(gram)) / np.sqrt(len(gram))
    lam = 1.0
    for _ in range(iterations):      # power iteration: matrix-vector products only
        w = gram @ v
        lam = float(np.linalg.norm(w))
        if lam <= 1e-12:
            return 1.0
        v = w / lam
    return 2.0 / lam


def train_epochs(models, scaler, store, tap, codes, seed: int = 0,
                 passes: Passes = Passes()) -> None:
    """``passes.epochs`` passes of ``partial_fit`` for each model over the rows with a split
    in ``codes``.

    Each epoch visits the row blocks (``passes.block`` rows) in a new random order;
    ``passes.buffer_blocks`` blocks at a time are read, their rows shuffled and
    standardised with ``scaler``, and given to each model (so every value of a grid sees
    the same reads).
    """
    epochs, block, buffer_blocks = passes.epochs, passes.block, passes.buffer_blocks
    classes = np.arange(len(store.classes))
    use = np.isin(store.split_codes, codes)
    rng = np.random.default_rng(seed)
    starts = np.arange(0, len(store), block)
    for _ in range(epochs):
        order = rng.permutation(starts)
        for w in range(0, len(order), buffer_blocks):
            Xs, ys = [], []
            for start, X in store.iter_blocks(tap, order[w:w + buffer_blocks], block):
                m = use[start:start + len(X)]
                Xs.append(X[m])
                ys.append(store.labels[start:start + len(X)][m])
            y = np.concatenate(ys)
            if not len(y):
                continue
            perm = rng.permutation(len(y))
            X = scaler.transform(np.concatenate(Xs)[perm])
            for model in models:
                model.partial_fit(X, y[perm], classes=classes)


def predict_split(models, scaler, store, tap, split, proba: bool = False,
                  block: int = BLOCK_ROWS * BUFFER_BLOCKS) -> list:
    """Predictions ``(n_split,)`` of each model on ``split``, read block by block
    (``(n_split, n_classes)`` probabilities instead when ``proba``)."""
    outs = [[] for _ in models]
    for X, _y in store.iter_rows(tap, split, block):
        X = scaler.transform(X)
        for out, model in zip(outs, models):
            out.append(model.predict_proba(X) if proba else model.predict(X))
    n_classes = len(store.classes)
    return [np.concatenate(o) if o else np.zeros((0, n_classes) if proba else 0) for o in outs]


def stream_select_and_fit(store, tap: str, seed: int = 0, grid=None,
                          passes: Passes = Passes(), choice: Choice = Choice()):
    """The streaming counterpart of :func:`pipeline.heads.select_and_fit` for ``sgd-logreg``.

    Chooses ``alpha`` by the validation metric of ``choice`` (ties go to the larger
    alpha, the stronger regularisation), refits on train + val, predicts the test
    split; ``choice.class_weight="balanced"`` weights every fit.  ``passes``: epochs
    and the reads (:class:`Passes`).  Returns ``(FitResult, test_pred (n_test,),
    test_proba (n_test, n_classes))``; the result's model is a fitted
    ``Pipeline(StandardScaler(), SoftmaxSGD())``.
    """
    _check_tap(store, tap)
    passes.check()
    name = get_head("sgd-logreg").param
    n_classes = len(store.classes)
    y_train, y_val = store.y("train"), store.y("val")
    choice = choice.resolved("sgd-logreg", y_train)
    metric, class_weight = choice.metric, choice.class_weight
    balanced = class_weight == "balanced"
    sizes = store.split_sizes()
    n_train, n_fit = sizes["train"], sizes["train"] + sizes["val"]
    if grid is None:   # logreg's C grid: alpha = 1 / (C * n_train)
        grid = [1.0 / (C * n_train) for C in get_head("logreg").grid]
    values = sorted(grid, reverse=True)
    t0 = time.perf_counter()
    window = passes.window
    (scaler_train, scaler_all), eta0 = fit_scalers(store, tap, [(0,), (0, 1)], window,
                                                    steps=True)
    weights = balanced_weights(y_train, n_classes) if balanced else None
    models = [_sgd(a, seed, eta0, weights) for a in values]
    train_epochs(models, scaler_train, store, tap, (0,), seed, passes)
    search, best, best_score, best_pred = [], None, -1.0, None
    val_preds = predict_split(models, scaler_train, store, tap, "val", block=window)
    for alpha, pred in zip(values, val_preds):
        scores = metric_values(y_val, pred, n_classes)
        search.append({name: float(alpha), **{f"val_{m}": scores[m] for m in METRICS}})
        log.debug("sgd-logreg alpha=%g val %s %.4f", alpha, metric, scores[metric])
        if scores[metric] > best_score:
            best, best_score, best_pred = alpha, scores[metric], pred
    # the same C on train + val, as select_and_fit refits logreg
    fit_weights = (balanced_weights(np.concatenate([y_train, y_val]), n_classes)
                   if balanced else None)
    final = _sgd(best * n_train / n_fit, seed, eta0, fit_weights)
    train_epochs([final], scaler_all, store, tap, (0, 1), seed, passes)
    model = make_pipeline(scaler_all, final)
    fit_seconds = time.perf_counter() - t0
    proba = predict_split([final], scaler_all, store, tap, "test", proba=True, block=window)[0]
    test_pred = final.classes_[np.argmax(proba, axis=1)] if len(proba) else np.zeros(0, int)
    params = {name: float(best), "C": float(1.0 / (best * n_train)),
              "final_alpha": float(final.alpha), "eta0": float(final.eta0),
              **passes.record()}
    return (FitResult(model, params, best_pred, search, fit_seconds, metric, class_weight),
            test_pred, proba)
