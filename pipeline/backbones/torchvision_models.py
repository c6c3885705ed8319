"""torchvision ResNets, MobileNet V2/V3, EfficientNet-B0 and ConvNeXt-Tiny, with weights
downloaded by torchvision (or a mirror, or a file).
"""

from __future__ import annotations

from .registry import BackboneSpec, Preprocessing, Tap, register_backbone
from .weights import download_torchvision_weights, load_local_state_dict, strict_load


def _resnet_stages(model):
    import torch.nn as nn

    return [("stem", nn.Sequential(model.conv1, model.bn1, model.relu, model.maxpool)),
            ("layer1", model.layer1), ("layer2", model.layer2),
            ("layer3", model.layer3), ("layer4", model.layer4)]


def _register_resnet(depth: int, channels: tuple):
    def build():
        import torchvision

        return getattr(torchvision.models, f"resnet{depth}")(weights=None)

    def load(model, weights: str) -> str:
        if weights == "imagenet":
            import torchvision

            enum = getattr(torchvision.models, f"ResNet{depth}_Weights").IMAGENET1K_V1
            state = download_torchvision_weights(enum)
            strict_load(model, state, str(enum))
            return imagenet_identity()
        state, identity = load_local_state_dict(weights)
        strict_load(model, state, weights)
        return identity

    def imagenet_identity():
        return f"torchvision:ResNet{depth}_Weights.IMAGENET1K_V1"

    c1, c2, c3, c4 = channels
    register_backbone(BackboneSpec(
        name=f"resnet{depth}",
        description=f"torchvision resnet{depth} (IMAGENET1K_V1 weights downloaded by torchvision)",
        build=build,
        stages=_resnet_stages,
        taps=(Tap("layer1", "layer1", c1, 4), Tap("layer2", "layer2", c2, 8),
              Tap("layer3", "layer3", c3, 16), Tap("layer4", "layer4", c4, 32),
              Tap("head", "layer4", c4, 32)),
        # torchvision IMAGENET1K_V1: resize 256, crop 224, bilinear.
        preprocessing=Preprocessing(input_size=224, crop_pct=224 / 256, interpolation="bilinear"),
        load_weights=load,
        imagenet_identity=imagenet_identity,
        requires=("torchvision",),
    ))


_register_resnet(18, (64, 128, 256, 512))


_register_resnet(34, (64, 128, 256, 512))


_register_resnet(50, (256, 512, 1024, 2048))


# ------------------------------------------------------------------ models with .features


def _features_stages(head_modules):
    """Stages ``features.i`` (one per block of ``model.features``), then ``head``: the
    pre-logits vector (global pool, flatten, and the classifier's layers before its last
    linear layer: ``head_modules(model)`` gives those before and after the flatten)."""
    def stages(model):
        import torch.nn as nn

        out = [(f"features.{i}", block) for i, block in enumerate(model.features)]
        before, after = head_modules(model)
        out.append(("head", nn.Sequential(nn.AdaptiveAvgPool2d(1), *before, nn.Flatten(1),
                                          *after)))
        return out

    return stages


def _register_features_model(name: str, builder: str, enum: str, taps: tuple, head_modules,
                             preprocessing: Preprocessing, head_channels: int):
    """A torchvision model whose trunk is ``model.features``; ``taps`` are
    ``(tap, block index, channels, stride)``."""
    def build():
        import torchvision

        return getattr(torchvision.models, builder)(weights=None)

    def imagenet_identity():
        return f"torchvision:{enum}.IMAGENET1K_V1"

    def load(model, weights: str) -> str:
        if weights == "imagenet":
            import torchvision

            weights_enum = getattr(torchvision.models, enum).IMAGENET1K_V1
            state = download_torchvision_weights(weights_enum)
            strict_load(model, state, str(weights_enum))
            return imagenet_identity()
        state, identity = load_local_state_dict(weights)
        strict_load(model, state, weights)
        return identity

    register_backbone(BackboneSpec(
        name=name,
        description=f"torchvision {builder} (IMAGENET1K_V1 weights downloaded by torchvision)",
        build=build,
        stages=_features_stages(head_modules),
        taps=tuple(Tap(t, f"features.{i}", c, s) for t, i, c, s in taps)
        + (Tap("head", "head", head_channels, 32, "vector"),),
        preprocessing=preprocessing,
        load_weights=load,
        imagenet_identity=imagenet_identity,
        requires=("torchvision",),
    ))


# Preprocessing of each IMAGENET1K_V1 enum (its transforms(): resize, crop, interpolation;
# tests/test_timm_backbones.py checks these against torchvision's own).
_register_features_model(
    "mobilenet_v2", "mobilenet_v2", "MobileNet_V2_Weights",
    (("layer1", 3, 24, 4), ("layer2", 6, 32, 8), ("layer3", 13, 96, 16),
     ("layer4", 17, 320, 32)),
    lambda m: ((), ()), Preprocessing(224, 224 / 256, "bilinear"), 1280)
_register_features_model(
    "mobilenet_v3_large", "mobilenet_v3_large", "MobileNet_V3_Large_Weights",
    (("layer1", 3, 24, 4), ("layer2", 6, 40, 8), ("layer3", 12, 112, 16),
     ("layer4", 15, 160, 32)),
    lambda m: ((), tuple(m.classifier[:2])), Preprocessing(224, 224 / 256, "bilinear"), 1280)
_register_features_model(
    "efficientnet_b0", "efficientnet_b0", "EfficientNet_B0_Weights",
    (("layer1", 2, 24, 4), ("layer2", 3, 40, 8), ("layer3", 5, 112, 16),
     ("layer4", 7, 320, 32)),
    lambda m: ((), ()), Preprocessing(224, 224 / 256, "bicubic"), 1280)
_register_features_model(
    "convnext_tiny", "convnext_tiny", "ConvNeXt_Tiny_Weights",
    (("layer1", 1, 96, 4), ("layer2", 3, 192, 8), ("layer3", 5, 384, 16),
     ("layer4", 7, 768, 32)),
    lambda m: ((m.classifier[0],), ()), Preprocessing(224, 224 / 236, "bilinear"), 768)
