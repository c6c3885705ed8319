"""The finished store of an extraction: its provenance and its split, then the write.

:func:`store_attrs` is a store's descriptive attributes (provenance, not part of
its key); :func:`write_split_store` fixes the stored split and cross-validation
folds over the rows (keeping the codes of the images an older store had) and
writes the store through :func:`pipeline.store.hdf5.write_store`, the one HDF5
writer.  Used by the ``extract`` job (:mod:`pipeline.extraction.job`) and the
merge of torchrun shards (:mod:`pipeline.extraction.shards`).
"""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path

from ..configs import ExtractConfig
from ..data.decode import DECODING
from ..data.manifest import Manifest
from ..data.partition import PreviousCodes, SplitSpec, group_ids, partition
from ..store.hdf5 import FeatureStore, StoreContents, library_versions, now_iso, write_store

log = logging.getLogger(__name__)


def store_attrs(cfg: ExtractConfig, spec, config: dict, manifest: Manifest, created: str,
                images_per_second: float) -> dict:
    """The descriptive attributes of a store (provenance; not part of its key)."""
    return {
        "backbone": spec.name,
        "weights": config["weights"],
        "weights_source": (cfg.weights if cfg.weights in ("imagenet", "none")
                           else str(Path(cfg.weights).resolve())),
        "preprocessing": config["preprocessing"],
        "decoding": DECODING,
        "pooling": cfg.pool,
        "tta": cfg.tta,
        "dtype": cfg.dtype,
        "precision": config["precision"],
        "runtime": cfg.runtime,
        "data_root": str(manifest.root.resolve()),
        "dataset": manifest.name,
        "layout": manifest.layout,
        "source": str(manifest.source.resolve()) if manifest.source else "",
        "source_sha256": manifest.source_sha256 or "",
        "split_seed": cfg.seed,
        "split_fractions": list(cfg.fractions),
        "versions": library_versions(),
        "created": created,
        "updated": now_iso(),
        "images_per_second": images_per_second,
    }


def write_split_store(path: Path, contents: StoreContents, manifest: Manifest, spec: SplitSpec,
                      previous_split: dict, old: FeatureStore | None = None):
    """Fix the stored split and cross-validation folds over ``contents.rows``
    (:func:`pipeline.data.partition.partition` of the data's given split and groups under
    ``spec``) and write the store (:func:`pipeline.store.hdf5.write_store`).

    The codes of the store at ``path`` (``old``; ``previous_split`` from it) are kept
    for the images it had when it was split under the same spec, so adding images never
    moves an earlier image to another split."""
    rows = contents.rows
    paths, labels = [r["path"] for r in rows], [r["label"] for r in rows]
    row_of = {p: i for i, p in enumerate(manifest.paths)}
    keep = [row_of[p] for p in paths]
    given = None if manifest.given_split is None else manifest.given_split[keep]
    stored = None if manifest.groups is None else [manifest.groups[i] for i in keep]
    same_spec = bool(previous_split) and old is not None and old.stored_spec == spec
    previous_folds = old.stored_folds() if same_spec else {}
    previous = PreviousCodes(split=previous_split if same_spec else None, folds=previous_folds)
    part = partition(paths, labels, spec, given=given, groups=group_ids(spec.groups, paths, stored),
                     previous=previous)
    new = sum(1 for p in paths if p not in previous_folds)
    if previous_folds and new:
        log.info("%d new image(s) assigned to cross-validation folds; the %d earlier images "
                 "keep theirs", new, len(paths) - new)
    for r, i, code, f in zip(rows, keep, part.split, part.folds):
        r["split"], r["folds"] = int(code), f
        if given is not None:
            r["given"] = int(manifest.given_split[i])
        if stored is not None:
            r["group"] = manifest.groups[i]
    attrs = dict(contents.attrs, split_seed=spec.seed, split_fractions=list(spec.fractions),
                 group_rule=spec.groups, partition=part.describe())
    write_store(path, replace(contents, attrs=attrs))
