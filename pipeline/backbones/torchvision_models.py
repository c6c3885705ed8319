"""torchvision ResNets, with weights downloaded by torchvision (or a mirror, or a file).
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
