"""Writing a trained model as one ONNX graph: uint8 RGB ``images`` -> ``probabilities``.

The graph maps a uint8 RGB batch ``images`` ``(N, S, S, 3)`` at the model's
input size to ``probabilities`` ``(N, n_classes)``.  A model that is one torch
module (:meth:`pipeline.models.base.TrainedModel.classifier`: normalisation,
the trunk up to the tap, pooling, the standardiser and a linear head, or the
fine-tuned / baseline network, and the softmax) is exported whole with
``torch.onnx.export`` (:func:`torch_graph`), as
:func:`pipeline.extraction.runtimes.export_onnx` exports the feature extractor.
A head with no linear form (RBF-SVM, kNN) is converted by skl2onnx and joined
to the exported trunk with ``onnx.compose`` (:func:`trunk_and_head_graph`).
What the caller must do before (decode to RGB, resize the shorter side,
centre-crop) and what the columns are go into the model's ``metadata_props``
(:func:`metadata`); the snippet in README, "Deploy", reads them.  Before the
file is written, ONNX Runtime's output on probe images is compared with what
``predict`` computes (the torch module, or the trunk then scikit-learn).
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from ..errors import StoreError
from ..files import atomic_path

#: ONNX opset of the exported graph (as the extraction runtimes use).
OPSET = 17
#: Largest difference between ONNX Runtime and torch on the probe images (fp32).
EXPORT_TOLERANCE = 1e-5


@dataclass
class Graph:
    """What ``export`` writes for one model: ``rule``, the crops it takes;
    ``build(path)``, which writes the ONNX model ``images`` -> ``probabilities`` there
    and returns it loaded; ``reference(images)``, what ``predict`` computes on uint8
    crops ``(n, S, S, 3)``."""

    rule: object
    build: Callable
    reference: Callable


def torch_graph(classifier, rule) -> Graph:
    """A torch :class:`~pipeline.train.deploy.Classifier`, exported whole."""
    return Graph(rule, lambda path: torch_to_onnx(classifier, rule.input_size, path,
                                                  "probabilities"),
                 torch_reference(classifier))


def trunk_and_head_graph(trunk, head, rule, n_features: int,
                         temperature: float = 1.0) -> Graph:
    """A torch trunk (``images`` -> ``(N, n_features)`` features) exported, then a fitted
    scikit-learn ``head`` converted by skl2onnx and joined to it, its probabilities
    scaled by ``temperature`` (:func:`pipeline.calibration.scale`)."""
    return Graph(rule, lambda path: scale_graph(merge_head(
        torch_to_onnx(trunk, rule.input_size, path, "features"), head, n_features), temperature),
        trunk_then_head(trunk, head, temperature))


def scale_graph(proto, temperature: float):
    """``proto`` (``... -> probabilities``) with its probabilities temperature-scaled as
    :func:`pipeline.calibration.scale` does: softmax(log(clip(p, EPS, 1)) / T)."""
    if temperature == 1.0:
        return proto
    from onnx import helper, numpy_helper

    from ..calibration import EPS

    g = proto.graph
    for node in g.node:
        node.output[:] = ["unscaled" if o == "probabilities" else o for o in node.output]
    g.initializer.extend([numpy_helper.from_array(np.array(v, np.float32), name) for v, name in
                          ((EPS, "t/eps"), (1.0, "t/one"), (1.0 / temperature, "t/inv"))])
    g.node.extend([helper.make_node("Clip", ["unscaled", "t/eps", "t/one"], ["t/clipped"]),
                   helper.make_node("Log", ["t/clipped"], ["t/log"]),
                   helper.make_node("Mul", ["t/log", "t/inv"], ["t/scaled"]),
                   helper.make_node("Softmax", ["t/scaled"], ["probabilities"], axis=1)])
    return proto


def write_graph(graph: Graph, description: dict, path, probe_images: int = 4):
    """Write ``graph`` to ``path`` with the :func:`metadata` of ``description``
    (:meth:`~pipeline.models.base.TrainedModel.describe`), atomically, once ONNX
    Runtime agrees with its reference.  Returns ``(metadata, largest difference)``."""
    meta = metadata(description, graph.rule)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        proto = graph.build(tmp)
        save(proto, meta, tmp)
        gap = check(graph.reference, tmp, graph.rule.input_size, probe_images)
    return meta, gap


def metadata(description: dict, rule) -> dict:
    """The ``metadata_props`` of an exported classifier (every value a string)."""
    import importlib.metadata as md

    try:
        version = md.version("transfer-workbench")
    except md.PackageNotFoundError:
        version = "unknown"
    d = description
    return {
        "classes": json.dumps(list(d["classes"])),
        "input": f"images: uint8 RGB (N, {rule.input_size}, {rule.input_size}, 3)",
        "output": "probabilities: float32 (N, n_classes), columns in the order of classes",
        "input_size": str(rule.input_size),
        "resize_short_side": str(rule.resize_short_side),
        "interpolation": rule.interpolation,
        "preprocessing": rule.describe(),
        "crop_rule": json.dumps(rule.to_dict()),
        "run_id": d["run_id"],
        "kind": d["kind"],
        "method": d["method"],
        "label": d["label"],
        "backbone": d["backbone"],
        "tap": d["tap"],
        "pooling": d["pooling"],
        "tta": d.get("tta") or "none",
        "temperature": repr(float(d.get("temperature", 1.0))),
        "producer": f"transfer-workbench {version}",
    }


def torch_to_onnx(module, size: int, path, output: str):
    """``module`` (uint8 ``(N, size, size, 3)`` in) exported to ``path`` and loaded back."""
    import onnx
    import torch

    example = torch.zeros((2, size, size, 3), dtype=torch.uint8)
    with warnings.catch_warnings(), torch.inference_mode(False), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, (example,), str(path), dynamo=False, opset_version=OPSET,
                          input_names=["images"], output_names=[output],
                          dynamic_axes={"images": {0: "n"}, output: {0: "n"}})
    return onnx.load(str(path))


def merge_head(trunk, head, n_features: int):
    """The trunk graph (``images`` -> ``features``) followed by ``head`` (a fitted
    scikit-learn pipeline) converted by skl2onnx: one graph ``images`` -> ``probabilities``."""
    import onnx
    from skl2onnx import convert_sklearn
    from skl2onnx.common.data_types import FloatTensorType

    from ..heads.registry import final_estimator

    final = final_estimator(head)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # it reads SVC's deprecated probA_
        converted = convert_sklearn(
            head, initial_types=[("features", FloatTensorType([None, n_features]))],
            target_opset={"": OPSET, "ai.onnx.ml": 3}, options={id(final): {"zipmap": False}})
    converted = onnx.compose.add_prefix(converted, "head/")
    converted.ir_version = trunk.ir_version      # merge_models wants one IR version
    merged = onnx.compose.merge_models(trunk, converted, io_map=[("features", "head/features")],
                                       outputs=["head/probabilities"])
    for node in merged.graph.node:
        node.output[:] = ["probabilities" if o == "head/probabilities" else o
                          for o in node.output]
    merged.graph.output[0].name = "probabilities"
    return merged


def save(proto, meta: dict, path) -> None:
    """``proto`` with ``meta`` as its ``metadata_props`` and a doc string, checked and saved."""
    import onnx

    del proto.metadata_props[:]
    for key, value in meta.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    proto.doc_string = f"{meta['label'] or meta['method']} ({meta['run_id']}): {meta['input']} " \
                       f"-> {meta['output']}. Before: {meta['preprocessing']}."
    onnx.checker.check_model(proto)
    onnx.save(proto, str(path))


def torch_reference(classifier):
    """What ``predict`` computes with a torch classifier on uint8 crops."""
    import torch

    def run(images):
        with torch.inference_mode():
            return classifier(torch.from_numpy(images)).numpy()

    return run


def trunk_then_head(trunk, head, temperature: float = 1.0):
    """What ``predict`` computes: the eager trunk's features, then scikit-learn, then the
    temperature."""
    import torch

    from ..calibration import scale
    from ..heads.selection import predict_proba

    def run(images):
        with torch.inference_mode():
            return scale(predict_proba(head, trunk(torch.from_numpy(images)).numpy()),
                         temperature)

    return run


def check(reference, path, size: int, n: int) -> float:
    """Largest difference of ONNX Runtime's probabilities from ``reference``'s on ``n``
    random images; :class:`StoreError` above :data:`EXPORT_TOLERANCE`."""
    import onnxruntime as ort

    images = np.random.default_rng(0).integers(0, 256, (n, size, size, 3), dtype=np.uint8)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = session.run(None, {"images": images})[0]
    gap = float(np.abs(got - reference(images)).max())
    if gap > EXPORT_TOLERANCE:
        raise StoreError(f"the exported graph differs from the model by {gap:.2g} "
                         f"(more than {EXPORT_TOLERANCE:g}); nothing was written")
    return gap
