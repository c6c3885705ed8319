"""What an extraction targets: its configuration resolved, the data read, the store's key.

:func:`resolve` checks an :class:`~pipeline.configs.ExtractConfig` and resolves
what ``auto`` leaves open (pooling and taps by the backbone, runtime, precision,
device) without importing torch; :func:`pooling_note` says which pooling and why;
:func:`build_manifest` reads the data in its layout; :func:`split_spec` is the
split stored with the vectors; :func:`store_path` is the store a run writes, and
:func:`store_config` the key of its contents (everything that shapes the vectors,
:func:`comparable` with the key of older stores).  The ``extract`` job
(:mod:`pipeline.extraction.job`) and the torchrun shards
(:mod:`pipeline.extraction.shards`) ask these; nothing here writes.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

from ..backbones import get_backbone, resolve_taps, weights_identity
from ..configs import ExtractConfig
from ..data.decode import DECODING
from ..data.layouts import TableColumns, load
from ..data.manifest import Manifest, bundled_data_root, stratified_head
from ..data.partition import SplitSpec
from ..errors import UsageError, opt
from ..options import DTYPES, POOL_CHOICES, TTA_CHOICES
from ..store.hdf5 import FORMAT_VERSION
from .runtimes import check_device, resolve_precision, resolve_runtime


def default_store_path(out: str, dataset: str, backbone: str, pool: str,
                       tta: str = "none") -> Path:
    """``out`` itself when it names an ``.h5`` file, else ``out/<dataset>_<backbone>_<pool>.h5``
    (a ``/`` in the backbone name, as in ``timm/convnext_tiny``, becomes ``-``), or
    ``..._<pool>_<tta>.h5`` with a test-time augmentation, so a flip store is never taken
    for the plain one."""
    out = Path(out)
    if out.suffix in (".h5", ".hdf5"):
        return out
    suffix = "" if tta == "none" else f"_{tta}"
    return out / f"{dataset}_{backbone.replace('/', '-')}_{pool}{suffix}.h5"


def table_columns(cfg: ExtractConfig) -> TableColumns:
    """The label-table columns (and image root) ``cfg`` names; None: found by name."""
    return TableColumns(cfg.path_column, cfg.label_column, cfg.split_column,
                        cfg.group_column, cfg.image_root)


def data_root(cfg: ExtractConfig) -> Path:
    """``cfg.data``, or the bundled flowers when it is None (an empty path is refused by
    :func:`validate`, never read as "the bundled data")."""
    return bundled_data_root() if cfg.data is None else Path(cfg.data)


def dataset_name(cfg: ExtractConfig) -> str:
    """The data's name in the store's file name: the folder's, or ``<folder>_<stem>`` of a
    label table (as :attr:`Manifest.name`)."""
    root = data_root(cfg)
    if root.is_file():
        return f"{root.resolve().parent.name}_{root.stem}"
    return root.name


def store_path(cfg: ExtractConfig) -> Path:
    """The store :func:`run_extract` writes for ``cfg`` (without scanning the folder), named
    by the pooling ``auto`` resolves to, so a default run finds the store of the same
    pooling asked for by name (``..._avg.h5`` of a CNN either way)."""
    spec = get_backbone(cfg.backbone)
    return default_store_path(cfg.out, dataset_name(cfg), spec.name,
                              spec.resolve_pooling(cfg.pool)[0], cfg.tta)


def pooling_note(cfg: ExtractConfig) -> str:
    """The pooling of ``cfg``'s taps and why, e.g. ``cls (the backbone's own: ...)``
    (``cfg`` as asked or as :func:`resolve` returned it)."""
    pooling, why = get_backbone(cfg.backbone).resolve_pooling(cfg.asked_pool or cfg.pool)
    return f"{pooling} ({why})"


#: What each test-time augmentation does to the stored vectors (``extract``'s summary).
TTA_NOTES = {"flip": "flip (each vector the mean of the image's and its horizontal mirror's; "
                     "two forward passes per image)"}


def resolved_lines(cfg: ExtractConfig, taps) -> list[str]:
    """What the pooling, the test-time augmentation (when there is one) and the stored
    ``taps`` of ``cfg`` are, and why (two or three lines)."""
    asked = "as asked" if cfg.layers else "the backbone's default"
    tta = [f"test-time augmentation: {TTA_NOTES[cfg.tta]}"] if cfg.tta != "none" else []
    return [f"pooling: {pooling_note(cfg)}", *tta, f"taps: {', '.join(taps)} ({asked})"]


def build_manifest(cfg: ExtractConfig) -> Manifest:
    """The data's manifest in its layout (``cfg.limit``: its stratified head)."""
    manifest = load(data_root(cfg), cfg.layout, table_columns(cfg))
    if cfg.limit:
        manifest = manifest.subset(stratified_head(manifest.labels, cfg.limit))
    return manifest


def split_spec(cfg: ExtractConfig, manifest: Manifest) -> SplitSpec:
    """The spec of the split stored with the vectors: ``cfg``'s seed and group rule
    (``auto``: the label table's group column when it has one, else none)."""
    rule = cfg.groups
    if rule == "auto":
        rule = "table" if manifest.groups is not None else "none"
    return SplitSpec(seed=cfg.seed, groups=rule, fractions=tuple(cfg.fractions))


def validate(cfg: ExtractConfig):
    """:class:`UsageError` naming the parameter when ``cfg``'s data path is empty or its
    pooling, test-time augmentation, dtype or batch size is not one this tool has."""
    if cfg.data is not None and not str(cfg.data).strip():
        raise UsageError(f"{opt('data')} is an empty path; give a folder of images or a "
                         f"label table, or leave {opt('data')} out for the bundled flowers",
                         param="data")
    if cfg.pool not in POOL_CHOICES:
        raise UsageError(f"unknown pooling {cfg.pool!r}; valid: {', '.join(POOL_CHOICES)}",
                         param="pool")
    if cfg.tta not in TTA_CHOICES:
        raise UsageError(f"unknown {opt('tta')} {cfg.tta!r}; valid: {', '.join(TTA_CHOICES)}",
                         param="tta")
    if cfg.dtype not in DTYPES:
        raise UsageError(f"unknown {opt('dtype')} {cfg.dtype!r}; valid: {', '.join(DTYPES)}",
                         param="dtype")
    if cfg.batch_size < 1:
        raise UsageError(f"{opt('batch_size')} must be >= 1, got {cfg.batch_size}",
                         param="batch_size")


def resolve(cfg: ExtractConfig):
    """``(cfg with pooling, runtime and precision resolved, spec, taps, device kind)``.

    Resolved without importing torch, because all three shape the vectors; ``auto``
    pooling and no taps are the backbone's own (:meth:`BackboneSpec.resolve_pooling`,
    :attr:`BackboneSpec.default_taps`); a device this machine does not have is refused
    here, before the job writes anything.
    """
    validate(cfg)
    spec = get_backbone(cfg.backbone)
    pooling, _why = spec.resolve_pooling(cfg.pool)
    cfg = replace(cfg, pool=pooling, asked_pool=cfg.asked_pool or cfg.pool)
    taps = resolve_taps(spec, cfg.layers)
    device_kind = check_device(cfg.device)
    runtime = resolve_runtime(cfg.runtime, device_kind)
    cfg = replace(cfg, runtime=runtime, asked_runtime=cfg.asked_runtime or cfg.runtime,
                  precision=resolve_precision(cfg.precision, runtime, device_kind))
    return cfg, spec, taps, device_kind


def store_config(cfg: ExtractConfig, spec) -> dict:
    """Everything that shapes the stored vectors: the store's cache key.

    Not the labels, classes, split or groups: they come from the data's layout and
    a seed, and changing them rewrites the store's index without a forward pass.
    ``tta`` is in it only when there is one (``flip``): plain stores keep the key they
    had before test-time augmentation existed, and a store without it reads as ``none``
    (:attr:`pipeline.store.hdf5.FeatureStore.tta`).
    """
    config = {
        "format_version": FORMAT_VERSION,
        "backbone": spec.name,
        "weights": weights_identity(spec, cfg.weights),
        "preprocessing": spec.preprocessing.to_dict(),
        "decoding": DECODING,
        "pooling": cfg.pool,
        "dtype": cfg.dtype,
        "runtime": cfg.runtime,
        "precision": cfg.precision,
    }
    if cfg.tta != "none":
        config["tta"] = cfg.tta
    return json.loads(json.dumps(config))  # the form it takes once stored


#: Keys of the cache key of stores written before the split left it (version 0.1 of
#: the store); ignored when such a store is compared, so it is reused, not re-extracted.
FORMER_KEYS = ("classes", "split")


def comparable(config: dict) -> dict:
    """``config`` without the keys older stores had in their key (:data:`FORMER_KEYS`)."""
    return {k: v for k, v in config.items() if k not in FORMER_KEYS}
