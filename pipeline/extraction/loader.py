"""Decoding batches ahead of the network: one file -> one crop, failures as data.

:class:`ImageDataset` decodes one file and hands failures on as data, not
exceptions; :class:`BatchLoader` decodes batches ahead in threads.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..data.decode import ImageDecodeError, load_array, resize_center_crop
from ..files import read_regular


@dataclass
class Decoded:
    index: int
    image: np.ndarray | None   # (3, S, S) uint8, or None when unusable
    sha256: str
    reason: str = ""


class ImageDataset(torch.utils.data.Dataset):
    """Decodes ``root / paths[i]`` for row ``indices[i]``; failures come back with a reason."""

    def __init__(self, root, paths, indices, preprocessing, hash_files: bool = True):
        self.root = Path(root)
        self.paths = list(paths)
        self.indices = list(indices)
        self.pre = preprocessing
        self.hash_files = hash_files

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, i):
        path = self.root / self.paths[i]
        sha = ""
        try:
            data = read_regular(path)  # read once: hashed and decoded from memory
        except OSError as exc:  # vanished or unreadable between scan and decode
            return Decoded(self.indices[i], None, sha, f"cannot read file ({exc})")
        if self.hash_files:
            sha = hashlib.sha256(data).hexdigest()
        try:
            target = int(self.pre.input_size / self.pre.crop_pct)
            arr = load_array(path, target_short_side=target, data=data)
            arr = resize_center_crop(arr, self.pre.input_size, self.pre.crop_pct,
                                     self.pre.interpolation)
            return Decoded(self.indices[i], arr, sha)
        except ImageDecodeError as exc:
            return Decoded(self.indices[i], None, sha, exc.reason)


def collate(items):
    """Stack decodable images; keep failures aside: ``(indices, batch, shas, failures)``."""
    ok = [d for d in items if d.image is not None]
    failures = [(d.index, d.sha256, d.reason) for d in items if d.image is None]
    batch = torch.from_numpy(np.stack([d.image for d in ok])) if ok else None
    return [d.index for d in ok], batch, [d.sha256 for d in ok], failures


class BatchLoader:
    """Batches of a dataset in order, decoded by ``workers`` threads ahead of use.

    Iterating yields ``collate``d batches of ``batch_size`` consecutive items.
    With ``workers >= 1``, that many threads each build whole batches, at most
    ``prefetch`` batches ahead of the consumer; ``0`` decodes in the consumer's
    thread.  Threads, not processes: the decoders (libjpeg-turbo, torch's
    resize) release the GIL, and on a 2-core machine a decoding process cost
    about 1.5 CPU-ms more per image (moving each batch between processes, and
    the runtime's threads losing their cores to it) than a thread in the
    process that runs the network.  ``pin_memory`` pins each batch (for CUDA).
    """

    def __init__(self, dataset, batch_size: int, workers: int = 1, prefetch: int = 4,
                 pin_memory: bool = False):
        self.dataset = dataset
        self.batch_size = batch_size
        self.workers = workers
        self.prefetch = max(prefetch, workers)
        self.pin_memory = pin_memory

    def __len__(self):
        return -(-len(self.dataset) // self.batch_size)

    def _batch(self, start: int):
        stop = min(start + self.batch_size, len(self.dataset))
        indices, batch, shas, failures = collate([self.dataset[i] for i in range(start, stop)])
        if self.pin_memory and batch is not None:
            batch = batch.pin_memory()
        return indices, batch, shas, failures

    def __iter__(self):
        """Starts decoding at once (not at the first ``next``), so it overlaps
        whatever the caller does before asking for the first batch."""
        starts = range(0, len(self.dataset), self.batch_size)
        if self.workers < 1:
            return (self._batch(start) for start in starts)
        from collections import deque
        from concurrent.futures import ThreadPoolExecutor

        # torch's resize would otherwise start its own thread team in every
        # decoding thread, competing with the network's.  A thread already
        # running (the caller's) keeps its own count; for threads started
        # later 1 becomes the default, which _in_order restores at the end.
        threads = torch.get_num_threads()
        pool = ThreadPoolExecutor(self.workers, thread_name_prefix="decode",
                                  initializer=torch.set_num_threads, initargs=(1,))
        upcoming = iter(starts)
        pending = deque(pool.submit(self._batch, start)
                        for _, start in zip(range(self.prefetch), upcoming))
        return self._in_order(pool, pending, upcoming, threads)

    def _in_order(self, pool, pending, upcoming, threads):
        try:
            while pending:
                batch = pending.popleft().result()
                nxt = next(upcoming, None)
                if nxt is not None:
                    pending.append(pool.submit(self._batch, nxt))
                yield batch
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
            torch.set_num_threads(threads)  # the default for threads started later
