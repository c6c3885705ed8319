"""Where a model looks, as images: ``predict --explain`` overlays and the report's CAM thumbnails.

Both ask a run's model for its class-activation maps
(:meth:`pipeline.models.base.TrainedModel.cam`, :mod:`pipeline.models.cam`) and
blend each map into the crop the model saw.  :func:`write_overlays` writes one
PNG per image; :func:`gallery_maps` computes the thumbnails of the few images
the report's mistakes gallery shows, for the best frozen run and the best
fine-tuned run, and hands them to the report as data (the report itself never
runs a model).
"""

from __future__ import annotations

import logging
import re
import time
from pathlib import Path

from ..errors import StoreError, WorkbenchError, opt
from ..files import atomic_write

log = logging.getLogger(__name__)

#: The run kinds the mistakes gallery draws maps for, in the order shown.
GALLERY_KINDS = (("frozen", "best frozen run", "frozen"),
                 ("finetune", "best fine-tuned run", "fine-tuned"))


def overlay_name(path, label: str) -> str:
    """``<image stem>.<predicted label>.cam.png``, the label made safe for any file system."""
    return f"{Path(path).stem}.{re.sub(r'[^A-Za-z0-9_.-]+', '_', label) or 'class'}.cam.png"


def write_overlays(model, files, labels, out_dir, batch_size: int = 16,
                   device: str = "auto", overwrite: bool = False) -> list:
    """One PNG per image of ``files`` in ``out_dir``: the model's input crop with the map of
    ``labels[i]`` (its predicted class) blended in, named by :func:`overlay_name`.

    Returns the path written per file (None for a file that did not decode).
    Refuses to replace an existing overlay unless ``overwrite``, before any map is
    computed; a kind without a spatial map refuses with its reason.
    """
    from PIL import Image

    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise StoreError(f"{out_dir} is a file; {opt('explain')} takes a folder",
                         param="explain")
    names = _unique([overlay_name(f, label) for f, label in zip(files, labels)])
    taken = [n for n in names if (out_dir / n).exists()]
    if taken and not overwrite:
        raise StoreError(f"{out_dir / taken[0]} exists ({len(taken)} overlay(s) would be "
                         f"replaced); pass {opt('overwrite', 'True')} or another "
                         f"{opt('explain')} folder", param="explain")
    maps = model.cam(files, target=list(labels), batch_size=batch_size, device=device)
    out_dir.mkdir(parents=True, exist_ok=True)
    written, overlays = [], iter(maps.overlays())
    for i, name in enumerate(names):
        if i in maps.errors:
            written.append(None)
            continue
        path = out_dir / name
        with atomic_write(path, "wb") as fh:
            Image.fromarray(next(overlays)).save(fh, format="PNG")
        written.append(path)
    log.info("%s of %d image(s) written to %s", maps.method, len(names) - len(maps.errors),
             out_dir)
    return written


def _unique(names: list) -> list:
    """``names`` with a counter added to the second and later of equal names."""
    seen, out = {}, []
    for n in names:
        k = seen.get(n, 0)
        seen[n] = k + 1
        out.append(n if k == 0 else n.replace(".cam.png", f".{k}.cam.png"))
    return out


def gallery_maps(groups: list, paths: list, size: int) -> dict:
    """The maps of the report's mistakes gallery: for each of :data:`GALLERY_KINDS`, the
    best group of ``groups`` (best first, :func:`pipeline.runs.groups.group_runs`) whose
    model draws one, its map of each image of ``paths`` (better groups without one, e.g.
    an RBF-SVM head or a missing model file, are named in a note with the reason).

    Returns ``{"models": [{"title", "short", "label", "method", "maps": [data URI or None
    per path], "classes": [the class each map is for, or None]}], "notes": [why the best
    of a kind has no maps], "seconds"}``; a missing model file or a kind without a map
    becomes a note, never an error.
    """
    from ..reporting.sections import image_uri

    t0 = time.perf_counter()
    models, notes = [], []
    for kind, title, short in GALLERY_KINDS:
        for k, group in enumerate(g for g in groups if g["kind"] == kind and paths):
            try:
                maps = _maps_of(group["rep"], paths)
            except WorkbenchError as exc:
                if k == 0:  # why the best has none; a later one's title says it is not
                    notes.append(f"No maps of the {title} ({group['name']}): {exc}")
                log.info("report: no maps of %s: %s", group["name"], exc)
                continue
            shown = iter(zip(maps.overlays(), maps.targets))
            drawn = [None if i in maps.errors else next(shown) for i in range(len(paths))]
            models.append({"title": title if k == 0 else f"best {short} run with a map",
                           "short": short, "label": group["name"], "method": maps.method,
                           "maps": [d and image_uri(d[0], size) for d in drawn],
                           "classes": [d and group["rep"].class_names()[d[1]] for d in drawn]})
            break
    log.info("report: class-activation maps of %d image(s) by %d model(s) in %.1f s",
             len(paths), len(models), time.perf_counter() - t0)
    return {"models": models, "notes": notes,
            "seconds": round(time.perf_counter() - t0, 2)}


def _maps_of(rep, paths):
    """The :class:`~pipeline.models.cam.ClassMaps` of ``paths`` by run ``rep``'s model."""
    from ..models import load_model

    if not rep.model_file:
        raise StoreError(f"run {rep.run_id} saved no model file")
    # the record, when read from a file: its model is then found beside it if moved
    return load_model(rep.file or rep.model_file).cam([str(p) for p in paths])
