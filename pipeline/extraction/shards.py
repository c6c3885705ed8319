"""Extraction across processes, GPUs and machines: shards under torchrun, then one merge.

``torchrun --nproc_per_node=K cli.py extract ...`` starts K copies of the
command; :func:`launch_extract` (what the CLI calls) sees torchrun's
``RANK`` / ``WORLD_SIZE`` / ``LOCAL_RANK`` and runs :func:`run_extract_torchrun`.
Every rank scans the same folder into the same manifest and takes every
``world``-th batch of it, starting at batch ``rank`` (:func:`shard_manifest`),
so its batches are the very batches one process would form; it extracts them
with the ordinary :func:`~pipeline.extraction.job.run_extract` on its own
device (``cuda:LOCAL_RANK`` when CUDA is there, else the CPU) into its own
shard store ``<store>.shards/rank-KofN.h5``, so the per-store journal gives every
shard its own resume.  After a collective check that every rank finished,
rank 0 merges the shards into the final store (:func:`merge_shards`): rows in
manifest order, the split assigned over all rows exactly as a single process
does, the same datasets and attributes, so its contents equal a
single-process run over the same images (within the runtime's tolerance; the
eager runtime gives the same vectors when the intra-op thread count is the
same; see docs/scale-out.md).  Each rank's runtime gets the node's cores
divided among its ranks.

A shard that fails or whose rank is killed is kept as its journal; finished
shards are kept as stores until the merge succeeds.  Re-running the same
torchrun command does no forward pass for finished shards, and
``cli.py extract --shard K/N`` re-runs one rank alone without torchrun;
``--merge-shards N`` then merges.  An existing final store seeds each new
shard with its rows, so added or changed images are all a re-run extracts.

The process group (gloo on CPU, NCCL on CUDA) only carries small status
messages; vectors travel through the shard files, so with several machines
``--out`` must be on a filesystem every node sees.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import logging
import os
import re
import time
import traceback
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from ..configs import ExtractConfig
from ..data.manifest import Manifest
from ..errors import StoreError, UsageError, WorkbenchError, opt, program
from ..store.hdf5 import FeatureStore, RowReader, StoreContents, now_iso, write_store
from ..store.lock import write_lock
from .job import ExtractSummary, extract_manifest, run_extract
from .reuse import check_existing
from .runtimes import cuda_available_cheap
from .target import build_manifest, resolved_lines, split_spec, store_path
from .writer import write_split_store

log = logging.getLogger(__name__)

#: Seconds a rank waits at the end for the slowest rank before torch.distributed gives up.
TIMEOUT_ENV = "WORKBENCH_DIST_TIMEOUT"
DEFAULT_TIMEOUT_S = 24 * 3600
#: Store attributes that :func:`pipeline.store.hdf5.write_store` sets itself.
_OWN_ATTRS = ("format", "format_version", "config", "config_key", "fingerprint", "taps",
              "n_images", "n_skipped")


# ------------------------------------------------------------------ shards


def parse_shard(text: str) -> tuple[int, int]:
    """``"K/N"`` -> ``(K, N)``: rank K (0-based) of N; :class:`UsageError` otherwise."""
    m = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", str(text))
    if not m or int(m.group(2)) < 1 or int(m.group(1)) >= int(m.group(2)):
        raise UsageError(
            f"{opt('shard', repr(text))} is not RANK/WORLD with 0 <= RANK < WORLD; e.g. "
            f"{opt('shard', '1/4')} extracts the second of four shards", param="shard")
    return int(m.group(1)), int(m.group(2))


def shard_manifest(manifest: Manifest, rank: int, world: int, block: int = 1) -> Manifest:
    """Rank ``rank``'s share of ``manifest``: the row blocks ``rank::world`` of ``block`` rows.

    With ``block`` = the batch size, a fresh shard's batches are exactly the
    batches a single process forms (same members, same sizes, the remainder
    batch included), and CPU kernels can give different last bits for another
    batch size, so the vectors stay equal bit for bit.
    """
    starts = np.arange(rank * block, len(manifest), world * block)
    keep = (starts[:, None] + np.arange(block)[None, :]).ravel()
    keep = keep[keep < len(manifest)]
    return manifest.subset(keep)


def shard_store_path(store_path: Path, rank: int, world: int) -> Path:
    """``<store>.shards/rank-KofN.h5``: where rank K of N writes its shard store."""
    return Path(str(store_path) + ".shards") / f"rank-{rank}of{world}.h5"






def _store_attrs(store: FeatureStore) -> dict:
    return {k: v for k, v in store.attrs.items() if k not in _OWN_ATTRS}


def _seed_shard(final: Path, shard: Path, paths) -> int:
    """Write ``shard`` from the rows of the finished store ``final`` whose path is in ``paths``.

    Gives a new shard the vectors the final store already holds, so the
    shard's own incremental extraction only computes new or changed images.
    Returns the number of rows copied.
    """
    store = FeatureStore(final)
    config, index = store.config, store.index()
    wanted = set(paths)
    keep = [r for r, p in enumerate(index.paths) if p in wanted]
    skipped = [(p, sha, reason) for p, (sha, reason) in index.skipped.items() if p in wanted]
    if not keep and not skipped:
        return 0
    with RowReader([final], store.taps) as reader:
        rows = [{"path": index.paths[r], "label": int(index.labels[r]),
                 "split": int(index.split[r]), "sha256": index.sha256[r],
                 "size": int(index.size[r]), "mtime_ns": int(index.mtime_ns[r]),
                 "vectors": (lambda r=r: reader.get(0, r))} for r in keep]
        shard.parent.mkdir(parents=True, exist_ok=True)
        write_store(shard, StoreContents(config, _store_attrs(store), store.classes, rows,
                                         skipped, dict(store.tap_channels), reader.dtype(0)))
    return len(keep)


def extract_shard(cfg: ExtractConfig, rank: int, world: int) -> ExtractSummary:
    """Bring shard ``rank`` of ``world`` up to date in ``<store>.shards/`` (no merge).

    The first time, a shard is seeded from the finished store (if there is
    one with rows of this shard), so only new or changed images are extracted.
    """
    final = store_path(cfg)
    shard = shard_store_path(final, rank, world)
    if not cfg.overwrite and final.is_file():
        with write_lock(shard):
            if not shard.exists():
                part = shard_manifest(build_manifest(cfg), rank, world, cfg.batch_size)
                n = _seed_shard(final, shard, part.paths)
                log.info("shard %d/%d: %d rows taken from %s", rank, world, n, final)
    part = shard_manifest(build_manifest(cfg), rank, world, cfg.batch_size)
    return extract_manifest(cfg, part, shard)


def merge_shards(cfg: ExtractConfig, world: int, shard_summaries=None) -> ExtractSummary:
    """Assemble the ``world`` shard stores of ``cfg`` into its final store, then delete them.

    Rows follow the manifest order of a fresh scan; the split is assigned
    over all rows (keeping the codes of an existing final store with the
    same configuration), so the result equals what one process writes.
    ``shard_summaries`` (one per rank) only feed the returned totals.
    """
    t0 = time.perf_counter()
    final = store_path(cfg)
    shards = [shard_store_path(final, k, world) for k in range(world)]
    stores = _finished_shards(final, shards, world)
    config, taps = stores[0].config, stores[0].taps
    manifest = build_manifest(cfg)
    existing = check_existing(final, config, cfg.overwrite, manifest.root)
    previous = {p: int(c) for p, c in zip(existing.paths, existing.split_codes)} \
        if existing else {}
    created = existing.attrs.get("created") if existing else None
    indexes = [s.index() for s in stores]
    rows, skipped = _merged_rows(manifest, indexes)
    attrs = _store_attrs(stores[0])
    attrs.update(created=created or min(s.attrs.get("created", now_iso()) for s in stores),
                 updated=now_iso(), images_per_second=float(
                     sum(s.attrs.get("images_per_second", 0.0) or 0.0 for s in stores)))
    with write_lock(final), RowReader(shards, taps) as reader:
        for r in rows:
            r["vectors"] = (lambda kr=r.pop("shard"): reader.get(*kr))
        contents = StoreContents(config, attrs, manifest.classes, rows, skipped,
                                 dict(stores[0].tap_channels), config["dtype"])
        write_split_store(final, contents, manifest, split_spec(cfg, manifest), previous,
                          existing)
    for p in shards:
        p.unlink()
        Path(str(p) + ".lock").unlink(missing_ok=True)
    with contextlib.suppress(OSError):
        shards[0].parent.rmdir()  # only if nothing else (another world size) is in there
    log.info("merged %d shards into %s (%d rows)", world, final, len(rows))
    return _merged_summary(final, rows, skipped, shard_summaries or [], t0,
                           resolved_lines(cfg, taps))


def _finished_shards(final: Path, shards, world: int) -> list:
    """The shard stores, all there and all of one configuration, or a :class:`StoreError`."""
    missing = [k for k, p in enumerate(shards) if not p.is_file()]
    if missing:
        raise StoreError(
            f"cannot merge {final.name}: shard(s) {', '.join(f'{k}/{world}' for k in missing)} "
            f"are not finished in {shards[0].parent} (with several machines, {opt('out')} "
            f"must be on a filesystem all of them see); extract them with `{program()} "
            f"extract {opt('shard', f'K/{world}')}` and the same options, or re-run the "
            "torchrun command", param="shard")
    stores = [FeatureStore(p) for p in shards]
    for k, s in enumerate(stores[1:], 1):
        if s.config != stores[0].config or s.taps != stores[0].taps:
            raise StoreError(
                f"shard {k}/{world} ({s.path}) was extracted with another configuration or "
                f"other taps than shard 0/{world}; re-extract it with the same options")
    return stores


def _merged_rows(manifest: Manifest, indexes):
    """``(rows, skipped)`` in manifest order; each row names its ``shard`` as (k, row)."""
    where, failed = {}, {}
    for k, index in enumerate(indexes):
        for r, p in enumerate(index.paths):
            where[p] = (k, r)
        failed.update(index.skipped)
    rows, skipped, uncovered = [], [], []
    for i, rel in enumerate(manifest.paths):
        if rel in where:
            k, r = where[rel]
            index = indexes[k]
            rows.append({"path": rel, "label": int(manifest.labels[i]), "sha256": index.sha256[r],
                         "size": int(index.size[r]), "mtime_ns": int(index.mtime_ns[r]),
                         "shard": (k, r)})
        elif rel in failed:
            skipped.append((rel, *failed[rel]))
        else:
            uncovered.append(rel)
    if uncovered:
        raise StoreError(
            f"{len(uncovered)} image(s) of {manifest.root} are in no shard (e.g. "
            f"{uncovered[0]}): the folder changed after the shards were extracted; re-run the "
            "extraction (finished shards only extract what is new)")
    return rows, skipped


def _merged_summary(final, rows, skipped, sums, t0, resolved) -> ExtractSummary:
    n_extracted = sum(s.get("n_extracted", 0) for s in sums)
    wall = max((s.get("seconds", 0.0) for s in sums), default=0.0)
    forward = max((s.get("forward_seconds", 0.0) for s in sums), default=0.0)
    return ExtractSummary(
        path=final, n_images=len(rows), n_extracted=n_extracted,
        n_reused=sum(s.get("n_reused", 0) for s in sums) if sums else len(rows),
        n_resumed=sum(s.get("n_resumed", 0) for s in sums),
        skipped=[(p, reason) for p, _sha, reason in skipped],
        seconds=wall + time.perf_counter() - t0, forward_seconds=forward,
        images_per_second=n_extracted / forward if forward else 0.0,
        up_to_date=bool(sums) and all(s.get("up_to_date") for s in sums), resolved=resolved)


# ------------------------------------------------------------------ torchrun


@dataclass(frozen=True)
class TorchrunEnv:
    """What torchrun (or any launcher that sets the same variables) tells each process."""

    rank: int
    world: int
    local_rank: int
    local_world: int


def torchrun_env(environ=None) -> TorchrunEnv | None:
    """The torchrun variables of this process, or None when not started by a launcher."""
    env = os.environ if environ is None else environ
    if "WORLD_SIZE" not in env or "RANK" not in env:
        return None
    try:
        world, rank = int(env["WORLD_SIZE"]), int(env["RANK"])
        local_rank = int(env.get("LOCAL_RANK", rank))
        local_world = int(env.get("LOCAL_WORLD_SIZE", world))
    except ValueError:
        raise UsageError(
            f"torchrun variables WORLD_SIZE={env.get('WORLD_SIZE')!r} RANK={env.get('RANK')!r} "
            "are not integers; start the command with torchrun or unset them") from None
    return TorchrunEnv(rank, world, local_rank, local_world)


def _rank_device(device: str, local_rank: int) -> str:
    """``auto``/``cuda`` -> ``cuda:LOCAL_RANK`` when CUDA is there; ``cpu``, ``cuda:N`` as given."""

    if device == "cuda" or (device == "auto" and cuda_available_cheap()):
        return f"cuda:{local_rank}"
    return "cpu" if device == "auto" else device


def _rank_workers(workers, local_world: int) -> int:
    """Decoding threads per rank: the node's cores shared among its ranks."""
    if workers is not None:
        return workers
    per_rank = (os.cpu_count() or 1) // max(1, local_world)
    return 0 if per_rank <= 1 else 1 if per_rank <= 2 else min(8, per_rank - 1)


def _rank_threads(threads, local_world: int) -> int | None:
    """Runtime threads per rank: the node's cores shared among its ranks (a fast
    runtime left to its default would run every core in every rank)."""
    if threads is not None or local_world <= 1:
        return threads
    return max(1, (os.cpu_count() or 1) // local_world)


def run_extract_torchrun(cfg: ExtractConfig, env: TorchrunEnv) -> ExtractSummary:
    """One rank of a torchrun extraction: its shard, a status exchange, rank 0 merges.

    Returns the rank's shard summary, or on rank 0 the merged store's summary.
    A rank that fails makes every rank raise (naming the failed ranks) once the
    others are done, so nothing is merged; finished shards stay for the re-run.
    """
    import torch
    import torch.distributed as dist

    device = _rank_device(cfg.device, env.local_rank)
    backend = "nccl" if device.startswith("cuda") else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(torch.device(device))
    timeout = float(os.environ.get(TIMEOUT_ENV, DEFAULT_TIMEOUT_S))
    dist.init_process_group(backend, timeout=_dt.timedelta(seconds=timeout))
    try:
        shard_cfg = replace(cfg, device=device, progress=cfg.progress and env.rank == 0,
                            workers=_rank_workers(cfg.workers, env.local_world),
                            threads=_rank_threads(cfg.threads, env.local_world))
        log.info("rank %d/%d: extracting shard on %s (%s)", env.rank, env.world, device, backend)
        error = None
        try:
            summary = extract_shard(shard_cfg, env.rank, env.world)
            status = {"ok": True, "n_extracted": summary.n_extracted,
                      "n_reused": summary.n_reused, "n_resumed": summary.n_resumed,
                      "seconds": summary.seconds, "forward_seconds": summary.forward_seconds,
                      "up_to_date": summary.up_to_date}
        except Exception as exc:  # reported to every rank before anyone gives up
            error = exc
            if not isinstance(exc, WorkbenchError):
                log.error("rank %d failed:\n%s", env.rank, traceback.format_exc())
            status = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
        statuses = [None] * env.world
        dist.all_gather_object(statuses, status)
        failed = [(k, s["error"]) for k, s in enumerate(statuses) if not s["ok"]]
        same_everywhere = len(failed) == env.world and len({m for _, m in failed}) == 1
        if error is not None and (not isinstance(error, WorkbenchError) or same_everywhere):
            raise error   # e.g. a bad --data: one message, not one per rank
        if failed:
            final = store_path(cfg)
            raise StoreError(
                "rank(s) " + "; ".join(f"{k}: {msg}" for k, msg in failed)
                + f". Finished shards are kept in {shard_store_path(final, 0, env.world).parent}; "
                "re-run the same command (finished shards do no forward pass) or one rank alone "
                f"with `{program()} extract {opt('shard', f'K/{env.world}')}` and the same "
                "options")
        if env.rank == 0:
            return merge_shards(cfg, env.world, statuses)
        return summary
    finally:
        try:  # leave together: a rank closing its connections while rank 0
            dist.barrier()  # still merges can make gloo abort that rank
        except Exception:  # noqa: BLE001 - the group is broken; nothing left to wait for
            pass
        dist.destroy_process_group()


def launch_extract(cfg: ExtractConfig, shard: str | None = None,
                   merge_world: int | None = None) -> ExtractSummary:
    """What ``cli.py extract`` runs: one process, one rank under torchrun, one shard, or a merge.

    ``shard`` (``"K/N"``) extracts only rank K's shard, without torchrun and
    without merging; ``merge_world`` merges N finished shards.
    """
    env = torchrun_env()
    distributed = env is not None and env.world > 1
    if shard is not None and merge_world is not None:
        raise UsageError(f"pass either {opt('shard', 'K/N')} (extract one shard) or "
                         f"{opt('merge_shards', 'N')}, not both", param="shard")
    if distributed and (shard is not None or merge_world is not None):
        raise UsageError(f"{opt('shard')} and {opt('merge_shards')} are for running without "
                         "torchrun; under torchrun every rank takes its shard from RANK and "
                         "WORLD_SIZE", param="shard")
    if merge_world is not None:
        if merge_world < 1:
            raise UsageError(f"{opt('merge_shards')} must be >= 1, got {merge_world}",
                             param="merge_shards")
        return merge_shards(cfg, merge_world)
    if shard is not None:
        return extract_shard(cfg, *parse_shard(shard))
    if distributed:
        return run_extract_torchrun(cfg, env)
    return run_extract(cfg)
