"""Heads on cached features: the head registry (:mod:`.registry`, one module per head in
:mod:`.kinds`), scikit-learn heads and their model selection (:mod:`.selection`), the SGD
head (:mod:`.sgd`) and its streaming fit (:mod:`.streaming`).  No module here imports
torch; importing the package registers the built-in heads and loads no scikit-learn."""

from . import kinds  # noqa: F401  (registers the built-in heads)
from .registry import HeadKind, get_head, head_of_model, list_heads, register_head

__all__ = ["HeadKind", "get_head", "head_of_model", "list_heads", "register_head"]


def __getattr__(name):
    # Heads saved before the package layout pickled pipeline.heads.SoftmaxSGD.
    if name == "SoftmaxSGD":
        from .sgd import SoftmaxSGD

        return SoftmaxSGD
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
