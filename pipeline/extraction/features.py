"""The one feature-extraction function: image files -> pooled tap vectors, batch by batch.

:func:`extract_features` is what every caller uses (the ``extract`` job and
so the torchrun shards, ``predict``, the benchmark): it decodes the files in
threads ahead of the network, builds the runtime (eager torch or a cached
ONNX/OpenVINO export of the cut network) and yields one :class:`BatchResult`
per batch.  :func:`iter_features` is its loop over any runner and loader.
Nothing here writes a file (the store does that).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import torch

from ..backbones import get_backbone, load_backbone, weights_identity
from ..configs import ExtractConfig
from ..store.hdf5 import config_key
from .forward import build_extractor, resolve_device
from .loader import BatchLoader, ImageDataset
from .runtimes import ExportCache, make_runner

log = logging.getLogger(__name__)


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
    results = stream(inputs())
    try:
        for (indices, shas, failures), outs, seconds in results:
            feats = {}
            if outs is not None:
                feats = {t: o.detach().float().cpu().numpy() for t, o in zip(taps, outs)}
            yield BatchResult(indices, feats, shas, failures, seconds)
    finally:  # the runtime's batches in flight finish now (see extract_features)
        getattr(results, "close", lambda: None)()


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


def network_key(spec, weights: str, taps, pool: str, tta: str = "none") -> str:
    """Names the cut network by what shapes it (backbone, weights identity, taps,
    pooling, preprocessing, test-time augmentation), so a cached onnx/openvino export
    is used without building the torch model at all."""
    key = {"backbone": spec.name, "weights": weights_identity(spec, weights),
           "taps": list(taps), "pooling": pool, "preprocessing": spec.preprocessing.to_dict()}
    if tta != "none":  # the plain network keeps the key it had before TTA existed
        key["tta"] = tta
    return config_key(key)


def extract_features(root, paths, cfg: ExtractConfig, taps, indices=None,
                     hash_files: bool = True):
    """Yield a :class:`BatchResult` per batch of the images ``root / paths[i]``.

    Each result holds the rows it covers (``indices[i]``, default ``i``),
    ``{tap: (n, C) float32}`` pooled with ``cfg.pool`` (and averaged with the
    horizontal mirror's under ``cfg.tta == "flip"``) in the order of ``taps``
    (resolved tap names), the files' SHA-256 (``hash_files``) and the files that
    did not decode, with their reason.  ``cfg`` gives the network (``backbone``,
    ``weights``) and how it runs: ``runtime``/``precision`` as in
    :func:`pipeline.extraction.runtimes.make_runner` (``auto`` = the fastest
    installed here), ``device``, ``batch_size``, ``threads``; decoding runs in
    ``cfg.workers`` threads (0: between batches; None: one) and starts before the
    runtime loads, so the two overlap.  A runtime that ``auto`` already resolved
    (``cfg.asked_runtime == "auto"``) falls back to eager torch when it cannot
    take the network, as ``auto`` does.

    A caller that stops early (an error while it stores a batch, Ctrl-C) must
    ``close()`` the generator (or exhaust it) before it goes on: that waits for the
    runtime's batches in flight and stops the decoding threads.  Left to the garbage
    collector (the generator is held by the error's traceback), OpenVINO's callbacks
    could still be running when the interpreter exits, which aborts the process
    (``FATAL: exception not rethrown``).
    """
    spec = get_backbone(cfg.backbone)
    dev = resolve_device(cfg.device)
    indices = list(range(len(paths))) if indices is None else list(indices)
    dataset = ImageDataset(root, paths, indices, spec.preprocessing, hash_files=hash_files)
    workers = 1 if cfg.workers is None else cfg.workers
    loader = BatchLoader(dataset, cfg.batch_size, workers, pin_memory=dev.type == "cuda")
    batches = iter(loader)  # decoding threads start filling their queue now

    def build():
        return build_extractor(load_backbone(spec.name, cfg.weights), taps, cfg.pool, cfg.tta)

    key = network_key(spec, cfg.weights, taps, cfg.pool, cfg.tta)
    runner = make_runner(build, cfg.runtime, dev, spec.preprocessing,
                         precision=cfg.precision, threads=cfg.threads,
                         cache=ExportCache(key=key),
                         fallback=cfg.asked_runtime == "auto")
    try:
        yield from iter_features(runner, batches, dev, taps)
    finally:
        batches.close()  # the decoding threads stop (a generator; see BatchLoader)
