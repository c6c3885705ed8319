"""The backbone registry: specs with their preprocessing and depth taps as data.

A :class:`BackboneSpec` says how to build a network, cut it into named
*stages* (stem, one stage per block group, head convolution), which stage
each depth tap pools (:class:`Tap`: name, stage, channels, stride, known
before any forward pass) and what preprocessing its weights expect
(:class:`Preprocessing`).  :func:`register_backbone` adds one,
:func:`get_backbone` fails with the valid names, :func:`list_backbones` feeds
the CLI's choices, and :func:`load_backbone` returns a :class:`LoadedBackbone`
(model in eval mode, stages, weights identity).  Names with a registered
prefix (``timm/<model>``) are resolved on demand by that prefix's resolver
(:func:`register_resolver`) into a spec built from the model's own metadata.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

from ..errors import UsageError, WeightsError, opt, program
from ..files import sha256_file
from ..options import DEFAULT_TAPS, MAP_POOLINGS, POOLINGS

log = logging.getLogger(__name__)


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


#: What a stage hands a tap: a CNN map ``(N, C, H, W)``, transformer tokens ``(N, L, D)``
#: or an already pooled vector ``(N, C)`` (a pre-logits head, which no pooling changes).
TAP_KINDS = ("map", "tokens", "vector")


@dataclass(frozen=True)
class Tap:
    """A depth tap: the pooled output of stage ``stage`` (``channels`` wide, at ``stride``)."""

    name: str
    stage: str
    channels: int
    stride: int
    kind: str = "map"    # one of TAP_KINDS

    def width(self, pooling: str) -> int:
        """Width of the stored vector under ``pooling`` (``cls+mean`` doubles tokens)."""
        return 2 * self.channels if self.kind == "tokens" and pooling == "cls+mean" \
            else self.channels


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
    poolings: tuple = MAP_POOLINGS         # what its taps can be pooled with
    num_prefix_tokens: int = 0             # class/distillation/register tokens before patches
    family: str = "cnn"                    # cnn | vit | hierarchical (for the report, --search)
    # the pooling of its own classifier, what ``--pool auto`` means for it, and why
    default_pooling: str = "avg"
    default_pooling_why: str = "its classifier averages the last feature map"

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

    def check_pooling(self, pooling: str) -> str:
        """``pooling`` if this backbone offers it; :class:`UsageError` naming what it offers."""
        if pooling in self.poolings:
            return pooling
        if pooling not in POOLINGS:
            raise UsageError(f"unknown pooling {pooling!r}; valid: {', '.join(POOLINGS)}",
                             param="pool")
        what = ("its taps are transformer tokens" if "cls" in self.poolings or
                "mean" in self.poolings else "its taps are CNN feature maps")
        raise UsageError(f"pooling {pooling!r} does not apply to backbone {self.name!r}: "
                         f"{what}; valid for it: {', '.join(self.poolings)} (or "
                         f"{opt('pool', 'auto')}, its own: {self.default_pooling})",
                         param="pool")

    def resolve_pooling(self, pooling: str = "auto") -> tuple[str, str]:
        """``(pooling, why)``: ``auto`` is the backbone's own (:attr:`default_pooling`);
        any other pooling is checked (:meth:`check_pooling`) and kept as asked."""
        if pooling == "auto":
            return (self.check_pooling(self.default_pooling),
                    f"the backbone's own: {self.default_pooling_why}")
        return self.check_pooling(pooling), "as asked"

    @property
    def default_taps(self) -> tuple:
        """The taps stored when none is asked for: those of :data:`DEFAULT_TAPS` it has,
        else (a shallow network) its deepest tap before the head."""
        taps = tuple(t for t in self.tap_names if t in DEFAULT_TAPS)
        body = [t for t in self.tap_names if t != "head"] or list(self.tap_names)
        return taps or (body[-1],)

    def widths(self, taps, pooling: str) -> dict:
        """``{tap: stored width}`` of ``taps`` under ``pooling``."""
        return {t: self.tap(t).width(pooling) for t in taps}

    def available(self) -> bool:
        import importlib.util

        return all(importlib.util.find_spec(m) is not None for m in self.requires)


_REGISTRY: dict[str, BackboneSpec] = {}
_RESOLVERS: dict[str, Callable[[str], BackboneSpec]] = {}
_RESOLVED: dict[str, BackboneSpec] = {}


def register_backbone(spec: BackboneSpec, replace: bool = False) -> BackboneSpec:
    """Add ``spec`` to the registry (``replace`` to redefine a name)."""
    if spec.name in _REGISTRY and not replace:
        raise ValueError(f"backbone {spec.name!r} is already registered")
    _REGISTRY[spec.name] = spec
    return spec


def register_resolver(prefix: str, resolve: Callable[[str], BackboneSpec]):
    """Let :func:`get_backbone` answer names ``prefix + rest`` with ``resolve(rest)``
    (a spec built on demand, e.g. ``timm/convnext_tiny.fb_in22k``), memoised per name."""
    _RESOLVERS[prefix] = resolve


def resolver_prefixes() -> list[str]:
    return sorted(_RESOLVERS)


def list_backbones(available_only: bool = False) -> list[str]:
    """Registered backbone names, sorted (resolved ``prefix/`` names are not listed)."""
    return sorted(n for n, s in _REGISTRY.items() if s.available() or not available_only)


def get_backbone(name: str) -> BackboneSpec:
    """The spec registered as ``name`` or resolved from its prefix (``timm/...``);
    :class:`UsageError` lists the valid names."""
    if name in _REGISTRY:
        return _REGISTRY[name]
    if name in _RESOLVED:
        return _RESOLVED[name]
    for prefix, resolve in _RESOLVERS.items():
        if name.startswith(prefix) and len(name) > len(prefix):
            spec = resolve(name[len(prefix):])
            _RESOLVED[name] = spec
            return spec
    dynamic = "".join(f" or {p}<model> (list them with `{program()} backbones --search "
                      "PATTERN`)" for p in resolver_prefixes())
    raise UsageError(
        f"unknown backbone {name!r}; valid backbones: {', '.join(list_backbones())}{dynamic}",
        param="backbone") from None


def resolve_taps(spec: BackboneSpec, names) -> tuple:
    """Validate tap names (``all`` = every tap; none: :attr:`BackboneSpec.default_taps`)
    and return them shallow to deep."""
    names = list(names) or list(spec.default_taps)
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
            f"weights {weights!r}: no such file; use {opt('weights', 'imagenet')}, "
            f"{opt('weights', 'none')} or {opt('weights', 'PATH')} to a saved state_dict",
            param="weights"
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
