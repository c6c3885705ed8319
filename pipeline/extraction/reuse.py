"""What an extraction can reuse from the store it updates, image by image.

:func:`check_existing` opens the store at the target path once for the whole run
(when its key matches and it holds the same data folder's images; a damaged one, or
another folder's, is moved aside under ``overwrite``);
:func:`plan_reuse` compares it with the data's manifest and says which rows are
reused (same path, size and time, or same SHA-256), which unusable files are
still the same, and which images need a forward pass (a :class:`ReusePlan`);
:func:`labels_changed` says whether the index must be rewritten although no
vector changes; :func:`assemble_rows` lays out the finished store's rows, old
vectors and new, in manifest order.  Used by :mod:`pipeline.extraction.job`
and, for the merge, :mod:`pipeline.extraction.shards`.
"""

from __future__ import annotations

import functools
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..data.manifest import Manifest
from ..data.partition import SplitSpec
from ..errors import CorruptStoreError, StoreError, opt, program
from ..files import sha256_file
from ..store.hdf5 import FeatureStore
from .target import comparable

log = logging.getLogger(__name__)


def check_existing(path: Path, config: dict, overwrite: bool,
                   data_root: Path | None = None) -> FeatureStore | None:
    """The store at ``path`` (opened once for the whole run) when it has ``config`` and
    holds the images of ``data_root``; None when there is none (or ``overwrite``);
    :class:`StoreError` naming the difference otherwise.

    A store that cannot be read (truncated, damaged, a dataset missing, not
    written by this tool) is refused, unless ``overwrite``: it is then moved
    aside to ``<name>.corrupt-<time>`` (never deleted) and a new one is written.
    A store of another data folder (two folders of one name, ``siteA/photos`` and
    ``siteB/photos``, share a store name) is never updated in place: refused, unless
    ``overwrite``, which moves it aside to ``<name>.replaced-<time>``
    (:func:`check_data_root`).
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
    if existing is not None and data_root is not None \
            and not check_data_root(existing, Path(data_root), overwrite):
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


def check_data_root(existing: FeatureStore, data_root: Path, overwrite: bool) -> bool:
    """Whether ``existing`` holds the images of ``data_root`` (then it may be updated).

    Another folder's store is refused (:class:`StoreError` naming both folders and the
    fixes); under ``overwrite`` it is moved aside to ``<name>.replaced-<time>``, never
    deleted, and False says a new store is written."""
    stored = existing.attrs.get("data_root")
    if not stored or Path(stored) == data_root.resolve():
        return True
    path = existing.path
    if not overwrite:
        raise StoreError(
            f"{path} holds the features of the images in {stored}, not of {data_root.resolve()} "
            f"(another folder of the same name); updating it would replace those features. "
            f"Pass {opt('out')} to write this folder's store elsewhere (e.g. "
            f"{opt('out', str(Path(path).parent / data_root.resolve().parent.name))}), or "
            f"{opt('overwrite', 'True')} to move the old store aside to "
            f"{Path(path).name}.replaced-<time> and extract anew", param="overwrite")
    aside = move_aside(Path(path), "replaced")
    log.warning("%s held the features of %s; moved it aside to %s and writing a new store "
                "for %s", path, stored, aside, data_root.resolve())
    return False


def move_aside(path: Path, why: str = "corrupt") -> Path:
    """Rename a store to ``<name>.<why>-<UTC time>`` beside it (an unreadable one:
    ``corrupt``, another folder's: ``replaced``); return that."""
    stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
    aside = path.with_name(f"{path.name}.{why}-{stamp}")
    n = 1
    while aside.exists():
        aside, n = path.with_name(f"{path.name}.{why}-{stamp}-{n}"), n + 1
    os.replace(path, aside)
    return aside


def labels_changed(store: FeatureStore, manifest: Manifest, spec: SplitSpec) -> bool:
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


def assemble_rows(manifest: Manifest, plan: ReusePlan, done_rows: dict, done_failed: dict,
                  old: FeatureStore | None):
    """``(rows, skipped)`` of the finished store in manifest order: rows as
    :class:`pipeline.store.hdf5.StoreContents` holds them (their vectors read from ``old``
    or the journal's ``done_rows``), skipped files as ``(path, sha256, reason)``."""
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


def _sha_or_none(path):
    """SHA-256 of ``path``, or None when it cannot be read (it is then retried)."""
    try:
        return sha256_file(path)
    except OSError:
        return None
