"""``hierarchy``: the images of a folder -> a feature-hierarchy record the report shows.

Runs the backbone (so it is a workflow, not part of the report): for each tap,
the patches of the user's own images that most activate a few channels, and
the first convolution's filters (:func:`pipeline.extraction.hierarchy.feature_hierarchy`).
The record is one JSON file under ``<runs_dir>/hierarchy/`` (pictures inside as
data URIs); the report shows the newest one.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

from ..backbones import get_backbone, load_backbone, resolve_taps
from ..configs import HierarchyConfig
from ..data.layouts import load
from ..data.manifest import bundled_data_root, stratified_head
from ..files import atomic_write
from ..runs.records import DEFAULT_RUNS_DIR, make_run_id, side_records
from ..store.hdf5 import now_iso

log = logging.getLogger(__name__)


HIERARCHY_SCHEMA = 1


def run_hierarchy(cfg: HierarchyConfig | None = None,
                  runs_dir=DEFAULT_RUNS_DIR) -> tuple[dict, Path]:
    """Compute the feature hierarchy of about ``cfg.limit`` images of ``cfg.data`` (the
    first of each class, in proportion; None: every image; default config: the bundled
    flowers) and save its record.

    Returns ``(record, path)``.
    """
    import torch

    from ..extraction.hierarchy import feature_hierarchy

    cfg = cfg or HierarchyConfig()
    t0 = time.perf_counter()
    root = Path(cfg.data) if cfg.data else bundled_data_root()
    manifest = load(root)
    if cfg.limit and cfg.limit < len(manifest):
        manifest = manifest.subset(stratified_head(manifest.labels, cfg.limit))
    spec = get_backbone(cfg.backbone)
    taps = resolve_taps(spec, cfg.layers or ("all",))
    loaded = load_backbone(cfg.backbone, cfg.weights)
    with torch.inference_mode(False):
        result = feature_hierarchy(loaded, manifest.root, manifest.paths, taps,
                                   channels=cfg.channels, patches=cfg.patches,
                                   batch_size=cfg.batch_size)
    record = {"kind": "hierarchy", "schema": HIERARCHY_SCHEMA,
              "run_id": make_run_id("hierarchy"), "created": now_iso(),
              "backbone": cfg.backbone, "weights": loaded.weights_id,
              "data_root": str(manifest.root.resolve()), "classes": manifest.classes,
              "channels": cfg.channels, "patches": cfg.patches, "limit": cfg.limit,
              "seconds": round(time.perf_counter() - t0, 2), **result}
    folder = Path(runs_dir) / "hierarchy"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{record['run_id']}.json"
    with atomic_write(path, "w", encoding="utf-8", exclusive=True) as fh:
        json.dump(record, fh)
    log.info("feature hierarchy of %d images, taps %s: %s (%.0f s)", result["n_images"],
             ", ".join(taps), path, record["seconds"])
    return record, path


def latest_hierarchy(runs_dir) -> dict | None:
    """The newest readable hierarchy record under ``<runs_dir>/hierarchy/``, or None."""
    found = side_records(Path(runs_dir) / "hierarchy", "*.json", "hierarchy", HIERARCHY_SCHEMA)
    return found[0] if found else None
