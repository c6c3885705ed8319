"""Datasets the training loop reads: decoded image folders and in-memory tensors.

:class:`ImageFolderDataset` decodes images with :func:`pipeline.data.decode.load_rgb`
(unusable files are skipped with a logged reason), optionally keeps them in
memory at a reduced size, augments them (:data:`pipeline.options.AUGMENTATIONS`)
and always ends with the backbone's own normalisation from its
:class:`~pipeline.backbones.registry.Preprocessing`.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

import numpy as np
import torch

from ..data.decode import ImageDecodeError, load_rgb
from ..errors import UsageError
from ..options import AUGMENTATIONS

log = logging.getLogger(__name__)


def image_transform(preprocessing, augment: str = "standard", size: int | None = None):
    """PIL image -> normalised ``(3, size, size)`` float tensor (torchvision ``transforms.v2``).

    ``standard``: RandomResizedCrop(scale 0.8-1), horizontal flip, ColorJitter
    (0.2, 0.2, 0.2, 0.1); ``strong``: RandomResizedCrop(scale 0.35-1), horizontal
    flip, TrivialAugmentWide (one random operation of random strength per image,
    Mueller & Hutter 2021), random erasing (p 0.25); ``none``: resize and centre
    crop as the weights expect.  All end with the weights' own mean/std.
    """
    from torchvision.transforms import v2

    if augment not in AUGMENTATIONS:
        raise UsageError(f"unknown augmentation {augment!r}; valid: {', '.join(AUGMENTATIONS)}")
    size = size or preprocessing.input_size
    interp = {"bicubic": v2.InterpolationMode.BICUBIC, "bilinear": v2.InterpolationMode.BILINEAR,
              "nearest": v2.InterpolationMode.NEAREST}[preprocessing.interpolation]
    tensor = [v2.ToImage(), v2.ToDtype(torch.float32, scale=True)]
    tail = [v2.Normalize(preprocessing.mean, preprocessing.std)]
    if augment == "none":
        return v2.Compose([v2.Resize(int(size / preprocessing.crop_pct), interpolation=interp),
                           v2.CenterCrop(size), *tensor, *tail])
    if augment == "strong":
        return v2.Compose([v2.RandomResizedCrop(size, scale=(0.35, 1.0), interpolation=interp),
                           v2.RandomHorizontalFlip(), v2.TrivialAugmentWide(interpolation=interp),
                           *tensor, v2.RandomErasing(p=0.25), *tail])
    return v2.Compose([v2.RandomResizedCrop(size, scale=(0.8, 1.0), interpolation=interp),
                       v2.RandomHorizontalFlip(), v2.ColorJitter(0.2, 0.2, 0.2, 0.1),
                       *tensor, *tail])


class ImageFolderDataset(torch.utils.data.Dataset):
    """``(image tensor, label)`` pairs for ``root / paths[i]``.

    With ``cache=True`` every image is decoded once at construction and kept
    in memory with its short side reduced to ``size / crop_pct`` (cheap for
    small sets, saves a decode per epoch); ``decoded``, a dict shared by
    datasets of the same images (cross-validation's folds), keeps each decoded
    image for the next dataset, so the images are decoded once.  Unusable files
    are dropped then, with their reason logged and kept in ``skipped``.  ``kept`` are the
    indices (into ``paths``) that remain.  Without the cache, an image that
    fails later is replaced by the next usable one and logged.
    """

    def __init__(self, root, paths, labels, preprocessing, augment: str = "standard",
                 size: int | None = None, cache: bool = True, decoded: dict | None = None):
        self.root = Path(root)
        self.decoded = decoded
        self.transform = image_transform(preprocessing, augment, size)
        self._plain = (preprocessing, size)
        self.short_side = int(math.ceil((size or preprocessing.input_size)
                                        / preprocessing.crop_pct))
        self.paths = list(paths)
        self.labels = np.asarray(labels, dtype=np.int64)
        self.skipped = []
        self.images = None
        self.kept = list(range(len(self.paths)))
        if cache:
            self.images, self.kept = [], []
            for i in range(len(self.paths)):
                img = self._decode(i)
                if img is not None:
                    self.images.append(img)
                    self.kept.append(i)

    def _decode(self, i):
        memo = (str(self.root / self.paths[i]), self.short_side)
        if self.decoded is not None and memo in self.decoded:
            return self.decoded[memo]
        img = self._decode_file(i)
        if self.decoded is not None and img is not None:
            self.decoded[memo] = img
        return img

    def _decode_file(self, i):
        try:
            img = load_rgb(self.root / self.paths[i], target_short_side=self.short_side)
        except ImageDecodeError as exc:
            log.warning("skipped %s: %s", self.paths[i], exc.reason)
            self.skipped.append((self.paths[i], exc.reason))
            return None
        except OSError as exc:
            log.warning("skipped %s: cannot read file (%s)", self.paths[i], exc)
            self.skipped.append((self.paths[i], f"cannot read file ({exc})"))
            return None
        w, h = img.size
        scale = self.short_side / min(w, h)
        if scale < 1:
            from PIL import Image

            img = img.resize((max(1, round(w * scale)), max(1, round(h * scale))),
                             Image.BICUBIC)
        return img

    def unaugmented(self):
        """This dataset with the evaluation transform (the centre crop, no augmentation)."""
        import copy

        plain = copy.copy(self)
        plain.transform = image_transform(self._plain[0], "none", self._plain[1])
        return plain

    def __len__(self):
        return len(self.kept)

    def __getitem__(self, j):
        if self.images is not None:
            return self.transform(self.images[j]), int(self.labels[self.kept[j]])
        for k in range(len(self.kept)):
            i = self.kept[(j + k) % len(self.kept)]
            img = self._decode(i)
            if img is not None:
                return self.transform(img), int(self.labels[i])
        raise UsageError("no usable image in the dataset")


class TensorPairs(torch.utils.data.Dataset):
    """``(X[i], y[i])`` from in-memory tensors."""

    def __init__(self, X, y):
        self.X = torch.as_tensor(X, dtype=torch.float32)
        self.y = torch.as_tensor(np.asarray(y), dtype=torch.long)

    def __len__(self):
        return len(self.y)

    def __getitem__(self, i):
        return self.X[i], int(self.y[i])


def augmentation_preview(root, paths, preprocessing, augment: str, draws: int = 6,
                         seed: int = 0, tile: int = 112, gap: int = 16) -> bytes:
    """A JPEG grid: one row per image of ``paths`` (under ``root``), the original fitted
    in a ``tile`` px square, then ``draws`` outputs of :func:`image_transform` with
    ``augment`` exactly as training applies it (decoded as training decodes), with
    the weights' normalisation undone for display.

    Seeded with ``seed`` inside :func:`torch.random.fork_rng`, so training's RNG is
    untouched.  Files that do not decode get a grey row.  Tiles sit ``tile + gap``
    px apart, a multiple of JPEG's 16 px blocks, so equal tiles stay equal after
    compression.  Returns the JPEG bytes.
    """
    import io

    from PIL import Image

    transform = image_transform(preprocessing, augment)
    short = int(math.ceil(preprocessing.input_size / preprocessing.crop_pct))
    mean = torch.tensor(preprocessing.mean).view(3, 1, 1)
    std = torch.tensor(preprocessing.std).view(3, 1, 1)
    step = tile + gap
    grid = Image.new("RGB", ((draws + 1) * step, len(paths) * step), "white")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for r, rel in enumerate(paths):
            try:
                img = load_rgb(Path(root) / rel, target_short_side=short)
            except (ImageDecodeError, OSError) as exc:
                log.warning("augmentation preview: skipped %s (%s)", rel, exc)
                grid.paste((200, 200, 200), (0, r * step, grid.width, (r + 1) * step))
                continue
            original = img.copy()
            original.thumbnail((tile, tile))
            grid.paste(original, ((tile - original.width) // 2,
                                  r * step + (tile - original.height) // 2))
            for d in range(draws):
                x = (transform(img) * std + mean).clamp(0, 1)
                view = Image.fromarray((x.permute(1, 2, 0).numpy() * 255).round()
                                       .astype(np.uint8)).resize((tile, tile), Image.BILINEAR)
                grid.paste(view, ((d + 1) * step, r * step))
    buf = io.BytesIO()
    grid.save(buf, format="JPEG", quality=80)
    return buf.getvalue()


class MirroredViews(torch.utils.data.Dataset):
    """``dataset``'s items ``(x, y)`` as ``(stack([x, mirrored x]), y)``: the two views
    of test-time flip augmentation (the fine-tuned network averages their logits)."""

    def __init__(self, dataset):
        self.dataset = dataset
        self.labels, self.kept = dataset.labels, getattr(dataset, "kept", None)

    def unaugmented(self):
        """The un-mirrored centre crops alone."""
        return self.dataset.unaugmented()

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, i):
        x, y = self.dataset[i]
        return torch.stack([x, torch.flip(x, dims=[-1])]), y
