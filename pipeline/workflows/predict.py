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
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import UsageError, opt
from ..files import atomic_write, refuse_existing
from ..models import load_model as load_run_model
from ..options import DEFAULT_DIVERSITY
from ..runs.records import DEFAULT_RUNS_DIR
from .ranking import RankRequest

__all__ = ["Prediction", "load_run_model", "run_predict"]

log = logging.getLogger(__name__)


@dataclass
class Prediction:
    path: str
    label: str
    probability: float
    top: list        # [(label, probability)] best first
    error: str = ""
    uncertainty: float = float("nan")   # predict --rank: its score, larger = less sure
    rank: int = 0                       # predict --rank: 1 = label first, 0 = not listed
    overlay: str = ""  # its class-activation overlay, with ``explain``


def run_predict(model_ref: str, inputs, runs_dir=DEFAULT_RUNS_DIR, out_csv=None,
                batch_size: int = 32, device: str = "auto", top_k: int = 3,
                overwrite: bool = False, rank: str | None = None, rank_top: int = 20,
                rank_out=None, diversity: str = DEFAULT_DIVERSITY,
                explain=None) -> list[Prediction]:
    """Label images with a run's model, their input made exactly as in its training.

    ``model_ref`` is a run id (or prefix), a run record JSON, a saved model
    (``.skops`` or ``.pt``; pickles are refused, :mod:`pipeline.heads.persist`)
    or an exported ``.onnx`` classifier; ``inputs`` are image files and/or
    folders (searched recursively for the images ``extract`` takes).  Each
    :class:`Prediction` holds the ``top_k`` classes, best first; a file left out of a
    folder (not an image, a format Pillow cannot decode, not a regular file) and a file
    that does not decode are listed too, with their reason as ``error``.  ``out_csv``
    also writes them as CSV.

    ``rank`` (``margin``, ``entropy``, ``least-confident``) also ranks the images to
    label next (:mod:`pipeline.workflows.ranking`): the ``rank_top`` first get their
    ``rank`` (1 = first), every image its ``uncertainty``; ``diversity`` ``kmeans`` or
    ``kcenter`` spreads them (:mod:`pipeline.heads.ranking`), ``none`` takes the most
    uncertain; ``rank_out`` writes that list as CSV.  ``explain``: a folder to write each
    labelled image's class-activation overlay to (:mod:`.explain`; its path is the
    prediction's ``overlay``).
    """
    if top_k < 1:
        raise UsageError(f"{opt('top_k', top_k)} must be >= 1", param="top_k")
    model = load_run_model(model_ref, runs_dir)
    entries = _image_files(inputs)
    refuse_existing(out_csv, overwrite, "out_csv")
    ranking = RankRequest.checked(rank, rank_top, rank_out, diversity, overwrite)
    files = [f for f, why in entries if why is None]
    proba, vectors, space, errors = model.proba_and_vectors(files, batch_size, device)
    labelled = _labelled(model.classes, files, proba, errors, top_k)
    preds = [next(labelled) if why is None else Prediction(str(f), "", float("nan"), [], why)
             for f, why in entries]
    if ranking is not None:
        ranking.apply(preds, proba, vectors, space, lambda: model.labelled_vectors(runs_dir))
    if explain:
        _explain(model, preds, explain, batch_size, device, overwrite)
    if out_csv:
        Path(out_csv).parent.mkdir(parents=True, exist_ok=True)
        with atomic_write(out_csv, "w", encoding="utf-8", newline="") as fh:
            w = csv.writer(fh)
            w.writerow(["path", "label", "probability", "top_k", "error"])
            for p in preds:
                w.writerow([p.path, p.label, f"{p.probability:.6f}",
                            ";".join(f"{c}:{q:.4f}" for c, q in p.top), p.error])
    return preds


def _explain(model, preds: list, out_dir, batch_size: int, device: str, overwrite: bool):
    """Write the overlay of each labelled prediction, for its label, and name it there."""
    from .explain import write_overlays

    done = [p for p in preds if not p.error]
    paths = write_overlays(model, [p.path for p in done], [p.label for p in done], out_dir,
                           min(batch_size, 16), device, overwrite)
    for p, path in zip(done, paths):
        p.overlay = str(path) if path else ""


def _labelled(classes: list, files: list, proba, errors: dict, top_k: int):
    """A :class:`Prediction` of each of ``files`` in turn: its ``top_k`` classes from
    ``proba`` (one row per file without an entry in ``errors``), or why it could not be
    decoded."""
    k = 0
    for i, f in enumerate(files):
        if i in errors:
            yield Prediction(str(f), "", float("nan"), [], errors[i])
            continue
        p = proba[k]
        k += 1
        order = np.argsort(-p, kind="stable")[:top_k]
        yield Prediction(str(f), classes[order[0]], float(p[order[0]]),
                         [(classes[j], float(p[j])) for j in order])


def _image_files(inputs) -> list[tuple[Path, str | None]]:
    """``[(path, None)]`` for each image to label and ``[(path, reason)]`` for each file left
    out, in the order of ``inputs`` (a folder's files sorted): a file given is always
    tried; below a folder, the files ``extract`` would take are
    (:func:`pipeline.data.manifest.not_an_image`, :func:`~pipeline.data.manifest.regular_stat`),
    and hidden files and folders are left out, counted in the log."""
    from ..data.manifest import IMAGE_EXTENSIONS

    entries, hidden = [], 0
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            found, n_hidden = _folder_files(p)
            entries += found
            hidden += n_hidden
        elif p.is_file():
            entries.append((p, None))
        else:
            raise UsageError(f"{item!r} is neither an image file nor a folder")
    if hidden:
        log.info("left out %d hidden file(s) or folder(s) (name starting with '.') below %s",
                 hidden, ", ".join(map(str, inputs)))
    if not any(why is None for _f, why in entries):
        left = "; ".join(f"{f}: {why}" for f, why in entries[:3]) + (
            f"; ... and {len(entries) - 3} more" if len(entries) > 3 else "")
        raise UsageError(f"no images to predict in {', '.join(map(str, inputs))} (images: "
                         f"{' '.join(IMAGE_EXTENSIONS)}, any case; hidden files and folders "
                         "below a folder given are left out"
                         + (f"; left out: {left}" if left else "")
                         + "): pass image files or folders that hold some")
    return entries


def _folder_files(folder: Path) -> tuple[list, int]:
    """``([(path, reason or None)], hidden)`` of every file below ``folder``, sorted by path:
    None for an image, else why it is left out, as ``extract`` says it; ``hidden`` counts
    the hidden files and folders (hidden means below ``folder``: ``../photos`` or
    ``~/.cache/photos`` themselves are not), never entered nor opened."""
    from ..data.manifest import not_an_image, regular_stat

    entries, hidden = [], 0
    for dirpath, dirnames, filenames in os.walk(folder):
        hidden += sum(n.startswith(".") for n in dirnames + filenames)
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        for name in filenames:
            if name.startswith("."):
                continue
            full = os.path.join(dirpath, name)
            why = not_an_image(full, name)
            if why is None:
                st = regular_stat(full)
                why = st if isinstance(st, str) else None
            entries.append((Path(full), why))
    return sorted(entries, key=lambda e: e[0]), hidden
