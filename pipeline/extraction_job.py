"""The ``extract`` job: image folder -> feature store, incremental and resumable.

:func:`run_extract` is what ``python cli.py extract`` calls.  It scans the
folder, compares it with the existing store (same configuration: reuse
unchanged images; changed or new images are extracted alone), resumes an
interrupted run from its journal, runs one forward pass per batch for every
requested tap, and assembles the finished store atomically.  torch is only
imported once there is something to extract, so an up-to-date re-run is fast.
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from . import store as st
from .backbones import get_backbone, resolve_taps, weights_identity
from .data import DECODING, assign_split, bundled_data_root, file_sha256, scan
from .errors import StoreError, UsageError
from .runtimes import resolve_precision, resolve_runtime

log = logging.getLogger(__name__)

DTYPES = ("float32", "float16")
POOLINGS = ("avg", "max", "gem")  # implemented by pipeline.extract.pool


@dataclass
class ExtractConfig:
    data: str | None = None
    backbone: str = "efficientnet_lite0"
    weights: str = "imagenet"
    layers: tuple = ()
    pool: str = "avg"
    batch_size: int = 32
    device: str = "auto"
    runtime: str = "eager"            # pipeline.runtimes.RUNTIMES; "auto" = fastest here
    precision: str = "auto"           # pipeline.runtimes.PRECISIONS; recorded in the key
    threads: int | None = None        # intra-op threads of the runtime (None: its default)
    workers: int | None = None
    out: str = "features"
    dtype: str = "float32"
    seed: int = 0
    fractions: tuple = (0.70, 0.15, 0.15)
    overwrite: bool = False
    progress: bool = True
    limit: int | None = None          # first N images of the manifest (benchmarks)
    shard: tuple | None = None        # (rank, world): only batches rank::world, into
                                      # <store>.shards/ (pipeline.distributed)


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


def default_store_path(out: str, dataset: str, backbone: str, pool: str) -> Path:
    out = Path(out)
    if out.suffix in (".h5", ".hdf5"):
        return out
    return out / f"{dataset}_{backbone}_{pool}.h5"


def run_extract(cfg: ExtractConfig) -> ExtractSummary:
    """Bring the store for ``cfg`` up to date and return what was done."""
    t_start = time.perf_counter()
    if cfg.pool not in POOLINGS:
        raise UsageError(f"unknown pooling {cfg.pool!r}; valid: {', '.join(POOLINGS)}")
    if cfg.dtype not in DTYPES:
        raise UsageError(f"unknown --dtype {cfg.dtype!r}; valid: {', '.join(DTYPES)}")
    if cfg.batch_size < 1:
        raise UsageError(f"--batch-size must be >= 1, got {cfg.batch_size}")
    spec = get_backbone(cfg.backbone)
    taps = resolve_taps(spec, cfg.layers)
    root = Path(cfg.data) if cfg.data else bundled_data_root()
    manifest = scan(root)
    if cfg.limit:
        keep = _stratified_head(manifest.labels, cfg.limit)
        for name in ("paths",):
            setattr(manifest, name, [manifest.paths[i] for i in keep])
        manifest.labels = manifest.labels[keep]
        manifest.sizes = manifest.sizes[keep]
        manifest.mtimes = manifest.mtimes[keep]
    device_kind = cfg.device
    if device_kind == "auto":
        device_kind = "cuda" if _cuda_available_cheap() else "cpu"
    # Resolved here (without importing torch) because both shape the vectors.
    runtime = resolve_runtime(cfg.runtime, device_kind)
    cfg = replace(cfg, runtime=runtime,
                  precision=resolve_precision(cfg.precision, runtime, device_kind))
    config = {
        "format_version": st.FORMAT_VERSION,
        "backbone": spec.name,
        "weights": weights_identity(spec, cfg.weights),
        "preprocessing": spec.preprocessing.to_dict(),
        "decoding": DECODING,
        "pooling": cfg.pool,
        "dtype": cfg.dtype,
        "runtime": cfg.runtime,
        "precision": cfg.precision,
        "classes": manifest.classes,
        "split": {"seed": cfg.seed, "fractions": list(cfg.fractions)},
    }
    config = json.loads(json.dumps(config))  # the form it takes once stored
    path = default_store_path(cfg.out, manifest.name, spec.name, cfg.pool)
    if cfg.shard is not None:  # one rank's share of a distributed extraction
        from .distributed import shard_manifest, shard_store_path
        manifest = shard_manifest(manifest, *cfg.shard, block=cfg.batch_size)
        path = shard_store_path(path, *cfg.shard)
    path.parent.mkdir(parents=True, exist_ok=True)
    with st.write_lock(path):
        return _extract_locked(cfg, spec, taps, manifest, config, path, device_kind, t_start)


def _cuda_available_cheap() -> bool:
    """CUDA availability without importing torch when no NVIDIA device node exists."""
    if not any(os.path.exists(p) for p in ("/dev/nvidiactl", "/dev/nvidia0", "/dev/dxg")):
        return False
    import torch

    return torch.cuda.is_available()


def _stratified_head(labels, limit):
    """Indices of about ``limit`` images, the first ones of each class in proportion."""
    labels = np.asarray(labels)
    keep = []
    classes = np.unique(labels)
    for c in classes:
        members = np.flatnonzero(labels == c)
        share = max(3, int(round(limit * len(members) / len(labels))))
        keep.extend(members[:share])
    return np.sort(np.asarray(keep))


def _extract_locked(cfg, spec, taps, manifest, config, path, device_kind, t_start):
    existing = st.read_index(path) if path.exists() else None
    if existing is not None and existing[0] != config:
        if not cfg.overwrite:
            old, new = existing[0], config
            diff = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
            raise StoreError(
                f"{path} exists with a different configuration (differs in: "
                f"{', '.join(diff)}); pass --overwrite to replace it or --out to write elsewhere"
            )
        existing = None
    old_taps = []
    if existing is not None:
        old_taps = list(st.FeatureStore(path).taps)
    all_taps = tuple(t for t in spec.tap_names if t in set(old_taps) | set(taps))
    recompute_all = existing is not None and not set(taps) <= set(old_taps)

    # Decide, image by image, what can be reused from the existing store.
    reuse = {}        # path -> (old row, sha)
    keep_skipped = {}  # path -> (sha, reason)
    todo = []
    if existing is not None and not recompute_all:
        _, index = existing
        row_of = {p: i for i, p in enumerate(index.paths)}
        for i, rel in enumerate(manifest.paths):
            size, mtime = manifest.sizes[i], manifest.mtimes[i]
            r = row_of.get(rel)
            if r is not None:
                if index.size[r] == size and index.mtime_ns[r] == mtime:
                    reuse[rel] = (r, index.sha256[r])
                    continue
                sha = file_sha256(manifest.root / rel)
                if sha == index.sha256[r]:
                    reuse[rel] = (r, sha)
                    continue
            elif rel in index.skipped:
                sha, reason = index.skipped[rel]
                if _sha_or_none(manifest.root / rel) == sha:
                    keep_skipped[rel] = (sha, reason)
                    continue
            todo.append(i)
    else:
        todo = list(range(len(manifest)))

    removed = 0
    metadata_changed = False
    if existing is not None and not recompute_all:
        _, index = existing
        removed = len(set(index.paths) - set(manifest.paths))
        mt = dict(zip(manifest.paths, manifest.mtimes))
        metadata_changed = any(index.mtime_ns[r] != mt[p] for p, (r, _) in reuse.items())
        # The store lists every file it left out and why; keep that list current.
        listed = {p: reason for p, (_sha, reason) in index.skipped.items()}
        expected = {p: reason for p, (_sha, reason) in keep_skipped.items()}
        expected.update(manifest.excluded)
        metadata_changed = metadata_changed or listed != expected

    if existing is not None and not todo and not removed and not metadata_changed \
            and not recompute_all:
        log.info("%s is up to date (%d images)", path, len(reuse))
        store = st.FeatureStore(path)
        return ExtractSummary(path, len(store), 0, len(reuse), 0, store.skipped,
                              time.perf_counter() - t_start, up_to_date=True,
                              runtime=cfg.runtime, precision=cfg.precision)

    journal_config = dict(config, taps=list(all_taps))
    journal = st.Journal(path, st.config_key(journal_config)).open(overwrite=cfg.overwrite)
    stamps = {p: (int(s), int(m)) for p, s, m in zip(manifest.paths, manifest.sizes,
                                                      manifest.mtimes)}
    done_rows, done_failed = journal.done(stamps)
    todo_paths = [manifest.paths[i] for i in todo]
    resumed = [p for p in todo_paths if p in done_rows or p in done_failed]
    remaining = [i for i in todo if manifest.paths[i] not in done_rows
                 and manifest.paths[i] not in done_failed]
    if resumed:
        log.info("resuming: %d images already done in %s", len(resumed), journal.dir)

    forward_seconds = 0.0
    n_forward = 0
    if remaining:
        forward_seconds, n_forward = _run_forward(cfg, spec, all_taps, manifest, remaining,
                                                  journal, device_kind)
        done_rows, done_failed = journal.done(stamps)

    # Assemble the finished store in manifest order.
    old_vectors = {}
    if reuse:
        old_vectors = st.read_vectors(path, all_taps,
                                      np.asarray(sorted(r for r, _ in reuse.values())))
        old_pos = {r: k for k, r in enumerate(sorted(r for r, _ in reuse.values()))}
    rows, skipped = [], []
    for i, rel in enumerate(manifest.paths):
        if rel in reuse:
            r, sha = reuse[rel]
            k = old_pos[r]
            vec = (lambda k=k: {t: old_vectors[t][k] for t in all_taps})
        elif rel in done_rows:
            sha, feats = done_rows[rel]
            vec = (lambda feats=feats: feats)
        elif rel in keep_skipped:
            skipped.append((rel, *keep_skipped[rel]))
            continue
        elif rel in done_failed:
            skipped.append((rel, *done_failed[rel]))
            continue
        else:  # pragma: no cover - every image is in exactly one of the above
            raise StoreError(f"internal error: {rel} was neither extracted nor skipped")
        rows.append({"path": rel, "label": int(manifest.labels[i]), "sha256": sha,
                     "size": int(manifest.sizes[i]), "mtime_ns": int(manifest.mtimes[i]),
                     "vectors": vec})
    # Entries of the tree that were never candidates (hidden, not images, empty classes).
    skipped.extend((rel, "", reason) for rel, reason in manifest.excluded)
    previous = {}
    if existing is not None:
        _, index = existing
        previous = {p: int(c) for p, c in zip(index.paths, index.split)}
    split = assign_split([r["path"] for r in rows], [r["label"] for r in rows],
                         seed=cfg.seed, fractions=cfg.fractions, previous=previous)
    for r, code in zip(rows, split):
        r["split"] = int(code)
    created = st.now_iso()
    if existing is not None:
        created = st.FeatureStore(path).attrs.get("created", created)
    attrs = {
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
        "split_seed": cfg.seed,
        "split_fractions": list(cfg.fractions),
        "versions": st.library_versions(),
        "created": created,
        "updated": st.now_iso(),
        "images_per_second": (n_forward / forward_seconds) if forward_seconds else 0.0,
    }
    channels = {t: spec.tap(t).channels for t in all_taps}
    st.write_store(path, config=config, attrs=attrs, classes=manifest.classes, rows=rows,
                   skipped=[(p, s, r) for p, s, r in skipped], taps=channels, dtype=cfg.dtype)
    journal.discard()
    seconds = time.perf_counter() - t_start
    return ExtractSummary(
        path=path, n_images=len(rows), n_extracted=n_forward, n_reused=len(reuse),
        n_resumed=len(resumed), skipped=[(p, r) for p, _s, r in skipped], seconds=seconds,
        forward_seconds=forward_seconds,
        images_per_second=(n_forward / forward_seconds) if forward_seconds else 0.0,
        runtime=cfg.runtime, precision=cfg.precision,
    )


def network_key(spec, weights: str, taps, pool: str) -> str:
    """Names the cut network by what shapes it (backbone, weights identity, taps,
    pooling, preprocessing), so a cached onnx/openvino export is used without
    building the torch model at all."""
    return st.config_key({"backbone": spec.name, "weights": weights_identity(spec, weights),
                          "taps": list(taps), "pooling": pool,
                          "preprocessing": spec.preprocessing.to_dict()})


def _sha_or_none(path):
    """SHA-256 of ``path``, or None when it cannot be read (it is then retried)."""
    try:
        return file_sha256(path)
    except OSError:
        return None


def _default_workers() -> int:
    cpus = os.cpu_count() or 1
    return 1 if cpus <= 2 else min(8, cpus - 1)


def _run_forward(cfg, spec, taps, manifest, remaining, journal, device_kind):
    """Extract ``remaining`` manifest rows batch by batch into the journal."""
    from tqdm.auto import tqdm

    from .backbones import load_backbone
    from .extract import BatchLoader, ImageDataset, build_extractor, iter_features, resolve_device
    from .runtimes import make_runner

    device = resolve_device(cfg.device)
    workers = _default_workers() if cfg.workers is None else cfg.workers
    dataset = ImageDataset(manifest.root, [manifest.paths[i] for i in remaining], remaining,
                           spec.preprocessing)
    loader = BatchLoader(dataset, cfg.batch_size, workers, pin_memory=device.type == "cuda")
    # Start the decoding threads first: they fill their queue while the runtime loads.
    batches = iter(loader)

    def build():
        return build_extractor(load_backbone(spec.name, cfg.weights), taps, cfg.pool)

    runner = make_runner(build, cfg.runtime, device, cfg.batch_size, spec.preprocessing,
                         precision=cfg.precision, threads=cfg.threads,
                         key=network_key(spec, cfg.weights, taps, cfg.pool))
    seq = journal.next_seq()
    forward_seconds, n_forward = 0.0, 0
    bar = tqdm(total=len(remaining), unit="img", desc=f"extract {spec.name}",
               disable=not cfg.progress)
    t0 = time.perf_counter()
    try:
        for res in iter_features(runner, batches, device, taps):
            paths = [manifest.paths[i] for i in res.indices]
            failures = [(manifest.paths[i], sha, reason) for i, sha, reason in res.failures]
            for rel, _sha, reason in failures:
                log.warning("skipped %s: %s", rel, reason)
            stamps = [(int(manifest.sizes[i]), int(manifest.mtimes[i]))
                      for i in list(res.indices) + [f[0] for f in res.failures]]
            journal.write(seq, paths, res.shas, res.features, failures, stamps)
            seq += 1
            forward_seconds += res.seconds
            n_forward += len(paths)
            bar.update(len(paths) + len(failures))
    finally:
        bar.close()
    return time.perf_counter() - t0, n_forward
