"""The feature hierarchy: which patches of the user's images most activate channels at
each tap, and the first convolution's filters.

:func:`feature_hierarchy` runs the backbone's stages (the same
:class:`~pipeline.extraction.forward.TapExtractor` ``extract`` uses, cut after the
deepest tap) over decoded, preprocessed images in batches and keeps, per tap and
channel, only each image's spatial mean, maximum and its location, so memory is
``n_images x channels``, never the feature maps.  Per tap it picks the channels
whose mean activation varies most across the images, and for each the images
where it peaks highest; the patch shown is the tap's effective receptive field
around the peak (:func:`effective_receptive_field`).  Pictures come back as JPEG
/ PNG data URIs, so the record that stores them is the whole result.
"""

from __future__ import annotations

import base64
import io
import logging
from pathlib import Path

import numpy as np
import torch

from ..data.decode import ImageDecodeError, load_array, resize_center_crop
from .forward import build_extractor

log = logging.getLogger(__name__)


#: Share of the input-gradient mass the effective receptive field holds.
RF_MASS = 0.9


#: Side of one patch tile in the grids, px.
PATCH_TILE = 64


def decode(root, rel: str, pre) -> np.ndarray | None:
    """``(3, S, S)`` uint8 of ``root / rel`` preprocessed as extraction does, or None."""
    try:
        arr = load_array(Path(root) / rel, target_short_side=int(pre.input_size / pre.crop_pct))
    except (ImageDecodeError, OSError) as exc:
        log.warning("hierarchy: skipped %s (%s)", rel, getattr(exc, "reason", exc))
        return None
    return resize_center_crop(arr, pre.input_size, pre.crop_pct, pre.interpolation)


def _maps(extractor, images: torch.Tensor) -> dict:
    """``{tap: (N, C, H, W)}`` feature maps of uint8 ``images`` (the extractor's own
    normalisation and stages, unpooled)."""
    return extractor.maps(images)


def effective_receptive_field(extractor, images: torch.Tensor) -> dict:
    """``{tap: side in input px}``: the smallest square around a central unit that holds
    :data:`RF_MASS` of the input gradient of that unit (all channels summed), measured on
    ``images`` (``(N, 3, S, S)`` uint8).  Deep taps reach the whole image."""
    x = images.float().requires_grad_(True)
    size = images.shape[-1]
    maps = _maps(extractor, x)
    out = {}
    for k, (tap, m) in enumerate(maps.items()):
        h, w = m.shape[-2:]
        (grad,) = torch.autograd.grad(m[:, :, h // 2, w // 2].sum(), x,
                                      retain_graph=k < len(maps) - 1)
        g = grad.abs().sum(dim=(0, 1)).numpy()
        cy, cx = int((h // 2 + 0.5) * size / h), int((w // 2 + 0.5) * size / w)
        total, side = g.sum(), size
        for s in range(2, size + 1, 2):
            y0, x0 = max(0, cy - s // 2), max(0, cx - s // 2)
            if g[y0:y0 + s, x0:x0 + s].sum() >= RF_MASS * total:
                side = s
                break
        out[tap] = int(side)
    return out


def _activations(extractor, root, paths, pre, batch_size: int):
    """``(kept paths, {tap: (mean (n, C), peak (n, C), where (n, C) flat index, (H, W))})``."""
    kept, stats = [], {}
    for start in range(0, len(paths), batch_size):
        batch = [(p, decode(root, p, pre)) for p in paths[start:start + batch_size]]
        batch = [(p, a) for p, a in batch if a is not None]
        if not batch:
            continue
        kept += [p for p, _ in batch]
        with torch.no_grad():
            maps = _maps(extractor, torch.from_numpy(np.stack([a for _, a in batch])))
        for tap, m in maps.items():
            flat = m.flatten(2)
            peak, where = flat.max(dim=2)
            s = stats.setdefault(tap, ([], [], [], tuple(m.shape[-2:])))
            s[0].append(flat.mean(dim=2).numpy())
            s[1].append(peak.numpy())
            s[2].append(where.numpy())
    return kept, {t: (np.concatenate(a), np.concatenate(b), np.concatenate(c), hw)
                  for t, (a, b, c, hw) in stats.items()}


def _box(where: int, hw: tuple, side: int, size: int) -> list:
    """``[x0, y0, x1, y1]`` of the ``side`` square centred on unit ``where`` of an
    ``hw`` map over a ``size`` image, moved inside the image."""
    y, x = divmod(int(where), hw[1])
    cy, cx = (y + 0.5) * size / hw[0], (x + 0.5) * size / hw[1]
    side = min(side, size)
    x0 = int(round(min(max(cx - side / 2, 0), size - side)))
    y0 = int(round(min(max(cy - side / 2, 0), size - side)))
    return [x0, y0, x0 + side, y0 + side]


def _tap_units(stats, side, size, kept, channels: int, patches: int) -> list:
    """The ``channels`` channels of highest variance, each with its ``patches`` top images.

    ``stats``: one tap's ``(mean, peak, where, (H, W))`` as :func:`_activations` gives
    them; ``side``: its receptive field in px of the ``size`` input."""
    mean, peak, where, hw = stats
    variance = mean.var(axis=0)
    units = []
    for c in np.argsort(-variance, kind="stable")[:channels]:
        top = np.argsort(-peak[:, c], kind="stable")[:patches]
        units.append({"channel": int(c), "variance": float(variance[c]), "patches": [
            {"path": kept[i], "activation": float(peak[i, c]),
             "box": _box(where[i, c], hw, side, size)} for i in top]})
    return units


def _grid(units, root, pre, tile: int = PATCH_TILE, gap: int = 4) -> str:
    """A JPEG data URI: one row per channel, its patches left to right."""
    from PIL import Image

    cols = max((len(u["patches"]) for u in units), default=1)
    grid = Image.new("RGB", (cols * (tile + gap), len(units) * (tile + gap)), "white")
    cache = {}
    for r, u in enumerate(units):
        for c, p in enumerate(u["patches"]):
            if p["path"] not in cache:
                cache[p["path"]] = Image.fromarray(decode(root, p["path"], pre).transpose(1, 2, 0))
            patch = cache[p["path"]].crop(tuple(p["box"])).resize((tile, tile), Image.BICUBIC)
            grid.paste(patch, (c * (tile + gap), r * (tile + gap)))
    return _uri(grid, "JPEG")


def _uri(img, fmt: str) -> str:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **({"quality": 85} if fmt == "JPEG" else {}))
    return f"data:image/{fmt.lower()};base64," + base64.b64encode(buf.getvalue()).decode()


def first_filters(extractor, tile: int = 24, cols: int = 16):
    """``(shape, PNG data URI)`` of the first 3-channel convolution's filters as RGB
    tiles (each scaled on its own to [0, 1] around 0.5), or ``(None, None)``."""
    from PIL import Image

    conv = next((m for m in extractor.stages.modules()
                 if isinstance(m, torch.nn.Conv2d) and m.in_channels == 3), None)
    if conv is None:
        return None, None
    w = conv.weight.detach().float().numpy()                  # (out, 3, k, k)
    scale = np.abs(w).reshape(len(w), -1).max(axis=1).clip(min=1e-12)
    rgb = (0.5 + w / (2 * scale[:, None, None, None])).transpose(0, 2, 3, 1)
    rows = -(-len(w) // cols)
    grid = Image.new("RGB", (cols * (tile + 2), rows * (tile + 2)), "white")
    for k, f in enumerate(rgb):
        t = Image.fromarray((f * 255).round().astype(np.uint8)).resize((tile, tile),
                                                                       Image.NEAREST)
        grid.paste(t, ((k % cols) * (tile + 2), (k // cols) * (tile + 2)))
    return list(w.shape), _uri(grid, "PNG")


def feature_hierarchy(loaded, root, paths, taps, channels: int = 8, patches: int = 6,
                      batch_size: int = 16) -> dict:
    """Top patches of ``channels`` channels per tap over the images ``root / paths``.

    ``loaded`` is a :class:`~pipeline.backbones.LoadedBackbone`.  Returns
    ``{"taps": [{"tap", "channels_total", "stride", "map_size", "receptive_field",
    "units": [{"channel", "variance", "patches": [{"path", "activation",
    "box"}]}], "grid": data URI}], "filters": {"shape", "grid"}, "n_images",
    "paths"}``; boxes are ``[x0, y0, x1, y1]`` in the preprocessed image.
    """
    pre = loaded.spec.preprocessing
    extractor = build_extractor(loaded, taps)
    kept, stats = _activations(extractor, root, paths, pre, batch_size)
    if not kept:
        return {"taps": [], "filters": {}, "n_images": 0, "paths": []}
    probe = torch.from_numpy(np.stack([decode(root, p, pre) for p in kept[:4]]))
    rf = effective_receptive_field(extractor, probe)
    out = []
    for tap in taps:
        mean, _, _, hw = stats[tap]
        units = _tap_units(stats[tap], rf[tap], pre.input_size, kept, channels, patches)
        out.append({"tap": tap, "channels_total": int(mean.shape[1]),
                    "stride": loaded.spec.tap(tap).stride, "map_size": list(hw),
                    "receptive_field": rf[tap], "units": units,
                    "grid": _grid(units, root, pre)})
    shape, grid = first_filters(extractor)
    return {"taps": out, "filters": {"shape": shape, "grid": grid}, "n_images": len(kept),
            "paths": kept, "input_size": pre.input_size}
