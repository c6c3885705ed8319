"""Backbones: the registry (:mod:`.registry`), weight loading (:mod:`.weights`) and one
module per family (:mod:`.efficientnet`, :mod:`.torchvision_models`, and
:mod:`.timm_models`, which resolves ``timm/<model>`` names on demand).

Importing this package registers every family (cheaply: networks are built
only by :func:`load_backbone`) and re-exports the registry's API.
"""

from . import efficientnet, timm_models, torchvision_models  # noqa: F401  (register them)
from .registry import (
                       BackboneSpec,
                       LoadedBackbone,
                       Preprocessing,
                       Tap,
                       get_backbone,
                       list_backbones,
                       load_backbone,
                       register_backbone,
                       register_resolver,
                       resolve_taps,
                       weights_identity,
)

__all__ = ["BackboneSpec", "LoadedBackbone", "Preprocessing", "Tap", "get_backbone",
           "list_backbones", "load_backbone", "register_backbone", "register_resolver",
           "resolve_taps",
           "weights_identity"]
