"""Trained models of every kind behind one interface: what ``predict`` and ``export`` ask.

:mod:`.base` defines :class:`TrainedModel` (open, ``predict_proba``, ``describe``,
``crop_rule``, ``export``); :mod:`.registry` registers the kinds and opens the
model a run id, record or file names (:func:`load_model`); :mod:`.graph` writes
one as an ONNX graph.  One module per kind: :mod:`.frozen` (a head on a frozen
backbone's tap), :mod:`.baseline` (pixels, MLP, CNN), :mod:`.finetuned` and
:mod:`.exported` (an ``.onnx`` written by ``export``, run without torch).
Importing the package registers them and imports neither torch nor scikit-learn.
"""

# registered in this order: a file is claimed by the first kind that recognises it
from . import frozen, baseline, finetuned, exported  # noqa: F401, I001
from .base import TrainedModel
from .registry import (
    get_model_kind,
    list_model_kinds,
    load_model,
    model_kind_for,
    register_model_kind,
)

__all__ = ["TrainedModel", "get_model_kind", "list_model_kinds", "load_model",
           "model_kind_for", "register_model_kind"]
