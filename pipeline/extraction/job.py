"""The ``extract`` job: image folder -> feature store, incremental and resumable.

:func:`run_extract` is what ``workbench extract`` calls.  It scans the
folder (:mod:`.target`: the configuration resolved, the manifest, the store's
path and key), compares it with the existing store, opened once for the whole
run (:mod:`.reuse`: same configuration, reuse unchanged images; changed or new
images are extracted alone), resumes an interrupted run from its journal, runs
one forward pass per batch for every requested tap
(:func:`pipeline.extraction.features.extract_features`), checks the disk has
room (:mod:`.cost`) and writes the finished store atomically (:mod:`.writer`,
through :mod:`pipeline.store`).  torch is only imported once there is
something to extract, so an up-to-date re-run is fast.

:func:`extract_manifest` does the same for a manifest and store path the
caller chose; the torchrun shards (:mod:`.shards`) use it for their share of
the images.  This module knows nothing of shards.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

from ..balance import IMBALANCE_RATIO, class_ratio
from ..configs import ExtractConfig
from ..data.manifest import Manifest
from ..errors import StoreError, program
from ..files import human_bytes, output_folder, writing_into
from ..store.hdf5 import FeatureStore, StoreContents, config_key, now_iso
from ..store.journal import Journal
from ..store.lock import write_lock
from .cost import check_free_space, estimate_store_bytes, measured_cost
from .reuse import ReusePlan, assemble_rows, check_existing, labels_changed, plan_reuse
from .target import (
    build_manifest,
    resolve,
    resolved_lines,
    split_spec,
    store_config,
    store_path,
    validate,
)
from .writer import store_attrs, write_split_store

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
    #: what the pooling and the taps resolved to, and why ("pooling: cls (the backbone's own:
    #: ...)", "taps: ..."), as lines
    resolved: list = field(default_factory=list)
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
        lines += self.resolved
        lines += [f"WARNING: {n}" for n in self.notes if not n.startswith(("layout:",
                                                                           "columns:"))]
        lines += [n for n in self.notes if n.startswith("columns:")]
        return lines


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
    cfg, spec, taps, _device_kind = resolve(cfg)
    config = store_config(cfg, spec)
    output_folder(path)
    need = estimate_store_bytes(manifest.paths, spec.widths(taps, cfg.pool), cfg.dtype)
    journal = f"{path}.partial"
    on_full = (f"the store needs about {human_bytes(need)}; the batches already extracted "
               f"are kept in {journal} and the next run resumes from them")
    with writing_into(path.parent, on_full=on_full), write_lock(path):
        old = check_existing(path, config, cfg.overwrite, manifest.root)
        plan = plan_reuse(old, manifest, spec, taps)
        if plan.up_to_date and not labels_changed(old, manifest, split_spec(cfg, manifest)):
            log.info("%s is up to date (%d images)", path, len(plan.reuse))
            return _summary(old, manifest, t_start, cfg, up_to_date=True,
                            n_reused=len(plan.reuse))  # the store as it is, opened once
        return _extract_and_write(cfg, spec, manifest, config, path, plan, t_start, old)


def _summary(store: FeatureStore, manifest: Manifest, t_start: float, cfg, **counts):
    """The :class:`ExtractSummary` of the finished ``store`` (which it keeps, opened)."""
    fields = {"n_extracted": 0, "n_reused": 0, "n_resumed": 0, **counts}
    return ExtractSummary(
        path=store.path, n_images=len(store), skipped=fields.pop("skipped", store.skipped),
        seconds=time.perf_counter() - t_start, runtime=cfg.runtime, precision=cfg.precision,
        notes=list(manifest.notes) + list(store.split_info.get("notes") or []),
        class_counts=store.split_class_counts(), split=store.split_info, store=store,
        resolved=resolved_lines(cfg, store.taps), **fields)


def _extract_and_write(cfg, spec, manifest, config, path, plan: ReusePlan, t_start,
                       old: FeatureStore | None):
    """Journal the forward passes of ``plan.todo``, then write the finished store (``old``:
    the store at ``path`` as :func:`extract_manifest` opened it, or None)."""
    widths = spec.widths(plan.taps, cfg.pool)
    journal = Journal(path, config_key(dict(config, taps=list(plan.taps))), widths)
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
    check_free_space(path, journal, rows, skipped, widths, cfg.dtype)
    speed = (n_forward / forward_seconds) if forward_seconds else 0.0
    created = old.attrs.get("created") if old is not None else None
    attrs = store_attrs(cfg, spec, config, manifest, created or now_iso(), speed)
    attrs["cost"] = measured_cost(spec, plan.taps, cfg.pool, old, cfg.tta)
    contents = StoreContents(config, attrs, manifest.classes, rows, skipped, widths, cfg.dtype)
    write_split_store(path, contents, manifest, split_spec(cfg, manifest), plan.previous_split,
                      old)
    journal.discard()
    return _summary(FeatureStore(path), manifest, t_start, cfg, n_extracted=n_forward,
                    n_reused=len(plan.reuse), n_resumed=len(resumed),
                    skipped=[(p, r) for p, _s, r in skipped],
                    forward_seconds=forward_seconds, images_per_second=speed)


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
    try:  # closed in finally, not by the garbage collector: see extract_features
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
            _advance(bar, len(paths) + len(failures))
    finally:
        batches.close()
        bar.close()
    return time.perf_counter() - t0, n_forward


def _advance(bar, n: int) -> None:
    """Move the progress ``bar`` on by ``n`` images.  The step that finishes it is not
    drawn: ``close`` draws the finished bar, and a step drawn as well would print that
    final line twice wherever a carriage return does not overwrite it (stderr piped to
    a file or ``| cat``)."""
    if bar.n + n < bar.total:
        bar.update(n)
    else:
        bar.n += n
