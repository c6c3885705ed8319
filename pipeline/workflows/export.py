"""``export``: one run's model as one deployable ONNX classifier.

The graph maps a uint8 RGB batch ``images`` ``(N, S, S, 3)`` at the run's
input size to ``probabilities`` ``(N, n_classes)``: normalisation, the trunk
up to the tap, pooling, the standardiser and the head (or the fine-tuned /
baseline network) and the softmax, all in one graph built from
:func:`pipeline.train.deploy.build_classifier` and exported with
``torch.onnx.export`` as :func:`pipeline.extraction.runtimes.export_onnx`
exports the feature extractor.  RBF-SVM and kNN heads, which have no
linear form, are converted by skl2onnx and joined to the exported trunk
with ``onnx.compose``.  What the caller must do before (decode to RGB,
resize the shorter side, centre-crop) and what the columns are go into the
model's ``metadata_props`` (:func:`metadata`); the snippet in README,
"Deploy", reads them.  Before the file is written, ONNX Runtime's output on
probe images is compared with what ``predict`` computes (the torch module,
or the trunk then scikit-learn).
"""

from __future__ import annotations

import json
import logging
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import StoreError, UsageError, opt, program
from ..files import atomic_path
from ..runs.records import DEFAULT_RUNS_DIR
from .predict import load_run_model

log = logging.getLogger(__name__)

#: ONNX opset of the exported graph (as the extraction runtimes use).
OPSET = 17
#: Largest difference between ONNX Runtime and torch on the probe images (fp32).
EXPORT_TOLERANCE = 1e-5


@dataclass
class ExportResult:
    path: Path
    metadata: dict
    max_difference: float      # ONNX Runtime against the torch module on probe images
    seconds: float


def run_export(model_ref, out, runs_dir=DEFAULT_RUNS_DIR, overwrite: bool = False,
               probe_images: int = 4) -> ExportResult:
    """Write the classifier of run ``model_ref`` (run id, prefix, record or model file)
    to ``out`` (``.onnx``) as one ONNX graph; refuses an existing ``out`` unless
    ``overwrite``.

    Linear heads, fine-tuned runs and the baselines are one torch module,
    exported whole.  RBF-SVM (calibrated) and kNN heads are converted by
    skl2onnx and joined to the exported trunk (``onnx.compose``); an SVM left
    uncalibrated (a class of one image) is refused with the alternatives.
    """
    import time

    t0 = time.perf_counter()
    out = Path(out)
    if out.suffix.lower() != ".onnx":
        raise UsageError(f"{opt('out', str(out))} must end in .onnx", param="out")
    if out.exists() and not overwrite:
        raise StoreError(f"{out} exists; pass {opt('overwrite', 'True')} or another "
                         f"{opt('out')}", param="out")
    model = load_run_model(model_ref, runs_dir)
    if model.kind == "onnx":
        raise UsageError(f"{model.path} is already an exported model", param="model_ref")
    from ..train.deploy import LINEAR_HEADS, build_classifier, build_frozen_trunk, head_name

    converted = model.kind == "frozen" and head_name(model.bundle["model"]) not in LINEAR_HEADS
    if converted:
        _check_convertible(model)
        trunk, rule, details = build_frozen_trunk(model.bundle)
        head = model.bundle["model"]
        reference = _trunk_then_head(trunk, head)
    else:
        classifier, rule, details = build_classifier(model.kind, model.bundle)
        reference = _torch_reference(classifier)
    meta = metadata(model, rule, details)
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(out) as tmp:
        if converted:
            proto = _merge_head(_torch_to_onnx(trunk, rule.input_size, tmp, "features"), head,
                                details["channels"])
        else:
            proto = _torch_to_onnx(classifier, rule.input_size, tmp, "probabilities")
        _save(proto, meta, tmp)
        gap = _check(reference, tmp, rule.input_size, probe_images)
    log.info("exported %s to %s (ONNX Runtime vs torch on %d probe images: %.2g)",
             model.run_id, out, probe_images, gap)
    return ExportResult(out, meta, gap, time.perf_counter() - t0)


def metadata(model, rule, details: dict) -> dict:
    """The ``metadata_props`` of an exported classifier (every value a string)."""
    import importlib.metadata as md

    try:
        version = md.version("transfer-workbench")
    except md.PackageNotFoundError:
        version = "unknown"
    record = model.record
    method, label = (record.method, record.label) if record is not None else (None, None)
    return {
        "classes": json.dumps(list(model.classes)),
        "input": f"images: uint8 RGB (N, {rule.input_size}, {rule.input_size}, 3)",
        "output": "probabilities: float32 (N, n_classes), columns in the order of classes",
        "input_size": str(rule.input_size),
        "resize_short_side": str(rule.resize_short_side),
        "interpolation": rule.interpolation,
        "preprocessing": rule.describe(),
        "crop_rule": json.dumps(rule.to_dict()),
        "run_id": model.run_id,
        "kind": model.kind,
        "method": str(method or details.get("head") or model.kind),
        "label": str(label or ""),
        "backbone": details.get("backbone", ""),
        "tap": details.get("tap", ""),
        "pooling": details.get("pooling", ""),
        "producer": f"transfer-workbench {version}",
    }


def _torch_to_onnx(module, size: int, path, output: str):
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


def _check_convertible(model) -> None:
    from ..train.deploy import head_name

    name = head_name(model.bundle["model"])
    if name == "SVC":
        raise UsageError(
            f"run {model.run_id}'s SVM head was left uncalibrated (a class had one image), so "
            "its probabilities are a softmax of one-vs-rest margins that ONNX's SVM operator "
            "does not compute; fit a logreg or linear-svm head on the same store "
            f"({program()} fit --clf logreg --layer TAP) and export that, or label images with "
            f"{program()} predict --model RUN", param="model_ref")
    try:
        import skl2onnx  # noqa: F401
    except ImportError:
        raise UsageError(
            f"a {name} head is converted to ONNX by skl2onnx, which is not installed: pip "
            "install skl2onnx, or export a logreg, linear-svm or sgd-logreg head of the same "
            f"tap ({program()} fit --clf logreg --layer TAP)", param="model_ref") from None


def _merge_head(trunk, head, n_features: int):
    """The trunk graph (``images`` -> ``features``) followed by ``head`` (a fitted
    scikit-learn pipeline) converted by skl2onnx: one graph ``images`` -> ``probabilities``."""
    import onnx
    from skl2onnx import convert_sklearn
    from skl2onnx.common.data_types import FloatTensorType

    final = head.steps[-1][1] if hasattr(head, "steps") else head
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


def _save(proto, meta: dict, path) -> None:
    import onnx

    del proto.metadata_props[:]
    for key, value in meta.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    proto.doc_string = f"{meta['label'] or meta['method']} ({meta['run_id']}): {meta['input']} " \
                       f"-> {meta['output']}. Before: {meta['preprocessing']}."
    onnx.checker.check_model(proto)
    onnx.save(proto, str(path))


def _torch_reference(classifier):
    import torch

    def run(images):
        with torch.inference_mode():
            return classifier(torch.from_numpy(images)).numpy()

    return run


def _trunk_then_head(trunk, head):
    """What ``predict`` computes: the eager trunk's features, then scikit-learn."""
    import torch

    from ..heads.selection import predict_proba

    def run(images):
        with torch.inference_mode():
            return predict_proba(head, trunk(torch.from_numpy(images)).numpy())

    return run


def _check(reference, path, size: int, n: int) -> float:
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
