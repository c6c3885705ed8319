"""``predict``: label new images with a saved head, features made as in training.
"""

from __future__ import annotations

import csv
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import StoreError, UsageError, opt
from ..files import atomic_write
from ..heads.persist import HEAD_EXT, PICKLE_SUFFIXES, load_head
from ..heads.selection import predict_proba
from ..runs.records import DEFAULT_RUNS_DIR, find_record

log = logging.getLogger(__name__)


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
    """Label images with a fitted head, extracting features exactly as it was trained.

    ``model_ref`` is a run id (or prefix), a run record JSON or a saved head
    (``.skops``; pickles are refused, :mod:`pipeline.heads.persist`);
    ``inputs`` are image files and/or folders (searched recursively).
    """
    from ..data.manifest import IMAGE_EXTENSIONS

    bundle = _load_head(model_ref, runs_dir)
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
    if out_csv and Path(out_csv).exists() and not overwrite:
        raise StoreError(f"{out_csv} exists; pass {opt('overwrite', 'True')} or another "
                         f"{opt('out_csv')}", param="out_csv")
    feats, errors = _extract_files(bundle, files, batch_size, device)
    classes = bundle["classes"]
    preds = []
    ok = [i for i in range(len(files)) if i not in errors]
    proba = predict_proba(bundle["model"], feats) if ok else np.zeros((0, len(classes)))
    k = 0
    for i, f in enumerate(files):
        if i in errors:
            preds.append(Prediction(str(f), "", float("nan"), [], errors[i]))
            continue
        p = proba[k]
        k += 1
        order = np.argsort(-p)[:top_k]
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


def _load_head(model_ref: str, runs_dir) -> dict:
    p = Path(model_ref)
    if p.suffix.lower() in (f".{HEAD_EXT}", *PICKLE_SUFFIXES):
        return load_head(p)
    record = find_record(model_ref, runs_dir)
    if record.get("kind") != "frozen" or not record.get("model_file"):
        raise UsageError(
            f"run {record['run_id']} ({record.get('method')}) is not a frozen-feature head; "
            "predict takes runs written by `python cli.py fit`")
    model_file = Path(record["model_file"])
    if not model_file.is_file():      # the runs folder was moved: the head sits beside it
        model_file = Path(record["_file"]).with_name(model_file.name)
    if not model_file.is_file():
        raise StoreError(f"the fitted head of run {record['run_id']} is missing ({model_file})")
    return load_head(model_file)


def _extract_files(bundle, files, batch_size, device):
    """Features of ``files`` at the head's tap, made as the store made them (backbone,
    weights, pooling, runtime, precision) by the extraction function ``extract`` uses.

    Returns ``(X (n_ok, C), {file index: reason})``.  A runtime not installed
    here falls back to eager (fp32 runtimes agree within 1e-4), with a log line.
    """
    from ..backbones import get_backbone, weights_identity
    from ..extraction.features import extract_features
    from ..extraction.runtimes import installed

    cfg = bundle["store_config"]
    source = bundle.get("weights_source") or "imagenet"
    identity = weights_identity(get_backbone(cfg["backbone"]), source)
    if identity != cfg["weights"]:
        raise StoreError(
            f"the head was trained on features from weights {cfg['weights']} but "
            f"{source!r} now gives {identity}; restore those weights")
    runtime, precision = cfg.get("runtime", "eager"), cfg.get("precision", "auto")
    if not installed(runtime):
        log.warning("the store was extracted with runtime %s, which is not installed here; "
                    "predicting with eager torch (fp32)", runtime)
        runtime, precision = "eager", "auto"
    tap = bundle["tap"]
    feats, errors = [], {}
    for res in extract_features(Path("."), [str(f) for f in files], cfg["backbone"], source,
                                [tap], cfg["pooling"], runtime=runtime, precision=precision,
                                device=device, batch_size=batch_size, workers=0,
                                hash_files=False):
        for index, _sha, reason in res.failures:
            errors[index] = reason
            log.warning("skipped %s: %s", files[index], reason)
        if res.indices:
            feats.append(res.features[tap])
    X = np.concatenate(feats) if feats else np.zeros((0, 1), dtype=np.float32)
    return X, errors
