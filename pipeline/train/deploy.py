"""A trained run as one torch module: uint8 RGB crops in, class probabilities out.

:func:`build_classifier` rebuilds the model a run saved (a frozen head on
its backbone's tap, a fine-tuned network, the scratch CNN, the MLP or the
pixel logistic regression) as a :class:`Classifier` taking ``(N, S, S, 3)``
uint8 RGB crops, and returns it with the
:class:`~pipeline.data.decode.CropRule` that makes those crops the way the
run's training made them (tests/test_export.py compares the rule with the
training transforms pixel for pixel).  ``predict`` runs it eagerly for torch
runs; ``export`` writes it as one ONNX graph.

Linear heads (logistic regression, linear SVM, the SGD head) become one
``nn.Linear`` with the standardiser folded in, read off the fitted
scikit-learn pipeline and checked against its ``predict_proba``; RBF-SVM
and kNN heads have no such form: :func:`build_frozen_trunk` gives their
backbone alone, and ``export`` converts the head with skl2onnx.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn as nn

from ..data.decode import CropRule
from ..errors import StoreError, UsageError

#: Final estimators of a head that are an affine map of the features (then a softmax).
LINEAR_HEADS = ("LogisticRegression", "LinearSVC", "SoftmaxSGD")
#: Largest difference from scikit-learn's probabilities a converted head may show.
HEAD_TOLERANCE = 1e-5


class Classifier(nn.Module):
    """``forward(images)``: ``(N, S, S, 3)`` uint8 RGB -> ``(N, n_classes)`` probabilities,
    the softmax of ``body``'s logits (``body`` takes ``(N, 3, S, S)`` uint8)."""

    def __init__(self, body: nn.Module):
        super().__init__()
        self.body = body

    def forward(self, images):
        return torch.softmax(self.body(images.permute(0, 3, 1, 2)), dim=1)


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


def head_name(model) -> str:
    """Class name of a head's final estimator (``LogisticRegression``, ``SVC`` ...)."""
    est = model.steps[-1][1] if hasattr(model, "steps") else model
    return type(est).__name__


def linear_head(model, n_features: int, chunk: int = 256) -> nn.Linear:
    """An ``nn.Linear`` whose softmax equals ``predict_proba(model, X)`` of a linear head.

    ``model`` is a fitted ``Pipeline(StandardScaler(), LogisticRegression |
    LinearSVC | SoftmaxSGD)`` (or a bare estimator): its decision function is
    affine, so it is read off exactly (float64) at 0 and the unit vectors,
    the standardiser included.  Binary heads give one score ``z``: logistic
    regression's probabilities are ``softmax([0, z])``, the linear SVM's (as
    :func:`pipeline.heads.selection.predict_proba` makes them) ``softmax([-z, z])``.
    The result is checked against ``predict_proba`` on probe features.
    """
    from ..heads.selection import predict_proba

    name = head_name(model)
    if name not in LINEAR_HEADS:
        raise UsageError(f"a {name} head is not linear; only logistic regression, linear SVM "
                         "and SGD heads become one linear layer")
    decision = model.decision_function
    bias = np.asarray(decision(np.zeros((1, n_features))), dtype=np.float64)
    cols = []
    for start in range(0, n_features, chunk):
        rows = np.arange(start, min(start + chunk, n_features))
        eye = np.zeros((len(rows), n_features))
        eye[np.arange(len(rows)), rows] = 1.0
        cols.append(np.asarray(decision(eye), dtype=np.float64) - bias)
    weight, bias = np.concatenate(cols).T, bias[0]       # (n_out, n_features), (n_out,)
    if weight.ndim == 1:                                 # binary: one score
        sign = 0.0 if name == "LogisticRegression" else -1.0
        weight, bias = np.stack([sign * weight, weight]), np.array([sign * bias, bias])
    linear = nn.Linear(n_features, weight.shape[0])
    with torch.no_grad():
        linear.weight.copy_(torch.from_numpy(weight))
        linear.bias.copy_(torch.from_numpy(bias))
    probe = _probe_features(model, n_features)
    with torch.no_grad():
        ours = torch.softmax(linear(torch.from_numpy(probe)), dim=1).numpy()
    gap = float(np.abs(ours - predict_proba(model, probe)).max())
    if gap > HEAD_TOLERANCE:
        raise UsageError(f"the {name} head's probabilities are not a softmax of its decision "
                         f"function (differ by {gap:.2g}); it cannot be converted")
    return linear.eval()


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
    tensors and plain data only, so a crafted file cannot run code."""
    try:
        bundle = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - torch raises many types for a bad file
        raise StoreError(
            f"{path} cannot be read as a saved model ({type(exc).__name__}: "
            f"{str(exc).splitlines()[0][:200] if str(exc) else ''}); it is damaged or holds "
            "more than tensors and plain data (it is never unpickled). Train the run again"
        ) from None
    if not isinstance(bundle, dict) or not ("top_state" in bundle
                                            or bundle.get("kind") in ("mlp", "cnn")):
        raise StoreError(f"{path} holds no fine-tuned network or baseline of this tool")
    return bundle


def crop_rule(kind: str, bundle: dict) -> CropRule:
    """How run ``kind``'s training made its (eval) crops, as a :class:`CropRule`.

    frozen: :class:`pipeline.extraction.loader.ImageDataset` (short side
    ``floor(S / crop_pct)``, long side rounded, offset floored; resized there by
    torch's antialiased kernels, which implement PIL's: within 2/255);
    pixels, mlp: :func:`pipeline.train.baselines.pixel_matrix` (PIL bilinear, no
    crop margin); finetune: ``image_transform(pre, "none")`` (torchvision
    Resize + CenterCrop) after ``load_rgb``; cnn and fine-tuning without the
    trunk cache: :class:`pipeline.train.datasets.ImageFolderDataset`, which
    first shrinks large images with bicubic.
    """
    if kind == "frozen":
        from ..backbones import get_backbone

        pre = get_backbone(bundle["store_config"]["backbone"]).preprocessing
        return CropRule(pre.input_size, int(math.floor(pre.input_size / pre.crop_pct)),
                        pre.interpolation, "round", None, int(pre.input_size / pre.crop_pct))
    if kind in ("pixels", "mlp"):
        size = int(bundle["params"]["size"])
        return CropRule(size, size, "bilinear", "round", None, size)
    if kind == "cnn":
        from .baselines import cnn_preprocessing

        pre, cached_trunk = cnn_preprocessing(int(bundle["params"]["size"])), False
    elif kind == "finetune":
        from ..backbones import Preprocessing

        pre = Preprocessing(**bundle["preprocessing"])
        cached_trunk = int(bundle["cut"]) > 0
    else:
        raise UsageError(f"unknown model kind {kind!r}")
    short = int(math.ceil(pre.input_size / pre.crop_pct))
    return CropRule(pre.input_size, int(pre.input_size / pre.crop_pct), pre.interpolation,
                    "torchvision", None if cached_trunk else short, short)


class Features(nn.Module):
    """``forward(images)``: ``(N, S, S, 3)`` uint8 RGB -> ``(N, C)`` pooled features of one
    tap (the cut backbone of a frozen head, for heads converted outside torch)."""

    def __init__(self, extractor: nn.Module):
        super().__init__()
        self.extractor = extractor

    def forward(self, images):
        return self.extractor(images.permute(0, 3, 1, 2))[0]


def build_frozen_trunk(bundle: dict) -> tuple[Features, CropRule, dict]:
    """``(features module in eval mode, crop rule, details)`` of a frozen head's run: the
    backbone cut at its tap, pooled, without the head."""
    from ..backbones import load_backbone
    from ..extraction.forward import build_extractor

    cfg, tap = bundle["store_config"], bundle["tap"]
    loaded = load_backbone(cfg["backbone"], check_head_weights(bundle))
    trunk = Features(build_extractor(loaded, [tap], cfg["pooling"])).eval()
    details = {"backbone": cfg["backbone"], "tap": tap, "pooling": cfg["pooling"],
               "weights": cfg["weights"], "head": head_name(bundle["model"]),
               "channels": loaded.spec.tap(tap).channels}
    return trunk, crop_rule("frozen", bundle), details


def build_classifier(kind: str, bundle: dict) -> tuple[Classifier, CropRule, dict]:
    """``(classifier in eval mode, crop rule, details)`` of a run's saved model.

    ``kind``: frozen (a head bundle of :func:`pipeline.heads.persist.load_head`),
    pixels (the pixel baseline's head bundle), mlp, cnn, finetune (bundles of
    :func:`load_torch_model`).  ``details`` names the backbone, tap and pooling.
    """
    details = {"backbone": "", "tap": "", "pooling": ""}
    if kind == "frozen":
        trunk, _rule, details = build_frozen_trunk(bundle)
        body = FrozenHead(trunk.extractor, _head_or_refusal(bundle["model"],
                                                            details["channels"]))
    elif kind == "pixels":
        size = int(bundle["params"]["size"])
        body = Pixels(_head_or_refusal(bundle["model"], 3 * size * size))
        details["head"] = head_name(bundle["model"])
    elif kind == "mlp":
        from .baselines import network_from_bundle

        net = network_from_bundle(bundle)
        body = Pixels(net, net.pixel_mean, net.pixel_std)
    elif kind == "cnn":
        from .baselines import cnn_preprocessing, network_from_bundle

        pre = cnn_preprocessing(int(bundle["params"]["size"]))
        body = Normalise(network_from_bundle(bundle), pre.mean, pre.std)
    elif kind == "finetune":
        from .finetune import network_from_bundle

        pre = bundle["preprocessing"]
        body = Normalise(network_from_bundle(bundle), pre["mean"], pre["std"])
        details["backbone"] = bundle["config"]["backbone"]
    else:
        raise UsageError(f"unknown model kind {kind!r}")
    for p in body.parameters():
        p.requires_grad_(False)
    return Classifier(body).eval(), crop_rule(kind, bundle), details


def _head_or_refusal(model, n_features: int) -> nn.Linear:
    name = head_name(model)
    if name not in LINEAR_HEADS:
        raise UsageError(f"a {name} head has no exact linear form; pipeline.workflows.export "
                         "converts it with skl2onnx", param="model_ref")
    return linear_head(model, n_features)
