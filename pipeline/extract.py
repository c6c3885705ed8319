"""The batched forward pass: uint8 images in, pooled tap vectors out.

:class:`TapExtractor` wraps a backbone's stages, cut after the deepest
requested tap, with the weights' normalisation as its first operation and a
pooling of each tapped feature map as its last, so one call computes every
tap.  :class:`ImageDataset` decodes one file and hands failures on as data,
not exceptions; :class:`BatchLoader` decodes batches ahead in threads.
:func:`iter_features` runs the loop; it touches no output file (the store
does that).
"""

from __future__ import annotations

import hashlib
import logging
import time
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn as nn

from .data import ImageDecodeError, load_array, resize_center_crop
from .errors import DeviceError, UsageError

log = logging.getLogger(__name__)

POOLINGS = ("avg", "max", "gem")
GEM_P = 3.0


def pool(x: torch.Tensor, how: str) -> torch.Tensor:
    """Global pooling of ``(N, C, H, W)`` to ``(N, C)``; ``gem`` is generalised mean, p=3."""
    if how == "avg":
        return x.mean(dim=(2, 3))
    if how == "max":
        return x.amax(dim=(2, 3))
    if how == "gem":
        return x.clamp(min=1e-6).pow(GEM_P).mean(dim=(2, 3)).pow(1.0 / GEM_P)
    raise UsageError(f"unknown pooling {how!r}; valid: {', '.join(POOLINGS)}")


class TapExtractor(nn.Module):
    """Normalise uint8 images, run the stages up to the deepest tap, pool each tap.

    ``forward(images)`` takes ``(N, 3, H, W)`` uint8 (or float in [0, 255]) and
    returns a tuple of ``(N, C_tap)`` float tensors in the order of ``taps``.
    """

    def __init__(self, stages, tap_stages: dict, preprocessing, pooling: str = "avg"):
        super().__init__()
        if pooling not in POOLINGS:
            raise UsageError(f"unknown pooling {pooling!r}; valid: {', '.join(POOLINGS)}")
        names = [name for name, _ in stages]
        missing = [s for s in tap_stages.values() if s not in names]
        if missing:
            raise UsageError(f"stages {missing} are not in the network; stages: {names}")
        deepest = max(names.index(s) for s in tap_stages.values())
        self.stage_names = names[: deepest + 1]
        self.stages = nn.ModuleList(m for _, m in stages[: deepest + 1])
        self.tap_names = list(tap_stages)
        self.tap_stages = dict(tap_stages)
        self.pooling = pooling
        mean = torch.tensor(preprocessing.mean, dtype=torch.float32).view(1, 3, 1, 1) * 255.0
        std = torch.tensor(preprocessing.std, dtype=torch.float32).view(1, 3, 1, 1) * 255.0
        self.register_buffer("mean", mean, persistent=False)
        self.register_buffer("std", std, persistent=False)

    def forward(self, images):
        x = (images.float() - self.mean) / self.std
        pooled = {}
        for name, stage in zip(self.stage_names, self.stages):
            x = stage(x)
            for tap, tap_stage in self.tap_stages.items():
                if tap_stage == name:
                    pooled[tap] = pool(x, self.pooling).float()
        return tuple(pooled[t] for t in self.tap_names)


def build_extractor(loaded, taps, pooling: str = "avg") -> TapExtractor:
    """A :class:`TapExtractor` for a :class:`~pipeline.backbones.LoadedBackbone`."""
    spec = loaded.spec
    tap_stages = {t: spec.tap(t).stage for t in taps}
    extractor = TapExtractor(loaded.stages(), tap_stages, spec.preprocessing, pooling)
    return extractor.eval()


# ------------------------------------------------------------------ devices


def resolve_device(device: str = "auto") -> torch.device:
    """``auto`` -> cuda if available else cpu; ``cuda`` without CUDA is an error."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise DeviceError(
                f"--device {device} was asked for but this torch ({torch.__version__}) sees no "
                "CUDA device; use --device cpu (or auto) on this machine"
            )
        return torch.device(device)
    if device == "cpu":
        return torch.device("cpu")
    raise UsageError(f"unknown device {device!r}; valid: auto, cpu, cuda, cuda:N")


# ------------------------------------------------------------------ loading


@dataclass
class Decoded:
    index: int
    image: np.ndarray | None   # (3, S, S) uint8, or None when unusable
    sha256: str
    reason: str = ""


class ImageDataset(torch.utils.data.Dataset):
    """Decodes ``root / paths[i]`` for row ``indices[i]``; failures come back with a reason."""

    def __init__(self, root, paths, indices, preprocessing, hash_files: bool = True):
        self.root = root
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
            data = path.read_bytes()  # read once: hashed and decoded from memory
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


@dataclass
class BatchResult:
    indices: list
    features: dict          # tap -> (n, C) float32 array
    shas: list
    failures: list          # (index, sha256, reason)
    seconds: float


def iter_features(runner, loader, device: torch.device, taps):
    """Yield a :class:`BatchResult` per batch of ``loader`` (a :class:`BatchLoader` or
    an iterator over one, e.g. started early so decoding overlaps the runtime's setup).

    ``runner`` is a callable mapping a uint8 batch on ``device`` to a tuple of
    pooled tap tensors (a :class:`TapExtractor` or a compiled/exported form).
    A runner with a ``stream`` method (:func:`pipeline.runtimes.make_runner`
    gives OpenVINO one) is fed batches as they come and hands results back in
    order while it works on later ones, so the network never waits for this
    loop's bookkeeping.  On CUDA the copy is non-blocking from pinned memory
    and the input is channels_last.
    """
    def inputs():
        for indices, batch, shas, failures in loader:
            if batch is not None and device.type == "cuda":
                batch = batch.to(device, non_blocking=True).contiguous(
                    memory_format=torch.channels_last)
            yield (indices, shas, failures), batch

    stream = getattr(runner, "stream", None) or (lambda items: run_in_turn(runner, items))
    for (indices, shas, failures), outs, seconds in stream(inputs()):
        feats = {}
        if outs is not None:
            feats = {t: o.detach().float().cpu().numpy() for t, o in zip(taps, outs)}
        yield BatchResult(indices, feats, shas, failures, seconds)


def run_in_turn(runner, items):
    """``(tag, batch)`` items -> ``(tag, outputs, seconds)``, one batch at a time
    (``outputs`` is None for a None batch)."""
    for tag, batch in items:
        t0 = time.perf_counter()
        outs = None
        if batch is not None:
            with torch.inference_mode():
                outs = runner(batch)
        yield tag, outs, time.perf_counter() - t0
