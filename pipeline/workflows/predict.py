"""``predict``: label new images with any run's model, its input made as in training.

:func:`load_run_model` opens what a run saved: a frozen head or the pixel
baseline (``.skops``, :mod:`pipeline.heads.persist`), a fine-tuned network or
the MLP/CNN baseline (``.pt``, loaded ``weights_only``), or a classifier
written by ``export`` (``.onnx``).  :func:`run_predict` labels images with it:

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
import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import DeviceError, StoreError, UsageError, opt, program
from ..files import atomic_write
from ..heads.persist import HEAD_EXT, PICKLE_SUFFIXES, load_head
from ..runs.records import DEFAULT_RUNS_DIR, RunRecord, find_record

log = logging.getLogger(__name__)

#: Suffix of a saved torch run (fine-tuning, MLP, CNN) and of an exported classifier.
TORCH_EXT, ONNX_EXT = "pt", "onnx"


@dataclass
class Prediction:
    path: str
    label: str
    probability: float
    top: list        # [(label, probability)] best first
    error: str = ""


@dataclass
class RunModel:
    """A run's saved model, opened: what ``predict`` and ``export`` work from.

    ``kind``: frozen | pixels | mlp | cnn | finetune | onnx; ``bundle`` is what
    was saved (for onnx: ``{"session", "metadata", "rule"}``); ``record``: the run's
    record when one was found beside the model, else None.
    """

    kind: str
    classes: list
    bundle: dict
    path: Path
    run_id: str = ""
    record: RunRecord | None = None


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
    proba, errors = predict_files(model, files, batch_size, device)
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
            files += sorted(f for f in p.rglob("*") if f.suffix.lower() in IMAGE_EXTENSIONS
                            and not any(part.startswith(".") for part in f.parts))
        elif p.is_file():
            files.append(p)
        else:
            raise UsageError(f"{item!r} is neither an image file nor a folder")
    if not files:
        raise UsageError("no images to predict: pass image files or folders")
    return files


def predict_files(model: RunModel, files, batch_size: int = 32, device: str = "auto"):
    """``(probabilities (n_ok, n_classes), {file index: reason})`` of ``files``."""
    if model.kind == "frozen":
        from ..heads.selection import predict_proba

        feats, errors = _extract_files(model.bundle, files, batch_size, device)
        ok = len(files) - len(errors)
        return (predict_proba(model.bundle["model"], feats) if ok else
                np.zeros((0, len(model.classes)))), errors
    if model.kind == "pixels":
        return _pixels_proba(model, files)
    if model.kind == ONNX_EXT:
        return _onnx_proba(model, files, batch_size)
    return _torch_proba(model, files, batch_size, device)


# ------------------------------------------------------------------ opening a run's model


def load_run_model(model_ref, runs_dir=DEFAULT_RUNS_DIR) -> RunModel:
    """The model ``model_ref`` names: a run id (or prefix), a run record JSON, a saved
    model file (``.skops``, ``.pt``) or an exported ``.onnx``."""
    p = Path(model_ref)
    suffix = p.suffix.lower()
    if suffix == f".{ONNX_EXT}":
        return _open_onnx(p)
    if suffix in (f".{HEAD_EXT}", f".{TORCH_EXT}", *PICKLE_SUFFIXES):
        return _open_model_file(p, None)
    record = find_record(str(model_ref), runs_dir)
    if not record.model_file:
        raise UsageError(f"run {record.run_id} ({record.method}) saved no model; "
                         "predict and export take runs written by fit, baseline or finetune")
    model_file = Path(record.model_file)
    if not model_file.is_file():      # the runs folder was moved: the model sits beside it
        model_file = Path(record.file).with_name(model_file.name)
    if not model_file.is_file():
        raise StoreError(f"the saved model of run {record.run_id} is missing ({model_file})")
    return _open_model_file(model_file, record)


def _open_model_file(path: Path, record: RunRecord | None) -> RunModel:
    sibling = path.with_name(f"{path.stem}.json")  # save_run writes <run_id>.json beside it
    if record is None and sibling.is_file():
        try:
            record = find_record(str(sibling))
        except (OSError, ValueError):
            record = None
    run_id = record.run_id if record is not None else path.stem
    if path.suffix.lower() == f".{TORCH_EXT}":
        if not path.is_file():
            raise StoreError(f"no saved model at {path}")
        from ..train.deploy import load_torch_model

        bundle = load_torch_model(path)
        kind = "finetune" if "top_state" in bundle else bundle["kind"]
        return RunModel(kind, list(bundle["classes"]), bundle, path, run_id, record)
    bundle = load_head(path)              # refuses pickles unopened
    if "tap" in bundle and "store_config" in bundle:
        kind = "frozen"
    elif bundle.get("kind") == "pixels":
        kind = "pixels"
    else:
        raise StoreError(f"{path} holds neither a frozen head nor the pixel baseline")
    return RunModel(kind, list(bundle["classes"]), bundle, path, run_id, record)


def _open_onnx(path: Path) -> RunModel:
    if not path.is_file():
        raise StoreError(f"no exported model at {path}")
    try:
        import onnxruntime as ort
    except ImportError as exc:
        raise DeviceError(f"an .onnx model needs the package 'onnxruntime' ({exc}); "
                          "install it with pip install onnxruntime") from None
    try:
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    except Exception as exc:  # noqa: BLE001 - ORT raises its own types for a bad file
        raise StoreError(f"{path} cannot be loaded by ONNX Runtime ({type(exc).__name__}: "
                         f"{str(exc).splitlines()[0][:200]})") from None
    from ..data.decode import CropRule

    meta = dict(session.get_modelmeta().custom_metadata_map)
    if "classes" not in meta or "crop_rule" not in meta:
        raise StoreError(f"{path} was not written by `{program()} export` (its metadata has "
                         "no classes and crop rule)")
    try:
        classes, rule = json.loads(meta["classes"]), CropRule(**json.loads(meta["crop_rule"]))
    except (TypeError, ValueError) as exc:
        raise StoreError(f"{path}: its metadata (classes, crop_rule) cannot be used: {exc}; "
                         "export the run again") from None
    return RunModel(ONNX_EXT, list(classes),
                    {"session": session, "metadata": meta, "rule": rule}, path,
                    meta.get("run_id", ""))


# ------------------------------------------------------------------ per kind


def _crops(files, rule):
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


def _onnx_proba(model, files, batch_size):
    session = model.bundle["session"]
    crops, errors = _crops(files, model.bundle["rule"])
    name = session.get_inputs()[0].name
    out = [session.run(None, {name: crops[s:s + batch_size]})[0]
           for s in range(0, len(crops), batch_size)]
    return (np.concatenate(out) if out else np.zeros((0, len(model.classes)))), errors


def _torch_proba(model, files, batch_size, device):
    import torch

    from ..extraction.forward import resolve_device
    from ..train.deploy import build_classifier

    classifier, rule, _ = build_classifier(model.kind, model.bundle)
    dev = resolve_device(device)
    classifier.to(dev)
    crops, errors = _crops(files, rule)
    out = []
    with torch.inference_mode():
        for s in range(0, len(crops), batch_size):
            batch = torch.from_numpy(crops[s:s + batch_size]).to(dev)
            out.append(classifier(batch).float().cpu().numpy())
    return (np.concatenate(out) if out else np.zeros((0, len(model.classes)))), errors


def _pixels_proba(model, files):
    from ..heads.selection import predict_proba
    from ..train.baselines import pixel_matrix

    X, ok, skipped = pixel_matrix(".", [str(f) for f in files], int(model.bundle["params"]["size"]))
    failed = sorted(set(range(len(files))) - set(ok.tolist()))
    errors = {i: reason for i, (_path, reason) in zip(failed, skipped)}
    proba = predict_proba(model.bundle["model"], X.astype(np.float32) / 255.0) if len(X) else \
        np.zeros((0, len(model.classes)))
    return proba, errors


def _extract_files(bundle, files, batch_size, device):
    """Features of ``files`` at the head's tap, made as the store made them (backbone,
    weights, pooling, runtime, precision) by the extraction function ``extract`` uses.

    Returns ``(X (n_ok, C), {file index: reason})``.  A runtime not installed
    here falls back to eager (fp32 runtimes agree within 1e-4), with a log line.
    """
    from ..configs import ExtractConfig
    from ..extraction.features import extract_features
    from ..extraction.runtimes import installed
    from ..train.deploy import check_head_weights

    cfg = bundle["store_config"]
    source = check_head_weights(bundle)
    runtime, precision = cfg.get("runtime", "eager"), cfg.get("precision", "auto")
    if not installed(runtime):
        log.warning("the store was extracted with runtime %s, which is not installed here; "
                    "predicting with eager torch (fp32)", runtime)
        runtime, precision = "eager", "auto"
    tap = bundle["tap"]
    feats, errors = [], {}
    run = ExtractConfig(backbone=cfg["backbone"], weights=source, pool=cfg["pooling"],
                        runtime=runtime, precision=precision, device=device,
                        batch_size=batch_size, workers=0)
    for res in extract_features(Path("."), [str(f) for f in files], run, [tap],
                                hash_files=False):
        for index, _sha, reason in res.failures:
            errors[index] = reason
            log.warning("skipped %s: %s", files[index], reason)
        if res.indices:
            feats.append(res.features[tap])
    X = np.concatenate(feats) if feats else np.zeros((0, 1), dtype=np.float32)
    return X, errors
