"""``export``: one run's model as one deployable ONNX classifier.

The graph maps a uint8 RGB batch ``images`` ``(N, S, S, 3)`` at the run's
input size to ``probabilities`` ``(N, n_classes)``.  The run's model
(:func:`pipeline.models.load_model`) writes itself
(:meth:`pipeline.models.base.TrainedModel.export`, :mod:`pipeline.models.graph`):
linear heads, fine-tuned runs and the baselines as one exported torch module,
RBF-SVM and kNN heads converted by skl2onnx and joined to the exported trunk.
What the caller must do before (decode to RGB, resize the shorter side,
centre-crop) and what the columns are go into the model's ``metadata_props``;
the snippet in docs/deploy.md reads them.  Before the file is written, ONNX
Runtime's output on probe images is compared with what ``predict`` computes.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from ..errors import UsageError, opt
from ..files import refuse_existing
from ..models import load_model
from ..runs.records import DEFAULT_RUNS_DIR

log = logging.getLogger(__name__)


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
    refuse_existing(out, overwrite)
    model = load_model(model_ref, runs_dir)
    meta, gap = model.export(out, probe_images)
    log.info("exported %s to %s (ONNX Runtime vs torch on %d probe images: %.2g)",
             model.run_id, out, probe_images, gap)
    return ExportResult(out, meta, gap, time.perf_counter() - t0)
