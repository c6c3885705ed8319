"""``predict``: label new images with any run's model, its input made as in training.

:func:`load_run_model` opens what a run saved (:func:`pipeline.models.load_model`):
a frozen head or the pixel baseline (``.skops``, :mod:`pipeline.heads.persist`),
a fine-tuned network or the MLP/CNN baseline (``.pt``, loaded ``weights_only``),
or a classifier written by ``export`` (``.onnx``), as a
:class:`~pipeline.models.base.TrainedModel`.  :func:`run_predict` asks it for the
probabilities of the images; each kind makes its input as its training did
(:mod:`pipeline.models`):

- frozen heads: features extracted exactly as the store made them (backbone,
  weights, pooling, runtime, precision) by the extraction function
  ``extract`` uses, then the head's ``predict_proba``;
- the pixel baseline: :func:`pipeline.train.baselines.pixel_matrix`, then its head;
- fine-tuned, MLP and CNN runs: crops made by the run's
  :class:`~pipeline.data.decode.CropRule` (the pixels of its training
  transform), then its network in eager torch and a softmax
  (:mod:`pipeline.train.deploy`);
- ``.onnx``: ONNX Runtime alone on crops made by the rule in the model's
  metadata, with PIL and numpy: this path never imports torch.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import StoreError, UsageError, opt
from ..files import atomic_write
from ..models import load_model as load_run_model
from ..runs.records import DEFAULT_RUNS_DIR

__all__ = ["Prediction", "load_run_model", "run_predict"]


@dataclass
class Prediction:
    path: str
    label: str
    probability: float
    top: list        # [(label, probability)] best first
    error: str = ""


def run_predict(model_ref: str, inputs, runs_dir=DEFAULT_RUNS_DIR, out_csv=None,
                batch_size: int = 32, device: str = "auto", top_k: int = 3,
                overwrite: bool = False) -> list[Prediction]:
    """Label images with a run's model, their input made exactly as in its training.

    ``model_ref`` is a run id (or prefix), a run record JSON, a saved model
    (``.skops`` or ``.pt``; pickles are refused, :mod:`pipeline.heads.persist`)
    or an exported ``.onnx`` classifier; ``inputs`` are image files and/or
    folders (searched recursively).  Each :class:`Prediction` holds the
    ``top_k`` classes, best first; files that do not decode are listed with
    their reason.  ``out_csv`` also writes them as CSV.
    """
    if top_k < 1:
        raise UsageError(f"{opt('top_k', top_k)} must be >= 1", param="top_k")
    model = load_run_model(model_ref, runs_dir)
    files = _image_files(inputs)
    if out_csv and Path(out_csv).exists() and not overwrite:
        raise StoreError(f"{out_csv} exists; pass {opt('overwrite', 'True')} or another "
                         f"{opt('out_csv')}", param="out_csv")
    proba, errors = model.predict_proba(files, batch_size, device)
    classes = model.classes
    preds, k = [], 0
    for i, f in enumerate(files):
        if i in errors:
            preds.append(Prediction(str(f), "", float("nan"), [], errors[i]))
            continue
        p = proba[k]
        k += 1
        order = np.argsort(-p, kind="stable")[:top_k]
        preds.append(Prediction(str(f), classes[order[0]], float(p[order[0]]),
                                [(classes[j], float(p[j])) for j in order]))
    if out_csv:
        Path(out_csv).parent.mkdir(parents=True, exist_ok=True)
        with atomic_write(out_csv, "w", encoding="utf-8", newline="") as fh:
            w = csv.writer(fh)
            w.writerow(["path", "label", "probability", "top_k", "error"])
            for p in preds:
                w.writerow([p.path, p.label, f"{p.probability:.6f}",
                            ";".join(f"{c}:{q:.4f}" for c, q in p.top), p.error])
    return preds


def _image_files(inputs) -> list[Path]:
    from ..data.manifest import IMAGE_EXTENSIONS

    files = []
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            # hidden means below the folder given: `../photos` or `~/.cache/photos` are not
            files += sorted(f for f in p.rglob("*") if f.suffix.lower() in IMAGE_EXTENSIONS
                            and not any(part.startswith(".")
                                        for part in f.relative_to(p).parts))
        elif p.is_file():
            files.append(p)
        else:
            raise UsageError(f"{item!r} is neither an image file nor a folder")
    if not files:
        raise UsageError(f"no images to predict in {', '.join(map(str, inputs))} (images: "
                         f"{' '.join(sorted(IMAGE_EXTENSIONS))}, any case; hidden files and "
                         "folders below a folder given are left out): pass image files or "
                         "folders that hold some")
    return files
