"""Class-activation maps: where in its input crop a trained model finds the evidence for a class.

:meth:`pipeline.models.base.TrainedModel.cam` asks its kind for one map per
image; this module holds what the kinds share:

- :func:`linear_cam`: the exact map of a linear head on average-pooled tap
  features (Zhou et al. 2016): the class score is the mean over positions of
  ``sum_c w_kc A_c(x, y)``, so that sum, position by position, *is* the score's
  spatial decomposition (the standardiser is folded into ``w``, the bias is
  common to every position and dropped);
- :func:`grad_x_activation`: the same decomposition for a linear head on max or
  GeM pooling (captum ``LayerGradientXActivation``, summed over channels): exact
  too, as both poolings are homogeneous of degree 1;
- :func:`grad_cam`: Grad-CAM (Selvaraju et al. 2017) at one layer through captum
  (``LayerGradCam``, ``LayerAttribution.interpolate``): the layer's channels
  weighted by the spatial mean of the class score's gradient, summed, ReLU; for
  fine-tuned networks and the scratch CNN, where no exact decomposition exists;
- :func:`last_spatial_layer`: the deepest of some modules whose output is still a
  map (``(N, C, H, W)`` with ``H * W > 1``);
- :func:`overlay`: a crop with its map blended in as a ``jet`` heat map.

Maps are upsampled bilinearly to the crop and scaled to [0, 1] per image
(divided by their maximum after the ReLU; the linear CAM is shifted by its
minimum first, as Zhou et al. draw it).  captum is imported inside the
functions: opening a model never needs it.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np

from ..errors import UsageError

#: How much of the heat map an overlay shows (the rest is the crop).
OVERLAY_ALPHA = 0.45


@dataclass
class ClassMaps:
    """One map per image that decoded.

    ``maps``: ``(n_ok, S, S)`` float32 in [0, 1] over the model's input crop;
    ``crops``: ``(n_ok, S, S, 3)`` uint8, those crops (made by the model's crop
    rule); ``targets``: ``(n_ok,)`` the class index each map is for;
    ``proba``: ``(n_ok, n_classes)`` the model's probabilities of the crops;
    ``errors``: ``{file index: reason}`` of the files that did not decode;
    ``method``: what the maps are (e.g. ``"CAM at layer4"``).
    """

    maps: np.ndarray
    crops: np.ndarray
    targets: np.ndarray
    proba: np.ndarray
    method: str
    errors: dict = field(default_factory=dict)

    def overlays(self) -> np.ndarray:
        """``(n_ok, S, S, 3)`` uint8: each crop with its map blended in (:func:`overlay`)."""
        return np.stack([overlay(c, m) for c, m in zip(self.crops, self.maps)]) \
            if len(self.maps) else self.crops


def resolve_targets(target, classes: list, n: int):
    """``target`` as ``n`` class indices, or None (each image's predicted class).

    ``target``: None, a class index or name (every image), or one per image."""
    if target is None:
        return None
    many = isinstance(target, (list, tuple, np.ndarray))
    items = list(target) if many else [target] * n
    if len(items) != n:
        raise UsageError(f"target gives {len(items)} classes for {n} images; give one class "
                         "for all or one per image", param="target")
    out = []
    for t in items:
        if isinstance(t, str):
            if t not in classes:
                raise UsageError(f"target {t!r} is not a class of this model; classes: "
                                 f"{', '.join(classes)}", param="target")
            out.append(classes.index(t))
        elif 0 <= int(t) < len(classes):
            out.append(int(t))
        else:
            raise UsageError(f"target {t!r} is not a class index (0..{len(classes) - 1})",
                             param="target")
    return out


def linear_cam(fmap, weight, targets):
    """Zhou et al.'s CAM: ``(N, h, w)`` torch maps ``sum_c weight[k, c] * fmap[:, c]`` of
    ``fmap`` ``(N, C, h, w)`` for class ``targets[n]`` (``weight``: ``(K, C)``)."""
    import torch

    scores = torch.einsum("kc,nchw->nkhw", weight, fmap)
    return scores[torch.arange(len(fmap)), torch.as_tensor(targets)]


def grad_cam(forward, layer, inputs, targets):
    """Grad-CAM of ``forward`` (inputs -> logits) at ``layer`` for class ``targets[n]``:
    ``(N, h, w)`` torch maps after the ReLU, at the layer's resolution (captum
    ``LayerGradCam``; its hooks are removed when it returns)."""
    import torch
    from captum.attr import LayerGradCam

    inputs = inputs.detach().float().requires_grad_(True)
    with torch.enable_grad():
        attr = LayerGradCam(forward, layer).attribute(inputs, target=list(map(int, targets)),
                                                      relu_attributions=True)
    return attr.detach()[:, 0]


def grad_x_activation(forward, layer, inputs, targets):
    """Gradient x activation of ``forward``'s class score at ``layer``, summed over channels:
    ``(N, h, w)`` torch maps (captum ``LayerGradientXActivation``).  For a linear head on
    max or GeM pooling it is an exact decomposition of the score (less the bias): both
    poolings are positively homogeneous of degree 1, so the activations times their
    gradients sum to the pooled value (Euler); with max pooling only each channel's
    argmax position carries it."""
    import torch
    from captum.attr import LayerGradientXActivation

    inputs = inputs.detach().float().requires_grad_(True)
    with torch.enable_grad():
        attr = LayerGradientXActivation(forward, layer).attribute(
            inputs, target=list(map(int, targets)))
    return attr.detach().sum(dim=1)


def to_unit(maps, size: int, shift: bool) -> np.ndarray:
    """``(N, h, w)`` torch maps upsampled bilinearly to ``(N, size, size)`` float32 in [0, 1]
    (captum ``LayerAttribution.interpolate``): minus their minimum when ``shift``, then
    divided by their maximum (a map that is zero everywhere stays zero)."""
    from captum.attr import LayerAttribution

    up = LayerAttribution.interpolate(maps[:, None].float(), (size, size), "bilinear")[:, 0]
    up = up.cpu().numpy().astype(np.float32)
    if shift:
        up -= up.min(axis=(1, 2), keepdims=True)
    peak = up.max(axis=(1, 2), keepdims=True)
    return np.divide(up, peak, out=np.zeros_like(up), where=peak > 0).clip(0.0, 1.0)


@contextmanager
def _output_shapes(modules):
    """``{index: output shape}`` of ``modules`` while the block runs (hooks removed after)."""
    shapes = {}
    handles = [m.register_forward_hook(
        lambda _m, _i, out, k=k: shapes.__setitem__(k, tuple(getattr(out, "shape", ()))))
        for k, m in enumerate(modules)]
    try:
        yield shapes
    finally:
        for h in handles:
            h.remove()


def last_spatial_layer(forward, modules, sample, what: str) -> int:
    """The index of the deepest of ``modules`` (shallow to deep, all run by
    ``forward(sample)``) whose output is a map ``(N, C, H, W)`` with ``H * W > 1``;
    :class:`UsageError` naming ``what`` when none is (transformer tokens, pooled vectors)."""
    import torch

    with _output_shapes(modules) as shapes, torch.no_grad():
        forward(sample)
    for k in sorted(shapes, reverse=True):
        shape = shapes[k]
        if len(shape) == 4 and shape[2] * shape[3] > 1:
            return k
    raise UsageError(f"{what} has no convolutional stage with a spatial map (its stages give "
                     "tokens or pooled vectors), so no class-activation map is drawn for it")


def overlay(crop: np.ndarray, heat: np.ndarray, alpha: float = OVERLAY_ALPHA) -> np.ndarray:
    """``(S, S, 3)`` uint8: ``crop`` blended with ``heat`` (``(S, S)`` in [0, 1]) drawn with
    matplotlib's ``jet`` colour map (red: where the evidence is)."""
    from matplotlib import colormaps

    colour = colormaps["jet"](np.clip(heat, 0.0, 1.0))[..., :3] * 255.0
    return ((1.0 - alpha) * crop.astype(np.float32) + alpha * colour).round().astype(np.uint8)


def class_maps(model, body, files, target, batch_size: int, device: str, method: str,
               map_of, shift: bool) -> ClassMaps:
    """The :class:`ClassMaps` of ``files`` for ``model`` (a
    :class:`~pipeline.models.base.TrainedModel`): crops by its crop rule, logits by
    ``body`` (uint8-valued ``(N, 3, S, S)`` -> logits, in eval mode), maps by
    ``map_of(x, targets)`` -> ``(N, h, w)``, batch by batch, then :func:`to_unit`."""
    import torch

    from ..extraction.forward import resolve_device
    from .base import load_crops

    wanted = resolve_targets(target, model.classes, len(files))
    crops, errors = load_crops(files, model.crop_rule())
    if wanted is not None:
        wanted = [t for i, t in enumerate(wanted) if i not in errors]
    size, n_classes = crops.shape[1], len(model.classes)
    dev = resolve_device(device)
    body.to(dev).eval()
    maps, proba, targets = [], [], []
    for s in range(0, len(crops), batch_size):
        x = torch.from_numpy(crops[s:s + batch_size]).permute(0, 3, 1, 2).float().to(dev)
        with torch.no_grad():
            p = torch.softmax(body(x).float(), dim=1).cpu().numpy()
        t = wanted[s:s + len(x)] if wanted is not None else p.argmax(axis=1).tolist()
        maps.append(to_unit(map_of(x, t), size, shift))
        proba.append(p)
        targets += t
    return ClassMaps(
        maps=np.concatenate(maps) if maps else np.zeros((0, size, size), np.float32),
        crops=crops, targets=np.asarray(targets, dtype=int),
        proba=np.concatenate(proba) if proba else np.zeros((0, n_classes)),
        method=method, errors=errors)


def network_cam(model, body, stages, files, target, batch_size: int, device: str
                ) -> ClassMaps:
    """Grad-CAM of a network ``model`` runs as one torch ``body`` at the deepest of its
    ``stages`` (``[(name, module)]``, shallow to deep) whose output is still a map."""
    import torch

    size = model.crop_rule().input_size
    probe = torch.zeros((1, 3, size, size))
    k = last_spatial_layer(body.eval(), [m for _, m in stages], probe, f"this {model.title}")
    name, layer = stages[k]
    return class_maps(model, body, files, target, batch_size, device,
                      f"Grad-CAM at {name}", lambda x, t: grad_cam(body, layer, x, t),
                      shift=False)
