"""The torch modules a run's saved model is rebuilt from: uint8 RGB crops in, probabilities out.

Each kind of trained model (:mod:`pipeline.models`: a frozen head on its
backbone's tap, a fine-tuned network, the scratch CNN, the MLP or the pixel
logistic regression) assembles its :class:`Classifier` from these parts: it takes
``(N, S, S, 3)`` uint8 RGB crops, and comes with the
:class:`~pipeline.data.decode.CropRule` that makes those crops the way the
run's training made them (:func:`loader_rule`, :func:`pixel_rule`,
:func:`transform_rule`; tests/test_export.py compares each rule with its
training transform pixel for pixel).  ``predict`` runs it eagerly for torch
runs; ``export`` writes it as one ONNX graph.

Heads whose kind exports as ``linear`` (logistic regression, linear SVM, the
SGD head: :mod:`pipeline.heads.registry`) become one ``nn.Linear`` with the
standardiser folded in, read off the fitted scikit-learn pipeline and checked
against its ``predict_proba`` (:func:`linear_head`); the others (RBF-SVM, kNN)
have no such form, and ``export`` converts them with skl2onnx.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from ..data.decode import CropRule
from ..errors import StoreError, UsageError, unsafe_load_reason
from ..heads.registry import head_name, head_of_model, linear_heads

#: Largest difference from scikit-learn's probabilities a converted head may show.
HEAD_TOLERANCE = 1e-5


class Classifier(nn.Module):
    """``forward(images)``: ``(N, S, S, 3)`` uint8 RGB -> ``(N, n_classes)`` probabilities,
    the softmax of ``body``'s logits (``body`` takes ``(N, 3, S, S)`` uint8) divided by the
    run's ``temperature`` (:mod:`pipeline.calibration`; 1: none)."""

    def __init__(self, body: nn.Module, temperature: float = 1.0):
        super().__init__()
        self.body = body
        self.temperature = float(temperature)

    def forward(self, images):
        logits = self.body(images.permute(0, 3, 1, 2))
        if self.temperature != 1.0:
            logits = logits / self.temperature
        return torch.softmax(logits, dim=1)


class FlipAverage(nn.Module):
    """``net``'s logits averaged over the input and its horizontal mirror (test-time
    augmentation of a run trained with ``tta="flip"``)."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, x):
        return (self.net(x) + self.net(torch.flip(x, dims=[-1]))) / 2


class Normalise(nn.Module):
    """uint8 ``(N, 3, H, W)`` -> ``(x / 255 - mean) / std`` per channel, then ``net``."""

    def __init__(self, net: nn.Module, mean, std):
        super().__init__()
        self.net = net
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1)
                             * 255.0, persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1)
                             * 255.0, persistent=False)

    def forward(self, x):
        return self.net((x.float() - self.mean) / self.std)


class Pixels(nn.Module):
    """uint8 ``(N, 3, S, S)`` -> ``(N, 3 * S * S)`` in [0, 1], channel-major like
    :func:`pipeline.train.baselines.pixel_matrix`; optionally standardised, then ``net``."""

    def __init__(self, net: nn.Module, mean=None, std=None):
        super().__init__()
        self.net = net
        self.standardise = mean is not None
        if self.standardise:
            self.register_buffer("mean", torch.as_tensor(mean).float().view(1, -1),
                                 persistent=False)
            self.register_buffer("std", torch.as_tensor(std).float().view(1, -1),
                                 persistent=False)

    def forward(self, x):
        x = x.float().reshape(x.shape[0], -1) / 255.0
        if self.standardise:
            x = (x - self.mean) / self.std
        return self.net(x)


class FrozenHead(nn.Module):
    """The cut backbone (normalisation, stages to the tap, pooling) and a linear head."""

    def __init__(self, extractor: nn.Module, linear: nn.Linear):
        super().__init__()
        self.extractor = extractor
        self.linear = linear

    def forward(self, x):
        return self.linear(self.extractor(x)[0])


def linear_head(model, n_features: int, chunk: int = 256) -> nn.Linear:
    """An ``nn.Linear`` whose softmax equals ``predict_proba(model, X)`` of a linear head.

    ``model`` is a fitted ``Pipeline(StandardScaler(), estimator)`` (or a bare
    estimator) of a head kind that exports as ``linear``: its decision function is
    affine (up to a term common to every class, which the softmax drops), so it is
    read off exactly (float64) at 0 and the unit vectors, the standardiser included.
    Binary heads give one score ``z``: probabilities ``softmax([0, z])`` (logistic
    regression) or ``softmax([-z, z])`` (margins, as
    :func:`pipeline.heads.selection.predict_proba` makes them); the form that matches
    ``predict_proba`` on probe features is kept, and a head matching neither is refused.
    """
    from ..heads.selection import predict_proba

    name, head = head_name(model), head_of_model(model)
    if head is None or head.export != "linear":
        raise UsageError(f"a {name} head is not linear; only {', '.join(linear_heads())} "
                         "heads become one linear layer")
    decision = model.decision_function
    bias = np.asarray(decision(np.zeros((1, n_features))), dtype=np.float64)
    cols = []
    for start in range(0, n_features, chunk):
        rows = np.arange(start, min(start + chunk, n_features))
        eye = np.zeros((len(rows), n_features))
        eye[np.arange(len(rows)), rows] = 1.0
        cols.append(np.asarray(decision(eye), dtype=np.float64) - bias)
    weight, bias = np.concatenate(cols).T, bias[0]       # (n_out, n_features), (n_out,)
    forms = [(weight, bias)]
    if weight.ndim == 1:                                 # binary: one score
        forms = [(np.stack([sign * weight, weight]), np.array([sign * bias, bias]))
                 for sign in (0.0, -1.0)]
    probe = _probe_features(model, n_features)
    want, gaps = predict_proba(model, probe), []
    for w, b in forms:
        linear = nn.Linear(n_features, w.shape[0])
        with torch.no_grad():
            linear.weight.copy_(torch.from_numpy(w))
            linear.bias.copy_(torch.from_numpy(b))
            ours = torch.softmax(linear(torch.from_numpy(probe)), dim=1).numpy()
        gaps.append(float(np.abs(ours - want).max()))
        if gaps[-1] <= HEAD_TOLERANCE:
            return linear.eval()
    raise UsageError(f"the {name} head's probabilities are not a softmax of its decision "
                     f"function (differ by {min(gaps):.2g}); it cannot be converted")


def _probe_features(model, n_features: int) -> np.ndarray:
    """float32 features around the standardiser's mean, at its scale."""
    rng = np.random.default_rng(0)
    scaler = model.steps[0][1] if hasattr(model, "steps") else None
    mean = getattr(scaler, "mean_", np.zeros(n_features))
    scale = getattr(scaler, "scale_", np.ones(n_features))
    return (mean + scale * rng.normal(size=(16, n_features))).astype(np.float32)


def check_head_weights(bundle: dict) -> str:
    """The weights source a frozen head's features were made with; :class:`StoreError`
    when that source now gives other weights."""
    from ..backbones import get_backbone, weights_identity

    cfg = bundle["store_config"]
    source = bundle.get("weights_source") or "imagenet"
    identity = weights_identity(get_backbone(cfg["backbone"]), source)
    if identity != cfg["weights"]:
        raise StoreError(
            f"the head was trained on features from weights {cfg['weights']} but "
            f"{source!r} now gives {identity}; restore those weights")
    return source


def load_torch_model(path) -> dict:
    """The bundle of a saved torch run (fine-tuning, MLP, CNN), loaded ``weights_only``:
    tensors and plain data only, so a crafted file cannot run code.  Which kind of
    model it holds is for :mod:`pipeline.models` to recognise."""
    if not Path(path).is_file():
        raise StoreError(f"no saved model at {path}")
    try:
        bundle = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - torch raises many types for a bad file
        raise StoreError(
            f"{path} cannot be read as a saved model ({unsafe_load_reason(exc)}); it is "
            "damaged or was not written by this tool. Train the run again"
        ) from None
    return bundle


def loader_rule(pre) -> CropRule:
    """The crops :class:`pipeline.extraction.loader.ImageDataset` makes with
    preprocessing ``pre`` (a frozen head's features): short side
    ``floor(S / crop_pct)``, long side rounded, offset floored; resized there by
    torch's antialiased kernels, which implement PIL's: within 2/255."""
    return CropRule(pre.input_size, int(math.floor(pre.input_size / pre.crop_pct)),
                    pre.interpolation, "round", None, int(pre.input_size / pre.crop_pct))


def pixel_rule(size: int) -> CropRule:
    """The pixels of :func:`pipeline.train.baselines.pixel_matrix` at ``size`` px (PIL
    bilinear, no crop margin): the pixel and MLP baselines."""
    return CropRule(size, size, "bilinear", "round", None, size)


def transform_rule(pre, pre_shrink: bool) -> CropRule:
    """``image_transform(pre, "none")`` (torchvision Resize + CenterCrop) after ``load_rgb``
    (fine-tuning with the trunk cache), or, with ``pre_shrink``, after
    :class:`pipeline.train.datasets.ImageFolderDataset` first shrinks large images with
    bicubic (the CNN, fine-tuning without the cache)."""
    short = int(math.ceil(pre.input_size / pre.crop_pct))
    return CropRule(pre.input_size, int(pre.input_size / pre.crop_pct), pre.interpolation,
                    "torchvision", short if pre_shrink else None, short)


def as_classifier(body: nn.Module, temperature: float = 1.0) -> Classifier:
    """``body`` (uint8 ``(N, 3, S, S)`` -> logits) as a :class:`Classifier` in eval mode,
    its parameters frozen, its logits divided by ``temperature``."""
    for p in body.parameters():
        p.requires_grad_(False)
    return Classifier(body, temperature).eval()


class Features(nn.Module):
    """``forward(images)``: ``(N, S, S, 3)`` uint8 RGB -> ``(N, C)`` pooled features of one
    tap (the cut backbone of a frozen head, for heads converted outside torch)."""

    def __init__(self, extractor: nn.Module):
        super().__init__()
        self.extractor = extractor

    def forward(self, images):
        return self.extractor(images.permute(0, 3, 1, 2))[0]
