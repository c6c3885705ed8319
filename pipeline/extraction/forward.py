"""The batched forward pass: uint8 images in, pooled tap vectors out.

:class:`TapExtractor` wraps a backbone's stages, cut after the deepest
requested tap, with the weights' normalisation as its first operation and a
pooling of each tapped feature map as its last, so one call computes every
tap.
"""

from __future__ import annotations

import logging

import torch
import torch.nn as nn

from ..errors import DeviceError, UsageError, opt
from ..options import POOLINGS

log = logging.getLogger(__name__)


GEM_P = 3.0


def pool(x: torch.Tensor, how: str) -> torch.Tensor:
    """Global pooling of ``(N, C, H, W)`` to ``(N, C)``; ``gem`` is generalised mean, p=3."""
    if how == "avg":
        return x.mean(dim=(2, 3))
    if how == "max":
        return x.amax(dim=(2, 3))
    if how == "gem":
        return x.clamp(min=1e-6).pow(GEM_P).mean(dim=(2, 3)).pow(1.0 / GEM_P)
    raise UsageError(f"unknown pooling {how!r}; valid: {', '.join(POOLINGS)}")


class TapExtractor(nn.Module):
    """Normalise uint8 images, run the stages up to the deepest tap, pool each tap.

    ``forward(images)`` takes ``(N, 3, H, W)`` uint8 (or float in [0, 255]) and
    returns a tuple of ``(N, C_tap)`` float tensors in the order of ``taps``.
    """

    def __init__(self, stages, tap_stages: dict, preprocessing, pooling: str = "avg"):
        super().__init__()
        if pooling not in POOLINGS:
            raise UsageError(f"unknown pooling {pooling!r}; valid: {', '.join(POOLINGS)}")
        names = [name for name, _ in stages]
        missing = [s for s in tap_stages.values() if s not in names]
        if missing:
            raise UsageError(f"stages {missing} are not in the network; stages: {names}")
        deepest = max(names.index(s) for s in tap_stages.values())
        self.stage_names = names[: deepest + 1]
        self.stages = nn.ModuleList(m for _, m in stages[: deepest + 1])
        self.tap_names = list(tap_stages)
        self.tap_stages = dict(tap_stages)
        self.pooling = pooling
        mean = torch.tensor(preprocessing.mean, dtype=torch.float32).view(1, 3, 1, 1) * 255.0
        std = torch.tensor(preprocessing.std, dtype=torch.float32).view(1, 3, 1, 1) * 255.0
        self.register_buffer("mean", mean, persistent=False)
        self.register_buffer("std", std, persistent=False)

    def forward(self, images):
        x = (images.float() - self.mean) / self.std
        pooled = {}
        for name, stage in zip(self.stage_names, self.stages):
            x = stage(x)
            for tap, tap_stage in self.tap_stages.items():
                if tap_stage == name:
                    pooled[tap] = pool(x, self.pooling).float()
        return tuple(pooled[t] for t in self.tap_names)


def build_extractor(loaded, taps, pooling: str = "avg") -> TapExtractor:
    """A :class:`TapExtractor` for a :class:`~pipeline.backbones.LoadedBackbone`."""
    spec = loaded.spec
    tap_stages = {t: spec.tap(t).stage for t in taps}
    extractor = TapExtractor(loaded.stages(), tap_stages, spec.preprocessing, pooling)
    return extractor.eval()


def resolve_device(device: str = "auto") -> torch.device:
    """``auto`` -> cuda if available else cpu; ``cuda`` without CUDA is an error."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise DeviceError(
                f"{opt('device', device)} was asked for but this torch ({torch.__version__}) "
                f"sees no CUDA device; use {opt('device', 'cpu')} (or auto) on this machine",
                param="device"
            )
        return torch.device(device)
    if device == "cpu":
        return torch.device("cpu")
    raise UsageError(f"unknown device {device!r}; valid: auto, cpu, cuda, cuda:N")
