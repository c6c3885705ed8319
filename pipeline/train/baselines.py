"""Baselines without pretrained features: raw pixels, the course's MLP, a scratch CNN.

:func:`fit_baseline` reads a feature store only for its image list, labels
and fixed split, so every baseline is judged on the same test images as the
frozen heads and fine-tuning; :func:`model_writer` saves its model (skops
for scikit-learn, a ``weights_only`` torch file for torch).  The run record is written by
:mod:`pipeline.workflows.baseline`.

- ``pixels``: images resized to ``size`` x ``size`` RGB, flattened,
  standardised, logistic regression with the C search of
  :func:`pipeline.heads.select_and_fit`.
- ``mlp``: the course's MLP on the same pixels: 128 ReLU units with batch
  norm and dropout, L2 weight penalty, early stopping (torch, via
  :func:`pipeline.training.train`).
- ``cnn``: four conv-BN-ReLU-pool blocks trained from scratch on ``size``-px
  crops with the standard augmentation and early stopping (same loop).

Every kind takes the run's selection metric (``metric``: what chooses C or
the epoch kept) and class weighting (``class_weight``: none or balanced,
weighting logistic regression's loss or the networks' cross-entropy); both are
resolved by the workflow and kept in the run's ``params``.

Both entry points return a :class:`BaselineFit`, whose fields carry the names of the
run record's fields they become (``label``, ``search``, ``fit_seconds``,
``trainable_params``, ``history``, ``skipped_images``; ``hyperparameters``).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from ..balance import METRICS
from ..data.decode import ImageDecodeError, load_rgb, resize_center_crop
from ..data.partition import inner_split
from ..errors import DataError, UsageError
from ..options import BASELINE_KINDS

log = logging.getLogger(__name__)

#: Defaults per kind; any key can be overridden through ``run_baseline(**opts)``.
DEFAULTS = {
    "pixels": {"size": 32},
    "mlp": {"size": 32, "hidden": 128, "dropout": 0.5, "l2": 1e-3, "lr": 1e-3,
            "epochs": 100, "batch_size": 64, "patience": 10},
    "cnn": {"size": 64, "width": 32, "dropout": 0.3, "lr": 3e-3, "weight_decay": 5e-4,
            "epochs": 30, "batch_size": 32, "patience": 8, "augment": "standard",
            "schedule": "cosine"},
}
#: Pixel baselines decode with this fixed preprocessing (no pretrained weights involved).
PIXEL_CROP_PCT = 1.0


def _params(kind: str, opts: dict, metric: str, class_weight: str) -> dict:
    """:data:`DEFAULTS` of ``kind`` overridden by ``opts``, with the selection metric and
    class weighting (both resolved: ``auto`` is the workflow's to decide)."""
    if kind not in BASELINE_KINDS:
        raise UsageError(f"unknown baseline {kind!r}; valid: {', '.join(BASELINE_KINDS)}",
                         param="kind")
    unknown = set(opts) - set(DEFAULTS[kind])
    if unknown:
        raise UsageError(f"baseline {kind!r} has no option(s) {', '.join(sorted(unknown))}; "
                         f"valid: {', '.join(sorted(DEFAULTS[kind]))}")
    if metric not in METRICS:
        raise UsageError(f"metric {metric!r} is not valid here; valid: {', '.join(METRICS)} "
                         "(resolve auto first: pipeline.balance.resolve_metric)", param="metric")
    if class_weight not in ("none", "balanced"):
        raise UsageError(f"class_weight {class_weight!r} is not valid here; valid: none, "
                         "balanced", param="class_weight")
    return {**DEFAULTS[kind], **opts, "metric": metric, "class_weight": class_weight}


@dataclass(kw_only=True)
class BaselineFit:
    """A fitted baseline: its model and what its run record reports.

    Fields named as the record's fields they become (:mod:`pipeline.runs.records`):
    ``label``, ``search``, ``fit_seconds``, ``trainable_params``, ``history``,
    ``skipped_images`` (``[(path, reason)]`` of training images that no longer
    decode); ``hyperparameters`` joins ``params`` (the kind's options with the
    selection metric and class weighting) and ``chosen`` (what validation or the
    inner folds chose: C, the best epoch, ...).

    Holdout (:func:`fit_baseline`): ``val_pred`` ``(n_val,)`` and ``test_pred``
    ``(n_test,)`` labels and ``test_proba`` ``(n_test, n_classes)`` on the store's
    split, ``folds`` empty.  Cross-validation (:func:`cv_baseline`): ``folds``, the
    outer :class:`~pipeline.heads.crossval.FoldResult` list, and ``model`` refitted
    on every image; no split predictions.
    """

    label: str
    model: object
    params: dict = field(default_factory=dict)
    chosen: dict = field(default_factory=dict)
    search: list = field(default_factory=list)
    fit_seconds: float = 0.0
    trainable_params: int | None = None
    history: list = field(default_factory=list)
    skipped_images: list = field(default_factory=list)
    val_pred: np.ndarray | None = None
    test_pred: np.ndarray | None = None
    test_proba: np.ndarray | None = None
    folds: list = field(default_factory=list)

    @property
    def hyperparameters(self) -> dict:
        """The record's ``hyperparameters``: ``params`` updated with ``chosen``."""
        return {**self.params, **self.chosen}


def fit_baseline(kind: str, store, seed: int = 0, metric: str = "accuracy",
                 class_weight: str = "none", **opts) -> BaselineFit:
    """Fit baseline ``kind`` on the split of ``store`` (a :class:`FeatureStore`).

    ``opts`` override :data:`DEFAULTS` (e.g. ``epochs=5``, ``size=48``);
    ``metric`` chooses C (pixels) or the epoch kept (mlp, cnn) on validation,
    ``class_weight`` (none | balanced) weights the loss.
    Returns a :class:`BaselineFit` with the split's predictions.
    """
    params = _params(kind, opts, metric, class_weight)
    runner = {"pixels": _fit_pixels, "mlp": _fit_mlp, "cnn": _fit_cnn}[kind]
    return runner(store, params, seed)


def model_writer(kind: str, fit: BaselineFit, store):
    """``(extension, write(path))`` saving ``fit``'s model (:func:`fit_baseline`,
    :func:`cv_baseline`)."""
    bundle = {"kind": kind, "params": fit.params, "classes": store.classes,
              "features_fingerprint": store.fingerprint}
    if kind == "pixels":
        def write(path):
            from ..heads.persist import save_head

            save_head({**bundle, "model": fit.model}, path)

        from ..heads.persist import HEAD_EXT

        return HEAD_EXT, write

    def write_torch(path):
        import torch

        torch.save({**bundle, "state_dict": fit.model.state_dict()}, path)

    return "pt", write_torch


# ------------------------------------------------------------------ pixels


def pixel_matrix(root, paths, size: int):
    """Flattened ``(n_ok, 3 * size * size)`` uint8 pixels and the indices that decoded."""
    rows, ok, skipped = [], [], []
    for i, p in enumerate(paths):
        try:
            img = load_rgb(Path(root) / p, target_short_side=size)
        except ImageDecodeError as exc:
            log.warning("skipped %s: %s", p, exc.reason)
            skipped.append((p, exc.reason))
            continue
        # PIL: tiny crops, and the report computes this too without importing torch.
        rows.append(resize_center_crop(img, size, PIXEL_CROP_PCT, "bilinear",
                                       backend="pil").reshape(-1))
        ok.append(i)
    X = np.stack(rows) if rows else np.zeros((0, 3 * size * size), np.uint8)
    return X, np.asarray(ok, dtype=np.int64), skipped


def _split_pixels(store, size):
    """``{split: (X float32, y)}`` of every split; val/test must decode completely."""
    out, skipped = {}, []
    for split in ("train", "val", "test"):
        paths, y = store.rel_paths(split), store.y(split)
        X, ok, bad = pixel_matrix(store.data_root, paths, size)
        skipped += bad
        if split != "train" and len(ok) != len(paths):
            raise DataError(_undecodable_eval(split, bad))
        out[split] = (X.astype(np.float32) / 255.0, y[ok])
    return out, skipped


def _undecodable_eval(split, bad) -> str:
    return (f"{len(bad)} {split} image(s) of the store no longer decode "
            f"({'; '.join(f'{p}: {r}' for p, r in bad[:3])}); every method must be "
            "judged on the same images: restore them or re-run extract")


def _fit_pixels(store, params, seed):
    from ..heads.selection import Choice, predict_proba, select_and_fit

    t0 = time.perf_counter()
    data, skipped = _split_pixels(store, params["size"])
    (X_tr, y_tr), (X_va, y_va), (X_te, _) = data["train"], data["val"], data["test"]
    res = select_and_fit("logreg", X_tr, y_tr, X_va, y_va, seed=seed,
                         choice=Choice(params["metric"], params["class_weight"]))
    est = res.model[-1]
    return BaselineFit(label=f"pixels {params['size']}x{params['size']} + logreg",
                       model=res.model, params=params, val_pred=res.val_pred,
                       test_pred=res.model.predict(X_te),
                       test_proba=predict_proba(res.model, X_te), chosen=res.params,
                       search=res.search, fit_seconds=time.perf_counter() - t0,
                       trainable_params=int(est.coef_.size + est.intercept_.size),
                       skipped_images=skipped)


# ------------------------------------------------------------------ torch models


def make_mlp(n_inputs: int, n_classes: int, hidden: int = 128, dropout: float = 0.5):
    """The course's MLP: Linear -> BatchNorm -> ReLU -> Dropout -> Linear."""
    import torch.nn as nn

    return nn.Sequential(nn.Linear(n_inputs, hidden), nn.BatchNorm1d(hidden), nn.ReLU(),
                         nn.Dropout(dropout), nn.Linear(hidden, n_classes))


def make_cnn(n_classes: int, width: int = 32, dropout: float = 0.3):
    """Four conv3x3-BN-ReLU-maxpool blocks (width, 2w, 4w, 8w), global average pool, linear."""
    import torch.nn as nn

    layers, c_in = [], 3
    for k in range(4):
        c_out = width * 2 ** k
        layers += [nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out),
                   nn.ReLU(inplace=True), nn.MaxPool2d(2)]
        c_in = c_out
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(dropout),
               nn.Linear(c_in, n_classes)]
    return nn.Sequential(*layers)


def cnn_preprocessing(size: int):
    """The scratch CNN's fixed preprocessing at ``size`` px (no pretrained weights)."""
    from ..backbones import Preprocessing

    return Preprocessing(input_size=size, crop_pct=0.875, interpolation="bilinear",
                         mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))


def mlp_from_bundle(bundle: dict):
    """The trained MLP of a saved baseline (:func:`model_writer`), in eval mode: standardised
    pixels ``(N, 3 * size * size)`` -> logits (its buffers ``pixel_mean`` and ``pixel_std``
    say how to standardise)."""
    import torch

    params = bundle["params"]
    n_inputs = 3 * params["size"] ** 2
    model = make_mlp(n_inputs, len(bundle["classes"]), params["hidden"], params["dropout"])
    model.register_buffer("pixel_mean", torch.zeros(n_inputs))
    model.register_buffer("pixel_std", torch.ones(n_inputs))
    model.load_state_dict(bundle["state_dict"])
    return model.eval()


def cnn_from_bundle(bundle: dict):
    """The trained scratch CNN of a saved baseline (:func:`model_writer`), in eval mode:
    normalised ``(N, 3, size, size)`` (:func:`cnn_preprocessing`) -> logits."""
    params = bundle["params"]
    model = make_cnn(len(bundle["classes"]), params["width"], params["dropout"])
    model.load_state_dict(bundle["state_dict"])
    return model.eval()


def _predict(model, dataset):
    from .loop import evaluate_model

    _, _, proba = evaluate_model(model, dataset)
    return proba


def _split_rows(store) -> dict:
    return {split: np.flatnonzero(store.mask(split)) for split in ("train", "val", "test")}


@dataclass(kw_only=True)
class _Trained:
    """A torch baseline trained on some rows (:func:`_fit_mlp_rows`, :func:`_fit_cnn_rows`):
    probabilities ``(n_rows, n_classes)`` of its ``val`` and ``test`` rows."""

    label: str
    model: object
    proba: np.ndarray
    val_proba: np.ndarray
    best_epoch: int
    history: list
    trainable_params: int
    fit_seconds: float
    skipped_images: list = field(default_factory=list)
    chosen: dict = field(default_factory=dict)


def _holdout(trained: _Trained, params: dict, skipped_images: list) -> BaselineFit:
    """The :class:`BaselineFit` of a torch baseline trained on the store's split."""
    return BaselineFit(label=trained.label, model=trained.model, params=params,
                       val_pred=trained.val_proba.argmax(1), test_pred=trained.proba.argmax(1),
                       test_proba=trained.proba,
                       chosen={"best_epoch": trained.best_epoch, **trained.chosen},
                       fit_seconds=trained.fit_seconds, trainable_params=trained.trainable_params,
                       history=trained.history, skipped_images=skipped_images)


def _fit_mlp(store, params, seed) -> BaselineFit:
    data, skipped = _split_pixels(store, params["size"])
    # rows that decoded, in store order; the split's rows are taken from there
    rows, pixels, start = {}, [], 0
    for split in ("train", "val", "test"):
        X, _y = data[split]
        rows[split] = np.arange(start, start + len(X))
        pixels.append(X)
        start += len(X)
    labels = np.concatenate([data[s][1] for s in ("train", "val", "test")])
    trained = _fit_mlp_rows(store, params, seed, rows, np.concatenate(pixels), labels)
    return _holdout(trained, params, skipped)


def _fit_cnn(store, params, seed) -> BaselineFit:
    trained = _fit_cnn_rows(store, params, seed, _split_rows(store), None,
                            skip_training_failures=True)
    return _holdout(trained, params, trained.skipped_images)


# ------------------------------------------------------------------ cross-validation


def cv_baseline(kind: str, store, seed: int = 0, metric: str = "accuracy",
                class_weight: str = "none", **opts) -> BaselineFit:
    """Baseline ``kind`` on every outer fold of ``store``'s repeated K-fold, nested.

    pixels: C chosen by an inner CV inside each outer training fold
    (:func:`pipeline.heads.crossval.cross_validate`); mlp and cnn: the
    early-stopping epoch chosen on an inner validation split (15%, stratified)
    of each outer training fold.  The outer test fold is never used for a
    choice.  The returned ``model`` is refitted on every image (pixels: C by
    inner CV over all; mlp/cnn: the median best epoch, no early stopping).
    ``metric`` chooses C or the epoch inside each outer training fold;
    ``class_weight`` (none | balanced) weights every fit's loss.
    Returns a :class:`BaselineFit` with the outer ``folds``.
    """
    params = _params(kind, opts, metric, class_weight)
    t0 = time.perf_counter()
    if kind == "cnn":   # each image decoded once for every fold's datasets
        fit = _cv_torch(store, params, seed, _fit_cnn_rows, {})
    else:
        X, y = _all_pixels(store, params["size"])
        fit = _cv_pixels(X, y, store, seed, params) if kind == "pixels" else \
            _cv_torch(store, params, seed, _fit_mlp_rows, X)
    return replace(fit, fit_seconds=time.perf_counter() - t0)


def _all_pixels(store, size):
    """``(X (n_images, 3 * size * size) float32 in [0, 1], y)``: every image must decode."""
    X, ok, bad = pixel_matrix(store.data_root, store.paths, size)
    if len(ok) != len(store):
        raise DataError(_undecodable_eval("cross-validation", bad))
    return X.astype(np.float32) / 255.0, store.labels


def _cv_pixels(X, y, store, seed, params) -> BaselineFit:
    from threadpoolctl import threadpool_limits

    from ..heads.crossval import choose_param, cross_validate
    from ..heads.selection import Choice, fit_head, make_head

    choice = Choice(params["metric"], params["class_weight"], store.row_groups)
    folds = cross_validate("logreg", X, y, store.cv_splits(), seed=seed, choice=choice,
                           calibrate=False)   # the saved baseline applies no temperature
    with threadpool_limits(1):
        chosen, search = choose_param("logreg", X, y, seed, choice=choice)
        model = fit_head(make_head("logreg", chosen["C"], seed,
                                   class_weight=params["class_weight"]), X, y,
                         params["class_weight"])
    est = model[-1]
    side = int(np.sqrt(X.shape[1] / 3))
    return BaselineFit(label=f"pixels {side}x{side} + logreg", folds=folds, model=model,
                       params=params, chosen=chosen, search=search,
                       trainable_params=int(est.coef_.size + est.intercept_.size))


def _cv_torch(store, params, seed, fit_rows, inputs) -> BaselineFit:
    """Outer folds of a torch baseline, one after the other (torch's own threads use the
    cores; folds in worker processes were measured slower in the demo, each worker
    importing torch again), then the final model on every image.  ``inputs``, given to
    every ``fit_rows`` call: the MLP's pixel matrix, the CNN's shared decoded images."""
    from ..heads.crossval import FoldResult

    y = store.labels
    folds, epochs, histories = [], [], []
    for r, k, train_rows, test_rows in store.cv_splits():
        tr, va = inner_split(y, train_rows, seed + r, groups=store.row_groups)
        out = fit_rows(store, params, seed, {"train": tr, "val": va, "test": test_rows},
                       inputs)
        epochs.append(out.best_epoch)
        histories.append(out.history)
        folds.append(FoldResult(r, k, test_rows, out.proba, {"best_epoch": out.best_epoch},
                                len(train_rows), seconds=out.fit_seconds))
        log.info("%s fold %d/%d of repeat %d: accuracy %.3f (best epoch %d)", out.label, k + 1,
                 int(store.folds[:, r].max()) + 1, r + 1,
                 float(np.mean(out.proba.argmax(1) == y[test_rows])), out.best_epoch)
    final_epochs = max(1, int(np.median(epochs)))
    everything = np.arange(len(y))
    final = fit_rows(store, {**params, "epochs": final_epochs, "patience": None}, seed,
                     {"train": everything, "val": everything, "test": everything[:0]}, inputs)
    return BaselineFit(label=final.label, folds=folds, model=final.model, params=params,
                       chosen={"best_epochs": epochs, "final_epochs": final_epochs},
                       trainable_params=final.trainable_params,
                       # the learning curves of the first outer fold: its validation is a
                       # real held-out split (the final model's has none)
                       history=histories[0])


def _predict_or_empty(model, dataset, n_classes: int) -> np.ndarray:
    return _predict(model, dataset) if len(dataset) else np.zeros((0, n_classes))


def _fit_mlp_rows(store, params, seed, rows, pixels, labels=None) -> _Trained:
    """The MLP trained on ``rows["train"]`` (early stopping on ``rows["val"]``) of the
    ``pixels`` matrix (labels: ``labels``, default the store's); probabilities of
    ``rows["val"]`` and ``rows["test"]``."""
    import torch

    from .datasets import TensorPairs
    from .loop import ParamGroup, Schedule, TrainConfig, loss_weights, select_by_for, train

    t0 = time.perf_counter()
    y = store.labels if labels is None else labels
    X_tr = pixels[rows["train"]]
    mean, std = X_tr.mean(0), X_tr.std(0) + 1e-6   # standardised on training rows only
    sets = {s: TensorPairs((pixels[idx] - mean) / std, y[idx]) for s, idx in rows.items()}
    torch.manual_seed(seed)
    model = make_mlp(pixels.shape[1], len(store.classes), params["hidden"], params["dropout"])
    cfg = TrainConfig(epochs=params["epochs"], batch_size=params["batch_size"],
                      optimizer="adam", weight_decay=params["l2"],
                      schedule=Schedule("constant", per="epoch"),
                      patience=params["patience"], seed=seed,
                      class_weights=loss_weights(params["class_weight"], sets["train"],
                                                 len(store.classes)),
                      select_by=select_by_for(params["metric"]))
    res = train(model, [ParamGroup("mlp", list(model.parameters()), params["lr"])],
                sets["train"], sets["val"], cfg)
    proba = _predict_or_empty(model, sets["test"], len(store.classes))
    val_proba = _predict_or_empty(model, sets["val"], len(store.classes))
    # Kept in the saved state_dict so the model can be applied to new pixels.
    model.register_buffer("pixel_mean", torch.as_tensor(mean))
    model.register_buffer("pixel_std", torch.as_tensor(std))
    return _Trained(label=f"MLP {params['hidden']} on {params['size']}px pixels", model=model,
                    proba=proba, val_proba=val_proba, best_epoch=res.best_epoch,
                    history=res.history, trainable_params=res.trainable_params,
                    fit_seconds=time.perf_counter() - t0)


def _fit_cnn_rows(store, params, seed, rows, decoded=None,
                  skip_training_failures=False) -> _Trained:
    """The scratch CNN trained on ``rows["train"]`` (early stopping on ``rows["val"]``);
    probabilities of ``rows["val"]`` and ``rows["test"]``.  ``decoded``: a dict the
    datasets keep decoded images in, shared by the calls of one cross-validation.
    Images that no longer decode are an error, except training images with
    ``skip_training_failures`` (then listed in ``skipped_images``)."""
    import torch

    from .datasets import ImageFolderDataset
    from .loop import ParamGroup, Schedule, TrainConfig, loss_weights, select_by_for, train

    t0 = time.perf_counter()
    pre = cnn_preprocessing(params["size"])
    sets, skipped = {}, []
    for split, idx in rows.items():
        ds = ImageFolderDataset(store.data_root, [store.paths[i] for i in idx],
                                store.labels[idx], pre,
                                augment=params["augment"] if split == "train" else "none",
                                decoded=decoded)
        skipped += ds.skipped
        if ds.skipped and not (split == "train" and skip_training_failures):
            raise DataError(_undecodable_eval(split, ds.skipped))
        sets[split] = ds
    torch.manual_seed(seed)
    model = make_cnn(len(store.classes), params["width"], params["dropout"])
    cfg = TrainConfig(epochs=params["epochs"], batch_size=params["batch_size"],
                      weight_decay=params["weight_decay"],
                      schedule=Schedule(params["schedule"], per="step"),
                      patience=params["patience"], seed=seed,
                      class_weights=loss_weights(params["class_weight"], sets["train"],
                                                 len(store.classes)),
                      select_by=select_by_for(params["metric"]))
    res = train(model, [ParamGroup("cnn", list(model.parameters()), params["lr"])],
                sets["train"], sets["val"], cfg)
    n_classes = len(store.classes)
    width = "" if params["width"] == DEFAULTS["cnn"]["width"] else f", width {params['width']}"
    return _Trained(label=f"scratch CNN {params['size']}px{width}", model=model,
                    proba=_predict_or_empty(model, sets["test"], n_classes),
                    val_proba=_predict_or_empty(model, sets["val"], n_classes),
                    best_epoch=res.best_epoch, history=res.history, skipped_images=skipped,
                    chosen={"normalisation": pre.to_dict()},
                    trainable_params=res.trainable_params,
                    fit_seconds=time.perf_counter() - t0)
