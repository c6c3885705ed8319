"""The ``extract`` job: image folder -> feature store, incremental and resumable.

:func:`run_extract` is what ``python cli.py extract`` calls.  It scans the
folder, compares it with the existing store (same configuration: reuse
unchanged images; changed or new images are extracted alone), resumes an
interrupted run from its journal, runs one forward pass per batch for every
requested tap (:func:`pipeline.extraction.features.extract_features`), and
assembles the finished store atomically.  torch is only imported once there
is something to extract, so an up-to-date re-run is fast.

:func:`extract_manifest` does the same for a manifest and store path the
caller chose; the torchrun shards (:mod:`.shards`) use it for their share of
the images.  This module knows nothing of shards.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from ..backbones import get_backbone, resolve_taps, weights_identity
from ..balance import IMBALANCE_RATIO, class_ratio
from ..configs import ExtractConfig
from ..data.decode import DECODING
from ..data.layouts import TableColumns, load
from ..data.manifest import Manifest, bundled_data_root, stratified_head
from ..data.partition import SplitSpec, group_ids, partition
from ..errors import CorruptStoreError, StoreError, UsageError, opt, program
from ..files import (
    atomic_write,
    free_bytes,
    human_bytes,
    output_folder,
    sha256_file,
    sha256_text,
    writing_into,
)
from ..options import DTYPES, POOLINGS
from ..store.hdf5 import (
    FORMAT_VERSION,
    FeatureStore,
    config_key,
    library_versions,
    now_iso,
    write_store,
)
from ..store.journal import Journal
from ..store.lock import write_lock
from .runtimes import cuda_available_cheap, resolve_precision, resolve_runtime

log = logging.getLogger(__name__)


@dataclass
class ExtractSummary:
    path: Path
    n_images: int
    n_extracted: int
    n_reused: int
    n_resumed: int
    skipped: list = field(default_factory=list)   # (path, reason)
    seconds: float = 0.0
    forward_seconds: float = 0.0
    images_per_second: float = 0.0
    up_to_date: bool = False
    runtime: str = ""
    precision: str = ""
    notes: list = field(default_factory=list)        # what the layout and split found
    class_counts: dict = field(default_factory=dict)  # class -> [train, val, test] images
    split: dict = field(default_factory=dict)          # the stored split (partition info)
    #: the finished store, opened (not compared, not shown)
    store: object = field(default=None, compare=False, repr=False)

    def describe(self) -> list[str]:
        """Lines saying what data was found: layout, classes with their images per split,
        class balance, the stored split and groups, and any warning about them."""
        lines = [n for n in self.notes if n.startswith("layout:")]
        totals = {c: sum(v) for c, v in self.class_counts.items()}
        if totals:
            width = max(len("class"), *(len(c) for c in totals))
            lines.append(f"  {'class':<{width}} {'images':>7} {'train':>6} {'val':>5} "
                         f"{'test':>5}")
            for c, (tr, va, te) in self.class_counts.items():
                lines.append(f"  {c:<{width}} {tr + va + te:>7} {tr:>6} {va:>5} {te:>5}")
            ratio = class_ratio(list(totals.values()))
            if ratio > IMBALANCE_RATIO:
                big, small = max(totals, key=totals.get), min(totals, key=totals.get)
                lines.append(f"WARNING: imbalanced classes: {big} has {ratio:.1f}x the images "
                             f"of {small} ({totals[big]} vs {totals[small]}); accuracy "
                             "rewards answering the large class: read balanced accuracy "
                             "and macro-F1")
        split = self.split or {}
        if split:
            groups = split.get("groups") or "none"
            apart = (", each on one side of the split and of every fold"
                     if split.get("groups_apart", True) else "")
            lines.append(f"split: {split.get('source', '?')}"
                         + ("" if groups == "none" else
                            f"; groups: {groups} ({split.get('n_groups')} groups{apart})")
                         + ("; cross-validation folds train + val and leaves the given test "
                            "split out" if split.get("test_given") else ""))
        lines += [f"WARNING: {n}" for n in self.notes if not n.startswith(("layout:",
                                                                           "columns:"))]
        lines += [n for n in self.notes if n.startswith("columns:")]
        return lines


# ------------------------------------------------------------------ configuration


def default_store_path(out: str, dataset: str, backbone: str, pool: str) -> Path:
    """``out`` itself when it names an ``.h5`` file, else ``out/<dataset>_<backbone>_<pool>.h5``
    (a ``/`` in the backbone name, as in ``timm/convnext_tiny``, becomes ``-``)."""
    out = Path(out)
    if out.suffix in (".h5", ".hdf5"):
        return out
    return out / f"{dataset}_{backbone.replace('/', '-')}_{pool}.h5"


def table_columns(cfg: ExtractConfig) -> TableColumns:
    """The label-table columns (and image root) ``cfg`` names; None: found by name."""
    return TableColumns(cfg.path_column, cfg.label_column, cfg.split_column,
                        cfg.group_column, cfg.image_root)


def data_root(cfg: ExtractConfig) -> Path:
    return Path(cfg.data) if cfg.data else bundled_data_root()


def dataset_name(cfg: ExtractConfig) -> str:
    """The data's name in the store's file name: the folder's, or ``<folder>_<stem>`` of a
    label table (as :attr:`Manifest.name`)."""
    root = data_root(cfg)
    if root.is_file():
        return f"{root.resolve().parent.name}_{root.stem}"
    return root.name


def store_path(cfg: ExtractConfig) -> Path:
    """The store :func:`run_extract` writes for ``cfg`` (without scanning the folder)."""
    return default_store_path(cfg.out, dataset_name(cfg), get_backbone(cfg.backbone).name,
                              cfg.pool)


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
    if cfg.pool not in POOLINGS:
        raise UsageError(f"unknown pooling {cfg.pool!r}; valid: {', '.join(POOLINGS)}",
                         param="pool")
    if cfg.dtype not in DTYPES:
        raise UsageError(f"unknown {opt('dtype')} {cfg.dtype!r}; valid: {', '.join(DTYPES)}",
                         param="dtype")
    if cfg.batch_size < 1:
        raise UsageError(f"{opt('batch_size')} must be >= 1, got {cfg.batch_size}",
                         param="batch_size")


def resolve(cfg: ExtractConfig):
    """``(cfg with runtime and precision resolved, spec, taps, device kind)``.

    Resolved without importing torch, because both shape the vectors.
    """
    validate(cfg)
    spec = get_backbone(cfg.backbone)
    spec.check_pooling(cfg.pool)
    taps = resolve_taps(spec, cfg.layers)
    device_kind = cfg.device
    if device_kind == "auto":
        device_kind = "cuda" if cuda_available_cheap() else "cpu"
    runtime = resolve_runtime(cfg.runtime, device_kind)
    cfg = replace(cfg, runtime=runtime, asked_runtime=cfg.asked_runtime or cfg.runtime,
                  precision=resolve_precision(cfg.precision, runtime, device_kind))
    return cfg, spec, taps, device_kind


def store_config(cfg: ExtractConfig, spec) -> dict:
    """Everything that shapes the stored vectors: the store's cache key.

    Not the labels, classes, split or groups: they come from the data's layout and
    a seed, and changing them rewrites the store's index without a forward pass.
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
    return json.loads(json.dumps(config))  # the form it takes once stored


#: Keys of the cache key of stores written before the split left it (version 0.1 of
#: the store); ignored when such a store is compared, so it is reused, not re-extracted.
FORMER_KEYS = ("classes", "split")


def comparable(config: dict) -> dict:
    """``config`` without the keys older stores had in their key (:data:`FORMER_KEYS`)."""
    return {k: v for k, v in config.items() if k not in FORMER_KEYS}


def check_existing(path: Path, config: dict, overwrite: bool) -> FeatureStore | None:
    """The store at ``path`` (opened once for the whole run) when it has ``config``; None
    when there is none (or ``overwrite``); :class:`StoreError` naming the difference
    otherwise.

    A store that cannot be read (truncated, damaged, a dataset missing, not
    written by this tool) is refused, unless ``overwrite``: it is then moved
    aside to ``<name>.corrupt-<time>`` (never deleted) and a new one is written.
    """
    try:
        existing = FeatureStore(path) if path.exists() else None
        if existing is not None:
            existing.index()
    except CorruptStoreError as exc:
        detail = exc.template.split(f"; run `{program()} extract`")[0]
        if not overwrite:
            raise StoreError(
                f"{detail}; pass {opt('overwrite', 'True')} to move it aside "
                f"({path.name}.corrupt-<time>) and extract anew, or {opt('out')} to write "
                "elsewhere", param="overwrite") from None
        aside = move_aside(path)
        log.warning("%s; moved it aside to %s and writing a new store", detail, aside)
        return None
    if existing is None or comparable(existing.config) == config:
        return existing
    if overwrite:
        return None
    old = comparable(existing.config)
    diff = sorted(k for k in set(old) | set(config) if old.get(k) != config.get(k))
    raise StoreError(
        f"{path} exists with a different configuration (differs in: {', '.join(diff)}); "
        f"pass {opt('overwrite', 'True')} to replace it or {opt('out')} to write elsewhere",
        param="overwrite")


def move_aside(path: Path) -> Path:
    """Rename an unreadable store to ``<name>.corrupt-<UTC time>`` beside it; return that."""
    stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
    aside = path.with_name(f"{path.name}.corrupt-{stamp}")
    n = 1
    while aside.exists():
        aside, n = path.with_name(f"{path.name}.corrupt-{stamp}-{n}"), n + 1
    os.replace(path, aside)
    return aside


def estimate_store_bytes(paths, taps: dict, dtype: str, skipped=()) -> int:
    """A generous estimate of the bytes of a store of ``paths`` with ``taps`` (tap ->
    channels): vectors, index columns, HDF5 metadata, plus a quarter for safety."""
    vector = sum(taps.values()) * np.dtype(dtype).itemsize
    names = sum(len(p) for p in paths) + sum(len(s[0]) + len(s[-1]) for s in skipped)
    body = len(paths) * (vector + 200) + names + 200 * len(skipped)
    return 64 * 1024 + int(1.25 * body)


# ------------------------------------------------------------------ the job


def run_extract(cfg: ExtractConfig) -> ExtractSummary:
    """Bring the store for ``cfg`` up to date and return what was done."""
    t_start = time.perf_counter()
    validate(cfg)
    manifest = build_manifest(cfg)
    summary = extract_manifest(cfg, manifest, store_path(cfg), t_start)
    for line in summary.describe():
        if line.startswith("WARNING: "):
            log.warning("%s", line[len("WARNING: "):])
    if summary.up_to_date:  # the files are the ones checked when the store was written
        log.info("leakage check not repeated: %s is unchanged (`%s report` lists its "
                 "duplicate pairs)", summary.path, program())
    else:
        log_leakage(summary.store)
    return summary


def log_leakage(store: FeatureStore) -> dict | None:
    """Warn with the counts of exact and near-duplicate pairs of ``store``
    (:func:`pipeline.store.leakage.find_duplicates`); returns them (None if the check
    could not run: the store is written either way)."""
    from ..store.leakage import find_duplicates, near_rule_text, summary_line

    path = store.path
    try:
        found = find_duplicates(store)
    except (StoreError, OSError, ValueError, ImportError) as exc:
        log.warning("leakage check of %s not run: %s", path, exc)
        return None
    if found["exact"]["total"] or found["near"]["total"] or found.get("near_caveat"):
        # a caveat (random weights, images not hashed) is worth a warning without pairs too
        log.warning("leakage check of %s: %s (`%s report` lists them)", path,
                    summary_line(found), program())
    else:
        log.info("leakage check of %s: no duplicate pairs (%s)", path,
                 near_rule_text(found))
    return found


def extract_manifest(cfg: ExtractConfig, manifest: Manifest, path: Path,
                     t_start: float | None = None) -> ExtractSummary:
    """Bring the store at ``path`` up to date with the images of ``manifest`` under ``cfg``."""
    t_start = time.perf_counter() if t_start is None else t_start
    cfg, spec, taps, device_kind = resolve(cfg)
    config = store_config(cfg, spec)
    output_folder(path)
    need = estimate_store_bytes(manifest.paths, spec.widths(taps, cfg.pool), cfg.dtype)
    journal = f"{path}.partial"
    on_full = (f"the store needs about {human_bytes(need)}; the batches already extracted "
               f"are kept in {journal} and the next run resumes from them")
    with writing_into(path.parent, on_full=on_full), write_lock(path):
        old = check_existing(path, config, cfg.overwrite)
        plan = plan_reuse(old, manifest, spec, taps)
        if plan.up_to_date and not _labels_changed(old, manifest, split_spec(cfg, manifest)):
            log.info("%s is up to date (%d images)", path, len(plan.reuse))
            return _summary(old, manifest, t_start, cfg, up_to_date=True,
                            n_reused=len(plan.reuse))  # the store as it is, opened once
        return _extract_and_write(cfg, spec, manifest, config, path, plan, device_kind, t_start,
                                  old)


def _summary(store: FeatureStore, manifest: Manifest, t_start: float, cfg, **counts):
    """The :class:`ExtractSummary` of the finished ``store`` (which it keeps, opened)."""
    fields = {"n_extracted": 0, "n_reused": 0, "n_resumed": 0, **counts}
    return ExtractSummary(
        path=store.path, n_images=len(store), skipped=fields.pop("skipped", store.skipped),
        seconds=time.perf_counter() - t_start, runtime=cfg.runtime, precision=cfg.precision,
        notes=list(manifest.notes) + list(store.split_info.get("notes") or []),
        class_counts=store.split_class_counts(), split=store.split_info, store=store,
        **fields)


def _labels_changed(store: FeatureStore, manifest: Manifest, spec: SplitSpec) -> bool:
    """Whether the store's labels, classes, given split, groups, table or split spec differ
    from the data's (its index is then rewritten; no vector changes)."""
    label_of = dict(zip(manifest.paths, (manifest.classes[k] for k in manifest.labels)))
    if any(label_of.get(p) != store.classes[k] for p, k in zip(store.paths, store.labels)):
        return True
    if store.classes != manifest.classes or store.stored_spec != spec:
        return True
    if (store.attrs.get("source_sha256") or None) != manifest.source_sha256 \
            or store.attrs.get("layout", "classes") != manifest.layout:
        return True
    given = None if manifest.given_split is None else dict(zip(manifest.paths,
                                                               manifest.given_split.tolist()))
    if (given is None) != (store.given_split is None) or (
            given is not None and any(given.get(p) != int(c) for p, c in
                                      zip(store.paths, store.given_split))):
        return True
    groups = None if manifest.groups is None else dict(zip(manifest.paths, manifest.groups))
    return (groups is None) != (store.groups is None) or (
        groups is not None and any(groups.get(p) != g for p, g in zip(store.paths,
                                                                      store.groups)))


@dataclass
class ReusePlan:
    """What an extraction can take from the existing store and what it must compute."""

    taps: tuple               # every tap of the new store (old ones kept), shallow to deep
    reuse: dict               # path -> (row in the old store, sha256)
    keep_skipped: dict        # path -> (sha256, reason): still the same unusable file
    todo: list                # manifest rows to extract
    previous_split: dict      # path -> split code fixed by the old store
    existing: bool = False    # a store with this configuration is there
    up_to_date: bool = False


def plan_reuse(old: FeatureStore | None, manifest: Manifest, spec, taps) -> ReusePlan:
    """Decide, image by image, what can be reused from the existing store ``old``."""
    if old is None:
        return ReusePlan(tuple(taps), {}, {}, list(range(len(manifest))), {})
    index = old.index()
    old_taps = list(old.taps)
    all_taps = tuple(t for t in spec.tap_names if t in set(old_taps) | set(taps))
    previous = {p: int(c) for p, c in zip(index.paths, index.split)}
    if not set(taps) <= set(old_taps):  # a new tap: every image runs again
        return ReusePlan(all_taps, {}, {}, list(range(len(manifest))), previous, True)
    reuse, keep_skipped, todo = {}, {}, []
    row_of = {p: i for i, p in enumerate(index.paths)}
    for i, rel in enumerate(manifest.paths):
        r = row_of.get(rel)
        if r is not None:
            if index.size[r] == manifest.sizes[i] and index.mtime_ns[r] == manifest.mtimes[i]:
                reuse[rel] = (r, index.sha256[r])
                continue
            sha = sha256_file(manifest.root / rel)
            if sha == index.sha256[r]:
                reuse[rel] = (r, sha)
                continue
        elif rel in index.skipped:
            sha, reason = index.skipped[rel]
            if _sha_or_none(manifest.root / rel) == sha:
                keep_skipped[rel] = (sha, reason)
                continue
        todo.append(i)
    plan = ReusePlan(all_taps, reuse, keep_skipped, todo, previous, True)
    plan.up_to_date = not todo and not _index_changed(index, manifest, plan)
    return plan


def _index_changed(index, manifest: Manifest, plan: ReusePlan) -> bool:
    """Whether the store's index must be rewritten although no image needs a forward pass:
    removed images, new mtimes, or a different list of left-out files."""
    if set(index.paths) - set(manifest.paths):
        return True
    mtime = dict(zip(manifest.paths, manifest.mtimes))
    if any(index.mtime_ns[r] != mtime[p] for p, (r, _) in plan.reuse.items()):
        return True
    # The store lists every file it left out and why; keep that list current.
    listed = {p: reason for p, (_sha, reason) in index.skipped.items()}
    expected = {p: reason for p, (_sha, reason) in plan.keep_skipped.items()}
    expected.update(manifest.excluded)
    return listed != expected


def _extract_and_write(cfg, spec, manifest, config, path, plan, device_kind, t_start,
                       old: FeatureStore | None):
    """Journal the forward passes of ``plan.todo``, then write the finished store."""
    journal = Journal(path, config_key(dict(config, taps=list(plan.taps))))
    journal.open(overwrite=cfg.overwrite)
    stamps = {p: (int(s), int(m)) for p, s, m in zip(manifest.paths, manifest.sizes,
                                                      manifest.mtimes)}
    done_rows, done_failed = journal.done(stamps)
    resumed = [i for i in plan.todo if manifest.paths[i] in done_rows
               or manifest.paths[i] in done_failed]
    remaining = [i for i in plan.todo if manifest.paths[i] not in done_rows
                 and manifest.paths[i] not in done_failed]
    if resumed:
        log.info("resuming: %d images already done in %s", len(resumed), journal.dir)
    forward_seconds, n_forward = 0.0, 0
    if remaining:
        forward_seconds, n_forward = _run_forward(cfg, spec, plan.taps, manifest, remaining,
                                                  journal)
        done_rows, done_failed = journal.done(stamps)
    rows, skipped = assemble_rows(manifest, plan, done_rows, done_failed, old)
    check_free_space(path, journal, rows, skipped,
                     spec.widths(plan.taps, cfg.pool), cfg.dtype)
    speed = (n_forward / forward_seconds) if forward_seconds else 0.0
    created = old.attrs.get("created") if old is not None else None
    attrs = store_attrs(cfg, spec, config, manifest, created or now_iso(), speed)
    attrs["cost"] = _cost(spec, plan.taps, cfg.pool, old)
    write_split_store(path, config, attrs, manifest, rows, skipped,
                      spec.widths(plan.taps, cfg.pool), cfg, plan.previous_split, old)
    journal.discard()
    return _summary(FeatureStore(path), manifest, t_start, cfg, n_extracted=n_forward,
                    n_reused=len(plan.reuse), n_resumed=len(resumed),
                    skipped=[(p, r) for p, _s, r in skipped],
                    forward_seconds=forward_seconds, images_per_second=speed)


def _cost(spec, taps, pool: str, old_store=None) -> dict:
    """Parameters and GFLOPs per tap (:func:`pipeline.extraction.forward.measure_cost`),
    kept from the old store when it measured the same taps; ``{}`` when not measurable."""
    if old_store is not None:
        old = old_store.attrs.get("cost")
        old = json.loads(old) if isinstance(old, str) else old
        if isinstance(old, dict) and set(taps) <= set((old.get("gflops") or {})):
            return old
    cached = _cost_cache_file(spec, taps, pool)
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


def _cost_cache_file(spec, taps, pool: str) -> Path:
    """Where :func:`_cost` keeps a measured cost: the export cache folder, keyed by the
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


def assemble_rows(manifest: Manifest, plan: ReusePlan, done_rows: dict, done_failed: dict,
                  old: FeatureStore | None):
    """``(rows, skipped)`` of the finished store in manifest order (see :func:`write_store`)."""
    old_rows = np.asarray(sorted(r for r, _ in plan.reuse.values()), dtype=np.int64)
    old_vectors = old.read_rows(plan.taps, old_rows) if len(old_rows) else {}
    old_pos = {int(r): k for k, r in enumerate(old_rows)}
    rows, skipped = [], []
    for i, rel in enumerate(manifest.paths):
        if rel in plan.reuse:
            r, sha = plan.reuse[rel]
            vec = functools.partial(_row_of, old_vectors, old_pos[r])
        elif rel in done_rows:
            sha, feats = done_rows[rel]
            vec = functools.partial(dict, feats)
        elif rel in plan.keep_skipped or rel in done_failed:
            skipped.append((rel, *(plan.keep_skipped.get(rel) or done_failed[rel])))
            continue
        else:  # pragma: no cover - every image is in exactly one of the above
            raise StoreError(f"internal error: {rel} was neither extracted nor skipped")
        rows.append({"path": rel, "label": int(manifest.labels[i]), "sha256": sha,
                     "size": int(manifest.sizes[i]), "mtime_ns": int(manifest.mtimes[i]),
                     "vectors": vec})
    # Entries of the tree that were never candidates (hidden, not images, empty classes).
    skipped.extend((rel, "", reason) for rel, reason in manifest.excluded)
    return rows, skipped


def _row_of(vectors: dict, k: int) -> dict:
    return {t: v[k] for t, v in vectors.items()}


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


def write_split_store(path: Path, config: dict, attrs: dict, manifest: Manifest, rows,
                      skipped, taps: dict, cfg: ExtractConfig, previous_split: dict,
                      old: FeatureStore | None = None):
    """Fix the stored split and cross-validation folds over ``rows`` (:func:`partition`
    of the data's given split and groups under the spec of ``cfg``) and write the store.

    The codes of the store at ``path`` (``previous_split`` from it) are kept for the
    images it had when it was split under the same spec, so adding images never moves
    an earlier image to another split."""
    paths, labels = [r["path"] for r in rows], [r["label"] for r in rows]
    spec = split_spec(cfg, manifest)
    row_of = {p: i for i, p in enumerate(manifest.paths)}
    keep = [row_of[p] for p in paths]
    given = None if manifest.given_split is None else manifest.given_split[keep]
    stored = None if manifest.groups is None else [manifest.groups[i] for i in keep]
    same_spec = bool(previous_split) and old is not None and old.stored_spec == spec
    previous_folds = old.stored_folds() if same_spec else {}
    part = partition(paths, labels, spec, given=given, groups=group_ids(spec.groups, paths, stored),
                     previous_split=previous_split if same_spec else None,
                     previous_folds=previous_folds)
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
    attrs = dict(attrs, split_seed=spec.seed, split_fractions=list(spec.fractions),
                 group_rule=spec.groups, partition=part.describe())
    write_store(path, config=config, attrs=attrs, classes=manifest.classes, rows=rows,
                skipped=skipped, taps=taps, dtype=cfg.dtype)


def _sha_or_none(path):
    """SHA-256 of ``path``, or None when it cannot be read (it is then retried)."""
    try:
        return sha256_file(path)
    except OSError:
        return None


def default_workers() -> int:
    """Decoding threads for one process: one on 2 cores, up to 8 on more."""
    cpus = os.cpu_count() or 1
    return 1 if cpus <= 2 else min(8, cpus - 1)


def _run_forward(cfg, spec, taps, manifest, remaining, journal):
    """Extract ``remaining`` manifest rows batch by batch into the journal."""
    from tqdm.auto import tqdm

    from .features import extract_features

    seq = journal.next_seq()
    n_forward = 0
    bar = tqdm(total=len(remaining), unit="img", desc=f"extract {spec.name}",
               disable=not cfg.progress)
    t0 = time.perf_counter()
    run = replace(cfg, backbone=spec.name,
                  workers=default_workers() if cfg.workers is None else cfg.workers)
    batches = extract_features(manifest.root, [manifest.paths[i] for i in remaining], run,
                               taps, indices=remaining)
    try:
        for res in batches:
            paths = [manifest.paths[i] for i in res.indices]
            failures = [(manifest.paths[i], sha, reason) for i, sha, reason in res.failures]
            for rel, _sha, reason in failures:
                log.warning("skipped %s: %s", rel, reason)
            stamps = [(int(manifest.sizes[i]), int(manifest.mtimes[i]))
                      for i in list(res.indices) + [f[0] for f in res.failures]]
            journal.write(seq, paths, res.shas, res.features, failures, stamps)
            seq += 1
            n_forward += len(paths)
            bar.update(len(paths) + len(failures))
    finally:
        bar.close()
    return time.perf_counter() - t0, n_forward
