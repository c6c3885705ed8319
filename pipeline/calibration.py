"""Can a predicted probability be read as a probability?  Calibration error and temperature.

Pure functions of probability matrices and labels; no model, no file.

- :func:`ece`: the expected calibration error of the top-label confidence
  (Guo et al. 2017, "On calibration of modern neural networks"): the images are
  put in :data:`N_BINS` equal-width bins of their highest probability, and the
  gap between each bin's mean confidence and its accuracy is averaged, weighted
  by the bin's share of images.  0 is perfectly calibrated; 0.05 means a "90%"
  is right about 85 or 95% of the time.
- :func:`fit_temperature` / :func:`scale`: temperature scaling (same paper): one
  scalar ``T > 0`` divides the log-probabilities (the logits, up to a constant per
  image) before the softmax; ``T`` minimises the negative log-likelihood of the
  labels on *validation* predictions.  Dividing by a positive number keeps every
  image's order of classes, so the predicted class never changes: only the
  confidence does (``T > 1`` softens an over-confident model).

Where ``T`` is fitted (never on the rows it is scored on) is the caller's: a
holdout run's validation split, each outer fold's inner validation rows under
cross-validation (:mod:`pipeline.heads.crossval`, :mod:`pipeline.train.finetune`),
and for the saved model the out-of-fold predictions of every image.
:func:`calibration_block` is what a run record keeps (``calibration``).
"""

from __future__ import annotations

import numpy as np

#: Equal-width confidence bins of the ECE and the reliability diagram.
N_BINS = 15
#: Probabilities are clipped here before the log (a kNN head gives exact zeros).
EPS = 1e-7
#: The temperatures searched (log-spaced bounds of a bounded scalar minimisation).
T_RANGE = (0.05, 20.0)


def _log_proba(proba) -> np.ndarray:
    return np.log(np.clip(np.asarray(proba, dtype=np.float64), EPS, 1.0))


def scale(proba, temperature: float | None) -> np.ndarray:
    """``proba`` ``(n, k)`` with its log divided by ``temperature``, renormalised (softmax);
    ``None`` or 1 gives ``proba`` back unchanged."""
    proba = np.asarray(proba, dtype=np.float64)
    if temperature is None or temperature == 1.0 or len(proba) == 0:
        return proba
    z = _log_proba(proba) / float(temperature)
    z -= z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def nll(proba, y) -> float:
    """Mean negative log-likelihood of labels ``y`` ``(n,)`` under ``proba`` ``(n, k)``."""
    y = np.asarray(y, dtype=np.int64)
    return float(-np.mean(_log_proba(proba)[np.arange(len(y)), y])) if len(y) else float("nan")


def fit_temperature(proba, y) -> float:
    """The temperature that minimises the NLL of ``y`` under :func:`scale` of ``proba``
    (validation predictions); 1.0 when there is nothing to fit on (no rows, one class)."""
    from scipy.optimize import minimize_scalar

    y = np.asarray(y, dtype=np.int64)
    if len(y) < 2 or len(np.unique(y)) < 2:
        return 1.0
    logp = _log_proba(proba)
    rows = np.arange(len(y))

    def loss(log_t):
        z = logp / np.exp(log_t)
        z -= z.max(axis=1, keepdims=True)
        return float(np.mean(np.log(np.exp(z).sum(axis=1)) - z[rows, y]))

    lo, hi = np.log(T_RANGE[0]), np.log(T_RANGE[1])
    res = minimize_scalar(loss, bounds=(lo, hi), method="bounded", options={"xatol": 1e-4})
    t = float(np.exp(res.x))
    return t if loss(np.log(t)) <= loss(0.0) else 1.0


def reliability(proba, y, n_bins: int = N_BINS) -> list[dict]:
    """The reliability diagram's bins that hold images: ``[{lo, hi, confidence, accuracy,
    n}]`` (mean top probability and accuracy of the images whose top probability is in
    ``(lo, hi]``)."""
    proba = np.asarray(proba, dtype=np.float64)
    y = np.asarray(y, dtype=np.int64)
    if len(y) == 0:
        return []
    conf, correct = proba.max(axis=1), proba.argmax(axis=1) == y
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    which = np.clip(np.searchsorted(edges, conf, side="left") - 1, 0, n_bins - 1)
    out = []
    for b in range(n_bins):
        inside = which == b
        if inside.any():
            out.append({"lo": float(edges[b]), "hi": float(edges[b + 1]),
                        "confidence": float(conf[inside].mean()),
                        "accuracy": float(correct[inside].mean()), "n": int(inside.sum())})
    return out


def ece(proba, y, n_bins: int = N_BINS) -> float:
    """Expected calibration error of the top-label confidence, ``n_bins`` equal-width bins."""
    return _ece_of(reliability(proba, y, n_bins))


def _ece_of(bins: list) -> float:
    """The ECE of :func:`reliability`'s bins: their gaps weighted by their images."""
    n = sum(b["n"] for b in bins)
    return float(sum(b["n"] * abs(b["confidence"] - b["accuracy"]) for b in bins) / n) if n \
        else float("nan")


def calibration_block(y, proba, scaled, temperature: float, fitted_on: str) -> dict:
    """What a run record keeps of its calibration (``calibration``): the temperature its
    saved model applies and where it was fitted, and the scored predictions' ECE and NLL
    before (``proba``) and after (``scaled``: each scored image scaled by a temperature
    fitted without it) with both reliability diagrams."""
    before, after = reliability(proba, y), reliability(scaled, y)
    return {"method": "temperature", "temperature": float(temperature), "fitted_on": fitted_on,
            "n_bins": N_BINS, "ece": _ece_of(before), "ece_scaled": _ece_of(after),
            "nll": nll(proba, y), "nll_scaled": nll(scaled, y),
            "reliability": {"before": before, "after": after}}


#: Where a cross-validated run's temperatures were fitted (its record's ``fitted_on``).
CV_FITTED_ON = ("scored: each outer fold's predictions scaled by a temperature fitted on "
                "its training rows' inner validation predictions; saved model: the "
                "temperature fitted on the out-of-fold predictions of every image (repeat 0)")
#: ... and a holdout run's.
HOLDOUT_FITTED_ON = "the validation split's predictions (a head trained on the training split)"


def holdout_calibration(y_val, val_proba, y_test, test_proba) -> dict | None:
    """The calibration block of a holdout run: the temperature fitted on its validation
    predictions, the test predictions' errors before and after it (None without
    validation probabilities)."""
    if val_proba is None or test_proba is None or len(y_test) == 0:
        return None
    t = fit_temperature(val_proba, y_val)
    return calibration_block(y_test, test_proba, scale(test_proba, t), t, HOLDOUT_FITTED_ON)


def cv_calibration(folds, y) -> dict | None:
    """The calibration block of a cross-validated run from its outer ``folds`` (objects with
    ``repeat, test, proba, temperature``, e.g. :class:`pipeline.heads.crossval.FoldResult`):
    repeat 0's out-of-fold predictions before and after each fold's own temperature, and
    the saved model's temperature fitted on all of them.  None when a fold of repeat 0 has
    no temperature (a kind that fits none, or no inner validation)."""
    first = [f for f in folds if f.repeat == 0]
    if not first or any(getattr(f, "temperature", None) is None for f in first):
        return None
    y = np.asarray(y)
    rows = np.concatenate([np.asarray(f.test) for f in first])
    proba = np.concatenate([np.asarray(f.proba, dtype=np.float64) for f in first])
    scaled = np.concatenate([scale(f.proba, f.temperature) for f in first])
    return calibration_block(y[rows], proba, scaled, fit_temperature(proba, y[rows]),
                             CV_FITTED_ON)
