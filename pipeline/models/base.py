"""A trained model of any kind, opened: the one interface ``predict`` and ``export`` ask.

A kind of trained model (a frozen head, the pixel / MLP / CNN baselines, a
fine-tuned network, an exported ONNX graph) is a subclass of
:class:`TrainedModel` registered in :mod:`pipeline.models.registry`.  It says
which files hold it (``suffixes``, one reader per suffix: :func:`read` of
:class:`SavedHead` and :class:`SavedNetwork` here) and which of their contents
are its own (:meth:`TrainedModel.claims`); opened, it answers:

- :meth:`~TrainedModel.predict_proba`: ``(probabilities (n_ok, n_classes),
  {file index: reason})`` of image files, their input made as in training;
- :meth:`~TrainedModel.describe`: kind, run, method, backbone, tap, pooling, head
  (what the exported graph's metadata says);
- :meth:`~TrainedModel.crop_rule`: the :class:`~pipeline.data.decode.CropRule`
  its training's pixels follow;
- :meth:`~TrainedModel.export`: one ONNX graph, uint8 images -> probabilities
  (:mod:`pipeline.models.graph`);
- :meth:`~TrainedModel.cam`: a class-activation map per image over its input crop
  (:mod:`pipeline.models.cam`), for the kinds that have a spatial map.

The defaults serve a kind that is one torch module: it gives :meth:`body`
(uint8 ``(N, 3, S, S)`` -> logits) and its crop rule, and predicts and exports
through :meth:`classifier`.  Nothing here imports torch, scikit-learn or ONNX
Runtime at import time: an ``.onnx`` model is opened and run without torch.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import ClassVar

import numpy as np

from ..errors import StoreError
from ..heads.persist import HEAD_EXT, PICKLE_SUFFIXES, load_head

log = logging.getLogger(__name__)


class TrainedModel:
    """A run's saved model, opened from ``bundle`` (what its file holds).

    ``kind``: its name (``frozen``, ``pixels``, ``mlp``, ``cnn``, ``finetune``,
    ``onnx``), written in an exported graph's metadata; ``title``: its name in
    messages; ``suffixes``: extensions (no dot) of the files that hold it.
    ``record``: the run's :class:`~pipeline.runs.records.RunRecord` when one was
    found beside the model, else None.
    """

    kind: ClassVar[str]
    title: ClassVar[str]
    suffixes: ClassVar[tuple[str, ...]]
    #: Why a kind without :meth:`cam` has no class-activation map (said when one is asked).
    no_map: ClassVar[str] = "it has no spatial feature map"

    def __init__(self, bundle: dict, path=None, record=None):
        self.bundle = bundle
        self.path = Path(path) if path is not None else None
        self.record = record
        self.classes = list(bundle.get("classes", ()))

    def __repr__(self):
        return f"{type(self).__name__}({self.run_id!r}, {len(self.classes)} classes)"

    @property
    def temperature(self) -> float:
        """The temperature its probabilities are scaled by (fitted on validation
        predictions when the run was saved: :mod:`pipeline.calibration`); 1.0 for a
        model saved without one.  :class:`StoreError` for a value no run writes."""
        import math

        value = self.bundle.get("temperature")
        if value is None:
            return 1.0
        if isinstance(value, bool) or not isinstance(value, (int, float)) or \
                not math.isfinite(value) or value <= 0:
            where = self.path if self.path is not None else "the saved model"
            raise StoreError(f"{where} holds temperature {value!r}, not a positive number; it "
                             "was not written by this tool: train the run again")
        return float(value)

    @property
    def run_id(self) -> str:
        if self.record is not None:
            return self.record.run_id
        return self.path.stem if self.path is not None else ""

    # ---------------------------------------------------------------- files

    @staticmethod
    def read(path) -> dict:
        """The contents of a file of this kind (never unpickled); kinds saved with one
        suffix share one reader."""
        raise NotImplementedError

    @classmethod
    def claims(cls, bundle: dict) -> bool:
        """Whether ``bundle`` (what :meth:`read` returned) is a model of this kind."""
        raise NotImplementedError

    # ---------------------------------------------------------------- questions

    def parts(self) -> dict:
        """What the model is built on, where it has them: ``backbone``, ``tap``,
        ``pooling``, ``head`` (a head's estimator class)."""
        return {}

    def describe(self) -> dict:
        """``{kind, run_id, temperature, method, label, classes, backbone, tap, pooling,
        head}``: the method and label are the run record's (without one: the head, else the
        kind)."""
        rec = self.record
        parts = {"backbone": "", "tap": "", "pooling": "", "head": "", **self.parts()}
        return {"kind": self.kind, "run_id": self.run_id, "classes": list(self.classes),
                "temperature": self.temperature,
                "method": str((rec.method if rec is not None else None) or parts["head"]
                              or self.kind),
                "label": str((rec.label if rec is not None else None) or ""), **parts}

    def crop_rule(self):
        """The :class:`~pipeline.data.decode.CropRule` that makes the uint8 crops this
        model takes the way its training made its (eval) pixels."""
        raise NotImplementedError

    # ---------------------------------------------------------------- as one torch module

    def body(self):
        """The torch module uint8 ``(N, 3, S, S)`` -> logits (kinds that are one)."""
        raise NotImplementedError

    def cam_body(self):
        """:meth:`body`, built on the first :meth:`cam` of this opened model and kept for the
        next (a backbone takes seconds to load; a report asks for maps once per model)."""
        if getattr(self, "_cam_body", None) is None:
            self._cam_body = self.body()
        return self._cam_body

    def classifier(self):
        """:class:`pipeline.train.deploy.Classifier` in eval mode: ``(N, S, S, 3)`` uint8
        RGB crops -> ``(N, n_classes)`` probabilities."""
        from ..train.deploy import as_classifier

        return as_classifier(self.body(), self.temperature)

    # ---------------------------------------------------------------- where it looks

    def cam(self, files, target=None, batch_size: int = 16, device: str = "auto"):
        """A class-activation map per image of ``files`` over this model's input crop, for
        its predicted class (``target``: a class name or index for all, or one per image):
        a :class:`pipeline.models.cam.ClassMaps` (``maps`` ``(n_ok, S, S)`` in [0, 1]).
        Kinds with a spatial map override it; the others refuse, saying why."""
        from ..errors import UsageError

        raise UsageError(
            f"a {self.title} has no class-activation map: {self.no_map}. Maps are drawn for "
            "frozen linear heads on a CNN tap, fine-tuned networks and the CNN baseline",
            param="model_ref")

    # ---------------------------------------------------------------- predict and export

    def predict_proba(self, files, batch_size: int = 32, device: str = "auto"):
        """``(probabilities (n_ok, n_classes), {file index: reason})`` of image ``files``;
        by default the :meth:`classifier` run eagerly on crops by :meth:`crop_rule`."""
        import torch

        from ..extraction.forward import resolve_device

        classifier = self.classifier()
        dev = resolve_device(device)
        classifier.to(dev)
        crops, errors = load_crops(files, self.crop_rule())
        out = []
        with torch.inference_mode():
            for s in range(0, len(crops), batch_size):
                batch = torch.from_numpy(crops[s:s + batch_size]).to(dev)
                out.append(classifier(batch).float().cpu().numpy())
        return concat_proba(out, len(self.classes)), errors

    def proba_and_vectors(self, files, batch_size: int = 32, device: str = "auto"):
        """``(probabilities (n_ok, n_classes), vectors (n_ok, d), space, {file index:
        reason})``: :meth:`predict_proba` and the vectors ``predict --rank``'s diversity
        step measures distances in (:mod:`pipeline.heads.ranking`), named by ``space``.
        By default the probabilities themselves (``"probabilities"``); a kind with
        features of its own gives those from the same forward pass."""
        proba, errors = self.predict_proba(files, batch_size, device)
        return proba, proba, "probabilities", errors

    def labelled_vectors(self, runs_dir=None):
        """``(m, d)`` vectors, in the space of :meth:`proba_and_vectors`, of the images
        the model was trained on (the diversity step keeps away from them); None when
        the kind cannot give them."""
        return None

    def graph(self):
        """What :meth:`export` writes (a :class:`pipeline.models.graph.Graph`); by default
        the :meth:`classifier` exported whole by ``torch.onnx``."""
        from .graph import torch_graph

        return torch_graph(self.classifier(), self.crop_rule())

    def export(self, path, probe_images: int = 4) -> tuple[dict, float]:
        """Write this model to ``path`` as one ONNX graph, uint8 images -> probabilities,
        checked on ``probe_images`` random images against what :meth:`predict_proba`
        computes.  Returns ``(metadata, largest difference)``."""
        from .graph import write_graph

        return write_graph(self.graph(), self.describe(), Path(path), probe_images)


def concat_proba(blocks, n_classes: int) -> np.ndarray:
    """Probability blocks as one ``(n, n_classes)`` array (``(0, n_classes)`` for none)."""
    return np.concatenate(blocks) if blocks else np.zeros((0, n_classes))


def load_crops(files, rule):
    """``(uint8 (n_ok, S, S, 3), {file index: reason})`` made by ``rule``."""
    from ..data.decode import ImageDecodeError

    crops, errors = [], {}
    for i, f in enumerate(files):
        try:
            crops.append(rule.load(f))
        except ImageDecodeError as exc:
            errors[i] = exc.reason
            log.warning("skipped %s: %s", f, exc.reason)
    size = rule.input_size
    return (np.stack(crops) if crops else np.zeros((0, size, size, 3), np.uint8)), errors


def read_torch_bundle(path) -> dict:
    """A saved torch run's bundle, loaded ``weights_only``
    (:func:`pipeline.train.deploy.load_torch_model`)."""
    from ..train.deploy import load_torch_model

    return load_torch_model(path)


class SavedHead(TrainedModel):
    """Kinds saved as a skops head bundle (:mod:`pipeline.heads.persist`): pickles are
    read by nothing but the refusal that names them."""

    suffixes = (HEAD_EXT, *(s.lstrip(".") for s in PICKLE_SUFFIXES))
    read = staticmethod(load_head)


class SavedNetwork(TrainedModel):
    """Kinds saved with ``torch.save`` (``.pt``), read ``weights_only``."""

    suffixes = ("pt",)
    read = staticmethod(read_torch_bundle)
