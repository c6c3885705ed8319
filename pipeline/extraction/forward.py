"""The batched forward pass: uint8 images in, pooled tap vectors out.

:class:`TapExtractor` wraps a backbone's stages, cut after the deepest
requested tap, with the weights' normalisation as its first operation and a
pooling of each tapped feature map as its last, so one call computes every
tap.  With ``tta="flip"`` each pooled vector is the mean of the image's and of
its horizontal mirror's, computed inside ``forward`` so every runtime that
traces or exports the module (compile, ONNX, OpenVINO, an exported classifier)
computes the same.
"""

from __future__ import annotations

import logging

import torch
import torch.nn as nn

from ..errors import UsageError
from ..options import MAP_POOLINGS, POOLINGS, TOKEN_POOLINGS, TTA_CHOICES

log = logging.getLogger(__name__)


GEM_P = 3.0


def pool(x: torch.Tensor, how: str, prefix_tokens: int = 1) -> torch.Tensor:
    """Global pooling of a tap to ``(N, C)``.

    A CNN map ``(N, C, H, W)`` takes ``avg``, ``max`` or ``gem`` (generalised
    mean, p=3).  Transformer tokens ``(N, L, D)`` (``prefix_tokens`` class,
    distillation and register tokens first, then the patches) take ``cls``
    (token 0), ``mean`` (of the patch tokens only) or ``cls+mean`` (both,
    ``(N, 2 D)``).  A vector ``(N, C)`` (a pre-logits head) is returned as it is.
    """
    if x.dim() == 2:
        return x
    if x.dim() == 3:
        if how == "cls":
            return x[:, 0]
        if how == "mean":
            return x[:, prefix_tokens:].mean(dim=1)
        if how == "cls+mean":
            return torch.cat([x[:, 0], x[:, prefix_tokens:].mean(dim=1)], dim=1)
        raise UsageError(f"pooling {how!r} is for CNN feature maps; transformer tokens take "
                         f"{', '.join(TOKEN_POOLINGS)}", param="pool")
    if how in TOKEN_POOLINGS:
        raise UsageError(f"pooling {how!r} is for transformer tokens; CNN feature maps take "
                         f"{', '.join(MAP_POOLINGS)}", param="pool")
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
    ``tta="flip"``: each is the mean of the pooled vectors of the images and of
    their horizontal mirrors (two passes, so twice the compute).
    """

    def __init__(self, stages, tap_stages: dict, preprocessing, pooling: str = "avg",
                 prefix_tokens: int = 0, tta: str = "none"):
        super().__init__()
        if pooling not in POOLINGS:
            raise UsageError(f"unknown pooling {pooling!r}; valid: {', '.join(POOLINGS)}")
        if tta not in TTA_CHOICES:
            raise UsageError(f"unknown test-time augmentation {tta!r}; valid: "
                             f"{', '.join(TTA_CHOICES)}", param="tta")
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
        self.prefix_tokens = prefix_tokens
        self.tta = tta
        mean = torch.tensor(preprocessing.mean, dtype=torch.float32).view(1, 3, 1, 1) * 255.0
        std = torch.tensor(preprocessing.std, dtype=torch.float32).view(1, 3, 1, 1) * 255.0
        self.register_buffer("mean", mean, persistent=False)
        self.register_buffer("std", std, persistent=False)

    def maps(self, images) -> dict:
        """``{tap: unpooled output of its stage}`` of uint8 ``images`` (no mirror)."""
        return self._maps((images.float() - self.mean) / self.std)

    def _maps(self, x) -> dict:
        out = {}
        for name, stage in zip(self.stage_names, self.stages):
            x = stage(x)
            for tap, tap_stage in self.tap_stages.items():
                if tap_stage == name:
                    out[tap] = x
        return out

    def _pooled(self, x) -> list:
        maps = self._maps(x)
        return [pool(maps[t], self.pooling, self.prefix_tokens).float() for t in self.tap_names]

    def forward(self, images):
        x = (images.float() - self.mean) / self.std
        pooled = self._pooled(x)
        if self.tta == "flip":  # the mirror: the normalised batch flipped on its width axis
            mirrored = self._pooled(torch.flip(x, dims=(3,)))
            pooled = [(a + b) * 0.5 for a, b in zip(pooled, mirrored)]
        return tuple(pooled)


def build_extractor(loaded, taps, pooling: str = "auto", tta: str = "none") -> TapExtractor:
    """A :class:`TapExtractor` for a :class:`~pipeline.backbones.LoadedBackbone`
    (``pooling`` ``auto``: the backbone's own, :meth:`BackboneSpec.resolve_pooling`;
    ``tta``: ``none`` or ``flip``, the mean with the horizontal mirror)."""
    spec = loaded.spec
    pooling, _why = spec.resolve_pooling(pooling)
    tap_stages = {t: spec.tap(t).stage for t in taps}
    extractor = TapExtractor(loaded.stages(), tap_stages, spec.preprocessing, pooling,
                             spec.num_prefix_tokens, tta)
    return extractor.eval()


def measure_cost(spec, taps, pooling: str = "auto") -> dict | None:
    """Parameters and GFLOPs of the network cut after each of ``taps``, for one image.

    ``{"params": {tap: n}, "gflops": {tap: g}, "input_size": S, "method": ...}``,
    cumulative from the input to the tap's stage; counted by
    :class:`torch.utils.flop_counter.FlopCounterMode` (2 FLOPs per multiply-add)
    on the meta device, so it needs no weights and computes nothing.  None when
    the network cannot run on the meta device (logged).
    """
    from torch.utils.flop_counter import FlopCounterMode

    from ..backbones.registry import LoadedBackbone

    try:
        with torch.device("meta"):
            model = spec.build()
        extractor = build_extractor(LoadedBackbone(spec, model, "meta"), taps, pooling)
        size = spec.preprocessing.input_size
        x = torch.zeros((1, 3, size, size), device="meta")
        x = (x - extractor.mean.to("meta")) / extractor.std.to("meta")
        flops_at, params_at, seen, n_params = {}, {}, set(), 0
        counter = FlopCounterMode(display=False)
        with counter, torch.no_grad():
            for name, stage in zip(extractor.stage_names, extractor.stages):
                x = stage(x)
                for p in stage.parameters():
                    if id(p) not in seen:
                        seen.add(id(p))
                        n_params += p.numel()
                flops_at[name], params_at[name] = counter.get_total_flops(), n_params
    except Exception as exc:  # a model that needs real tensors: cost is informative only
        log.info("cost of %s not measured on the meta device (%s)", spec.name, exc)
        return None
    return {"params": {t: int(params_at[spec.tap(t).stage]) for t in taps},
            "gflops": {t: round(flops_at[spec.tap(t).stage] / 1e9, 4) for t in taps},
            "input_size": size,
            "method": "torch.utils.flop_counter.FlopCounterMode, one image, meta device"}


def resolve_device(device: str = "auto") -> torch.device:
    """``auto`` -> cuda if available else cpu; ``cuda`` without CUDA is an error
    (:func:`pipeline.extraction.runtimes.check_device`, which ``extract`` calls before
    anything is written)."""
    from .runtimes import check_device

    kind = check_device(device)
    return torch.device(kind if device == "auto" else device)
