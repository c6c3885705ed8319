"""The frozen-trunk cache of fine-tuning: trunk outputs computed once, kept by their key.

With ``bn="frozen-eval"`` the stages below the lowest block group a
fine-tuning run ever trains compute a fixed function of the input, so
:mod:`pipeline.train.finetune` trains only the top on their outputs.  This
module computes those outputs (:func:`compute_activations`: ``views`` per
training image, the centre crop plus augmented ones; one for val and test)
on a runtime of :mod:`pipeline.extraction.runtimes` (:func:`trunk_runner`),
and keeps them in a :class:`TrunkCache`: an in-memory dict, and optionally a
folder of ``activations-<key>.pt`` files, keyed by everything that shapes
them (:func:`cache_key`).  Nothing here is module-global: a caller that runs
several fine-tunings (seeds, the ladder, the explorer grid, the demo) owns
one :class:`TrunkCache` and passes it to each, so no trunk output is computed
twice; :class:`CachedViews` is the dataset the training loop reads from it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np

from ..errors import DataError, unsafe_load_reason
from ..files import atomic_path

log = logging.getLogger(__name__)


#: Images decoded and pushed through the trunk together when caching (fixed:
#: the augmentation RNG is seeded per chunk, so it shapes the cached views).
CACHE_CHUNK = 32

#: The two layouts of the trunk cache: one part per split (train, val, test; the holdout
#: run's), or one part of every image (the cross-validated run's).  Their values are part
#: of the cache key, so they keep the names earlier versions wrote.
PER_SPLIT, ALL_IMAGES = "holdout", "cv"


def cache_key(store, cfg, cut: int, weights_id: str, pre, layout: str,
              pooled: bool = False) -> str:
    """The key of the trunk outputs of ``store``'s images through ``stages[:cut]`` of
    ``cfg.backbone`` (weights ``weights_id``, preprocessing ``pre``) in ``layout``
    (``pooled``: averaged over the feature map, the whole backbone's cut): 16 hex
    digits, the name of the file on disk, so its fields keep the names earlier versions
    wrote."""
    # the per-split cache is one part per split, so the split in use is part of its key
    # (the store's fingerprint is not: another split seed reads the same store)
    split = (hashlib.sha256(store.split_codes.astype(np.int8).tobytes()).hexdigest()
             if layout == PER_SPLIT else None)
    fields = {"store": store.fingerprint, "backbone": cfg.backbone,
              "weights": weights_id, "cut": cut, "views": cfg.views,
              "augment": cfg.augment, "pre": pre.to_dict(),
              "chunk": CACHE_CHUNK, "layout": layout, "split": split,
              "runtime": trunk_runtime(cfg)}
    # each only when on, so the keys of caches written before stay those earlier versions wrote
    if pooled:
        fields["pooled"] = True
    if cfg.tta != "none":
        fields["tta"] = cfg.tta
    blob = json.dumps(fields, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _keys(store, loaded, cfg, cuts, pre, layout: str) -> dict:
    """``{cut: cache_key}``; the cut after the last stage keeps pooled outputs."""
    n_stages = len(loaded.stages())
    return {cut: cache_key(store, cfg, cut, loaded.weights_id, pre, layout,
                           pooled=cut == n_stages) for cut in sorted(set(cuts))}


class TrunkCache:
    """Cached frozen-trunk outputs: an in-memory dict, backed by ``folder`` when given.

    ``memory`` maps a :func:`cache_key` to ``{part: (acts, rows_ok, skipped)}``;
    ``folder`` keeps the same as ``activations-<key>.pt`` for later processes (and
    ``resume``).  Share one object between the fine-tunings of one job.
    """

    def __init__(self, folder=None):
        self.folder = Path(folder) if folder else None
        self.memory: dict = {}
        self.companions: dict = {}   # backbone name -> cuts computed with any asked for

    def share_cuts(self, backbone: str, cuts) -> None:
        """Compute ``cuts`` of ``backbone`` along with any cut asked for later (each under
        its own key, for the same store, weights, views and layout), so the fine-tunings
        of one job that cut the trunk at different stages (the ladder's head-only rung
        and its top-group rungs) are filled by one pass through the trunk."""
        self.companions.setdefault(backbone, set()).update(int(c) for c in cuts)

    def __repr__(self):
        return f"TrunkCache(folder={self.folder!r}, {len(self.memory)} in memory)"

    @classmethod
    def of(cls, cache=None, default_folder=None) -> TrunkCache:
        """``cache`` itself when it is a :class:`TrunkCache`, else a new one on the folder
        ``cache`` (None: on ``default_folder``; memory only when both are None)."""
        if isinstance(cache, cls):
            return cache
        return cls(cache or default_folder)

    def splits(self, store, loaded, cfg, cut: int, pre, layout: str = PER_SPLIT):
        """``({part: (acts, rows_ok, skipped)}, seconds spent computing)`` for the trunk
        ``loaded.stages()[:cut]``: from memory, else from the folder, else computed (and
        kept in both).  ``layout=PER_SPLIT``: parts ``train`` (``cfg.views`` views per
        image), ``val`` and ``test`` (the centre crop); ``layout=ALL_IMAGES``: one part
        ``"all"``, every image with ``cfg.views`` views (any image trains in some fold;
        view 0 is the centre crop).  ``acts`` is ``(n, views, C, H, W)`` float16, or
        ``(n, views, C)`` after the last stage (pooled: the top is then the classifier
        alone, which averages the map first anyway)."""
        seconds = self.prefill(store, loaded, cfg, [cut], pre, layout)
        return self.memory[_keys(store, loaded, cfg, [cut], pre, layout)[cut]], seconds

    def prefill(self, store, loaded, cfg, cuts, pre, layout: str = PER_SPLIT) -> float:
        """The trunk outputs at every cut of ``cuts`` in memory (as :meth:`splits` gives
        them, each under its own key); those neither in memory nor in the folder are
        computed in one pass through ``loaded.stages()[:max(cuts)]`` that hands back
        the output after each cut, so the grid of the explorer, whose depths cut the
        trunk at several stages, decodes and runs its images once.  The cuts
        :meth:`share_cuts` named for this backbone are computed in the same pass when
        one is.  Returns the seconds spent computing."""
        keys = _keys(store, loaded, cfg, cuts, pre, layout)
        missing = []
        for cut, key in keys.items():
            if key not in self.memory:
                data = self._load(key)
                if data is None:
                    missing.append(cut)
                else:
                    self.memory[key] = data
        if not missing:
            return 0.0
        companions = self.companions.get(loaded.spec.name, set()) - set(keys)
        for cut, key in _keys(store, loaded, cfg, companions, pre, layout).items():
            if key not in self.memory and self._load(key) is None:
                keys[cut] = key
                missing.append(cut)
        missing.sort()
        t0 = time.perf_counter()
        computed = _compute(store, loaded, cfg, missing, pre, layout)
        seconds = time.perf_counter() - t0
        log.info("trunk outputs of %d images x views at %d depth(s) cached in %.0f s",
                 len(store), len(missing), seconds)
        for cut, data in computed.items():
            self.memory[keys[cut]] = data
            self._save(keys[cut], data)
        return seconds

    def _disk(self, key: str) -> Path | None:
        return self.folder / f"activations-{key}.pt" if self.folder else None

    def _load(self, key: str):
        """The parts saved under ``key``, or None (none saved, or unreadable: recomputed)."""
        import torch

        disk = self._disk(key)
        if disk is None or not disk.is_file():
            return None
        try:  # tensors, lists and strings only: nothing in it can run code
            data = torch.load(disk, map_location="cpu", weights_only=True)
        except Exception as exc:  # noqa: BLE001 - a cache: an unreadable one is recomputed
            log.warning("recomputing the trunk cache: %s cannot be loaded (%s)", disk,
                        unsafe_load_reason(exc))
            return None
        log.info("loaded cached trunk outputs %s", disk)
        return data

    def _save(self, key: str, data: dict):
        import torch

        disk = self._disk(key)
        if disk is not None:
            disk.parent.mkdir(parents=True, exist_ok=True)
            with atomic_path(disk) as tmp:
                torch.save(data, tmp)


def _compute(store, loaded, cfg, cuts: list, pre, layout: str) -> dict:
    """``{cut: parts of TrunkCache.splits}`` for every cut of ``cuts``, computed by one
    runner built for all of them (:class:`TrunkCuts`); :class:`DataError` when a val,
    test or cv image no longer decodes."""
    from .trunk_net import TrunkCuts

    stages = loaded.stages()
    trunk = TrunkCuts([m for _, m in stages[:max(cuts)]], cuts).eval()
    parts = {"all": store.paths} if layout == ALL_IMAGES else \
        {s: store.rel_paths(s) for s in ("train", "val", "test")}
    runner = _pool_last(trunk_runner(trunk, pre.input_size,
                                      "compile" if cfg.compile else cfg.runtime),
                        [cut == len(stages) for cut in trunk.cuts])
    data = {cut: {} for cut in trunk.cuts}
    flip = cfg.tta == "flip"
    for split, paths in parts.items():
        views = cfg.views if split in ("train", "all") else 1
        acts, ok, skipped = compute_activations(runner, store.data_root, paths, pre, views,
                                                cfg.augment, seed=0,
                                                flip=flip and split != "train")
        if split != "train" and skipped:
            raise DataError(f"{len(skipped)} {split} image(s) of the store no longer decode "
                            f"({skipped[0][0]}: {skipped[0][1]}); restore them or re-extract")
        for cut, a in zip(trunk.cuts, acts):
            data[cut][split] = (a, ok, skipped)
    return data


def _pool_last(runner, pooled: list):
    """``runner`` with the outputs flagged in ``pooled`` averaged over their feature map
    ``(N, C, H, W) -> (N, C)`` (in float32, before the cache's float16): after the last
    stage only the classifier follows, which averages the map first, so its cache holds
    ``C`` numbers per view, not ``C x H x W``."""
    if not any(pooled):
        return runner

    def forward(batch):
        return tuple(o.mean(dim=(2, 3)) if p and o.dim() == 4 else o
                     for o, p in zip(runner(batch), pooled))

    forward.runtime = runner.runtime
    return forward


def compute_activations(runner, root, paths, pre, views: int, augment: str, seed: int = 0,
                        flip: bool = False):
    """``([trunk outputs], rows ok, skipped)``: one ``(n, views, C, H, W)`` float16 tensor
    per output of ``runner`` (one per cut of :class:`~pipeline.train.trunk_net.TrunkCuts`);
    view 0 is the centre crop; with ``flip`` one more view at the end, the centre crop's
    mirror (test-time augmentation: :class:`CachedViews` ``tta``).

    Views 1.. are augmented (the training preset), seeded per chunk, so the
    result depends only on the images, ``views``, ``seed`` and the runtime.
    ``runner`` runs the frozen trunk (:func:`trunk_runner` on a runtime of
    :mod:`pipeline.extraction.runtimes`; ``auto``: OpenVINO where installed, fp32,
    within 1e-4 of eager, which the float16 cache rounds away; ``compile``:
    torch.compile).
    Images are decoded and augmented by torch as in training either way, by
    one thread that works a chunk ahead of the forward pass (same draws as in
    order: one thread takes the chunks one after the other).
    Skips files that do not decode, logging each (callers drop them from
    training).
    """
    from concurrent.futures import ThreadPoolExecutor

    import torch

    chunk = _ChunkDecoder(root, paths, pre, views, augment, seed, flip)
    out, ok, skipped = [], [], []
    threads = torch.get_num_threads()
    starts = list(range(0, len(paths), CACHE_CHUNK))
    with ThreadPoolExecutor(1, thread_name_prefix="trunk-decode",
                            initializer=torch.set_num_threads, initargs=(1,)) as pool:
        pending = [pool.submit(chunk, c0) for c0 in starts[:2]]
        for n, c0 in enumerate(starts):
            idx, per_view, failed = pending.pop(0).result()
            if n + 2 < len(starts):
                pending.append(pool.submit(chunk, starts[n + 2]))
            skipped += failed
            if not idx:
                continue
            with torch.inference_mode():
                per_cut = zip(*[runner(b) for b in per_view])   # each a tuple, one per cut
                out.append([torch.stack([o.to(torch.float16) for o in outs], dim=1)
                            for outs in per_cut])
            ok += idx
            if n % 10 == 0:
                log.info("cached trunk outputs of %d/%d images", c0 + len(idx), len(paths))
    torch.set_num_threads(threads)
    if not out:
        raise DataError(f"none of the {len(paths)} image(s) decodes"
                        + (f" ({skipped[0][0]}: {skipped[0][1]})" if skipped else "")
                        + "; restore them or re-extract the store")
    return ([torch.cat(acts).clone() for acts in zip(*out)],
            torch.as_tensor(ok, dtype=torch.int64), skipped)


class _ChunkDecoder:
    """``chunk(c0) -> (indices, [one (n, 3, S, S) batch per view], [(path, reason)])`` for
    the images ``paths[c0 : c0 + CACHE_CHUNK]``: decoded once, view 0 the centre crop,
    views 1.. the augmentation drawn from ``epoch_seed(seed, c0 * views + v)``; with
    ``flip``, a last view: view 0 mirrored."""

    def __init__(self, root, paths, pre, views: int, augment: str, seed: int,
                 flip: bool = False):
        from .datasets import image_transform

        self.root, self.paths, self.views, self.seed = Path(root), paths, views, seed
        self.flip = flip
        self.clean = image_transform(pre, "none")
        self.aug = image_transform(pre, augment) if views > 1 else None
        self.short = int(math.ceil(pre.input_size / pre.crop_pct))

    def __call__(self, c0: int):
        import torch

        from ..data.decode import ImageDecodeError, load_rgb
        from .loop import epoch_seed

        imgs, idx, failed = [], [], []
        for i in range(c0, min(c0 + CACHE_CHUNK, len(self.paths))):
            try:
                imgs.append(load_rgb(self.root / self.paths[i], target_short_side=self.short))
                idx.append(i)
            except ImageDecodeError as exc:
                log.warning("skipped %s: %s", self.paths[i], exc.reason)
                failed.append((self.paths[i], exc.reason))
        per_view = []
        for v in range(self.views if imgs else 0):
            torch.manual_seed(epoch_seed(self.seed, c0 * self.views + v))
            t = self.clean if v == 0 else self.aug
            per_view.append(torch.stack([t(im) for im in imgs]))
        if self.flip and per_view:
            per_view.append(torch.flip(per_view[0], dims=[-1]))
        return idx, per_view, failed


def trunk_runtime(cfg) -> str:
    """The runtime that fills the trunk cache of ``cfg`` on this machine (``auto`` resolved)."""
    from ..extraction.runtimes import cuda_available_cheap, resolve_runtime

    if cfg.compile:
        return "compile"
    return resolve_runtime(cfg.runtime, "cuda" if cuda_available_cheap() else "cpu")


def trunk_runner(trunk, size: int, runtime: str = "auto"):
    """``float (N, 3, size, size) -> tuple of trunk outputs`` on ``runtime`` (see
    :func:`pipeline.extraction.runtimes.make_runner`: ``auto`` falls back to
    eager torch, with a log line saying why, when the fast runtime cannot take
    this trunk)."""
    import torch

    from ..extraction.runtimes import ExportCache, make_runner

    device = next(trunk.parameters()).device
    run = make_runner(trunk, runtime, device, SimpleNamespace(input_size=size),
                      cache=ExportCache(example=torch.zeros((2, 3, size, size))))
    log.info("frozen trunk outputs computed with %s (%s)", run.runtime, run.precision)

    def forward(batch):
        with torch.inference_mode():
            out = run(batch)
        return tuple(out) if isinstance(out, (tuple, list)) else (out,)

    forward.runtime = run.runtime
    return forward


class CachedViews:
    """Dataset over cached trunk outputs ``acts`` ``(n, views, C, H, W)``: item ``i`` is a
    random view of image ``i`` among its first ``train_views`` (default: all)
    (``random_view=True``), else view 0, the centre crop; with ``tta`` the centre crop
    and the last view, its mirror, as one ``(2, C, H, W)`` item (the network averages
    their logits)."""

    def __init__(self, acts, labels, random_view: bool, tta: bool = False,
                 train_views: int | None = None):
        self.acts, self.labels, self.random_view = acts, np.asarray(labels), random_view
        self.tta = tta and not random_view
        self.train_views = train_views or acts.shape[1]

    def unaugmented(self):
        """View 0 of every image (the centre crop), one per item."""
        return CachedViews(self.acts, self.labels, random_view=False)

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        import torch

        if self.tta:
            return self.acts[i, [0, -1]].float(), int(self.labels[i])
        v = int(torch.randint(self.train_views, (1,))) if self.random_view else 0
        return self.acts[i, v].float(), int(self.labels[i])
