"""``export``: one run's model as one deployable ONNX classifier.

The graph maps a uint8 RGB batch ``images`` ``(N, S, S, 3)`` at the run's
input size to ``probabilities`` ``(N, n_classes)``: normalisation, the trunk
up to the tap, pooling, the standardiser and the head (or the fine-tuned /
baseline network) and the softmax, all in one graph built from
:func:`pipeline.train.deploy.build_classifier` and exported with
``torch.onnx.export`` as :func:`pipeline.extraction.runtimes.export_onnx`
exports the feature extractor.  What the caller must do before (decode to
RGB, resize the shorter side, centre-crop) and what the columns are go into
the model's ``metadata_props`` (:func:`metadata`); the snippet in README,
"Deploy", reads them.  Before the file is written, ONNX Runtime's output on
probe images is compared with the torch module's.
"""

from __future__ import annotations

import json
import logging
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import StoreError, UsageError, opt
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
    ``overwrite``.  A head that is not linear (RBF SVM, kNN) is refused with the
    alternatives."""
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
    from ..train.deploy import build_classifier

    classifier, rule, details = build_classifier(model.kind, model.bundle)
    meta = metadata(model, rule, details)
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(out) as tmp:
        _write_onnx(classifier, rule.input_size, tmp, meta)
        gap = _check(classifier, tmp, rule.input_size, probe_images)
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
        "method": str(record.get("method") or details.get("head") or model.kind),
        "label": str(record.get("label") or ""),
        "backbone": details.get("backbone", ""),
        "tap": details.get("tap", ""),
        "pooling": details.get("pooling", ""),
        "producer": f"transfer-workbench {version}",
    }


def _write_onnx(classifier, size: int, path, meta: dict) -> None:
    import onnx
    import torch

    example = torch.zeros((2, size, size, 3), dtype=torch.uint8)
    with warnings.catch_warnings(), torch.inference_mode(False), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(classifier, (example,), str(path), dynamo=False, opset_version=OPSET,
                          input_names=["images"], output_names=["probabilities"],
                          dynamic_axes={"images": {0: "n"}, "probabilities": {0: "n"}})
    proto = onnx.load(str(path))
    del proto.metadata_props[:]
    for key, value in meta.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    proto.doc_string = f"{meta['label'] or meta['method']} ({meta['run_id']}): {meta['input']} " \
                       f"-> {meta['output']}. Before: {meta['preprocessing']}."
    onnx.checker.check_model(proto)
    onnx.save(proto, str(path))


def _check(classifier, path, size: int, n: int) -> float:
    """Largest difference of ONNX Runtime's probabilities from the torch module's on
    ``n`` random images; :class:`StoreError` above :data:`EXPORT_TOLERANCE`."""
    import onnxruntime as ort
    import torch

    images = np.random.default_rng(0).integers(0, 256, (n, size, size, 3), dtype=np.uint8)
    with torch.inference_mode():
        ref = classifier(torch.from_numpy(images)).numpy()
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = session.run(None, {"images": images})[0]
    gap = float(np.abs(got - ref).max())
    if gap > EXPORT_TOLERANCE:
        raise StoreError(f"the exported graph differs from the torch model by {gap:.2g} "
                         f"(more than {EXPORT_TOLERANCE:g}); nothing was written")
    return gap
