"""What an extraction costs: the network's parameters and GFLOPs, the store's bytes.

:func:`measured_cost` is the parameters and GFLOPs per tap a store records
(measured once per network and library versions, kept in a small JSON file
beside the exported models, :func:`cost_cache_file`); :func:`estimate_store_bytes`
a generous size of the store to write, and :func:`check_free_space` the refusal,
before h5py starts, when its disk has less room than that.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np

from ..errors import StoreError, opt
from ..files import atomic_write, free_bytes, human_bytes, sha256_text
from ..store.journal import Journal

log = logging.getLogger(__name__)


def measured_cost(spec, taps, pool: str, old_store=None, tta: str = "none") -> dict:
    """Parameters and GFLOPs per tap (:func:`pipeline.extraction.forward.measure_cost`),
    kept from the old store when it measured the same taps; ``{}`` when not measurable.
    Flip TTA (``tta="flip"``) passes every image twice: twice the GFLOPs."""
    if old_store is not None:
        old = old_store.attrs.get("cost")
        old = json.loads(old) if isinstance(old, str) else old
        if isinstance(old, dict) and set(taps) <= set((old.get("gflops") or {})):
            return old
    cost = _plain_cost(spec, taps, pool)
    if cost and tta == "flip":
        cost = {**cost, "gflops": {t: round(2 * g, 4) for t, g in cost["gflops"].items()},
                "method": f"{cost['method']}; doubled: flip TTA passes each image and its "
                          "mirror"}
    return cost


def _plain_cost(spec, taps, pool: str) -> dict:
    """The cost of one forward pass, cached in :func:`cost_cache_file`."""
    cached = cost_cache_file(spec, taps, pool)
    try:
        return json.loads(cached.read_text())
    except (OSError, ValueError):
        pass
    from .forward import measure_cost

    cost = measure_cost(spec, taps, pool) or {}
    if cost:           # counting builds the network (seconds: timm's import); do it once
        try:
            cached.parent.mkdir(parents=True, exist_ok=True)
            with atomic_write(cached, "w", encoding="utf-8") as fh:
                json.dump(cost, fh)
        except OSError as exc:
            log.info("cost not cached in %s (%s)", cached.parent, exc)
    return cost


def cost_cache_file(spec, taps, pool: str) -> Path:
    """Where :func:`measured_cost` keeps a measured cost: the export cache folder, keyed by the
    network (backbone, taps, pooling, preprocessing) and the library versions."""
    from importlib import metadata

    from .runtimes import default_cache_dir

    versions = {}
    for package in ("torch", "timm"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            pass
    blob = json.dumps([spec.name, list(taps), pool, spec.preprocessing.to_dict(), versions],
                      sort_keys=True)
    return default_cache_dir() / "cost" / f"{sha256_text(blob)[:32]}.json"


def check_free_space(path: Path, journal: Journal, rows, skipped, taps: dict, dtype: str):
    """:class:`StoreError` when the folder of ``path`` has less free space than the store
    will take (a full disk while h5py writes can crash the process, not just fail)."""
    need = estimate_store_bytes([r["path"] for r in rows], taps, dtype, skipped)
    free = free_bytes(path.parent)
    if free < need:
        raise StoreError(
            f"not enough free space in {path.parent} to write {path.name}: it needs about "
            f"{human_bytes(need)}, {human_bytes(free)} free; free some space (or pass "
            f"{opt('out')} on another disk) and run the same command again: the extracted "
            f"batches are kept in {journal.dir} and the next run resumes from them (no "
            "forward pass is repeated)", param="out")


def estimate_store_bytes(paths, taps: dict, dtype: str, skipped=()) -> int:
    """A generous estimate of the bytes of a store of ``paths`` with ``taps`` (tap ->
    channels): vectors, index columns, HDF5 metadata, plus a quarter for safety."""
    vector = sum(taps.values()) * np.dtype(dtype).itemsize
    names = sum(len(p) for p in paths) + sum(len(s[0]) + len(s[-1]) for s in skipped)
    body = len(paths) * (vector + 200) + names + 200 * len(skipped)
    return 64 * 1024 + int(1.25 * body)
