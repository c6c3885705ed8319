"""Perceptual hashes of image files: telling copies of one picture from look-alikes.

:func:`perceptual_hashes` decodes each file the way extraction does
(:func:`pipeline.data.decode.load_rgb`: the decompression-bomb limit, EXIF
orientation), small, and keeps its 256-bit DCT hash
(``imagehash.phash(image, hash_size=16)``) packed into 32 bytes;
:func:`hamming` and :func:`close_pairs` count the bits two hashes differ in.
A re-encoded, resized or recoloured copy stays within a few bits of its
original, whatever the images show (docs/leakage.md).  A file that
cannot be decoded, or is flat (nothing to hash), gets no hash and a reason
instead: the caller decides what that means, nothing raises.
"""

from __future__ import annotations

import logging
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from .decode import ImageDecodeError, load_rgb

log = logging.getLogger(__name__)


#: Side of the hash grid: 16 x 16 = 256 bits.  The common 8 x 8 (64 bits) is too
#: coarse off-domain: neighbouring slices of one brain MRI scan differ in 0-2 of 64
#: bits, as little as copies do, but in 12 or more of 256 bits.
HASH_SIZE = 16


#: Bits in one hash.
HASH_BITS = HASH_SIZE * HASH_SIZE


#: Short side a JPEG is decoded at (DCT scaling): phash resizes to 64 x 64, so more
#: pixels only cost time (3,670 flower photos hash in about 8 s on one core).
DECODE_SIDE = 128


#: Standard deviation of the grey image (0-255) below which it is flat: every flat
#: image has the same hash (only the DC term is above the median), so a hash match
#: between flat images says nothing.
FLAT_STD = 2.0


#: The reason given for a flat image (the caller counts them apart from unreadable files).
FLAT = "flat image"


#: Set bits of each byte value.
_POPCOUNT = np.array([bin(v).count("1") for v in range(256)], dtype=np.uint16)


def image_hash(path) -> tuple[np.ndarray | None, str | None]:
    """``(hash (32,) uint8, None)`` of the image file at ``path``, or ``(None, reason)``
    when it cannot be decoded or is flat."""
    import imagehash

    try:
        img = load_rgb(path, target_short_side=DECODE_SIDE)
    except ImageDecodeError as exc:
        return None, exc.reason
    grey = img.convert("L")
    if float(np.asarray(grey, dtype=np.float32).std()) < FLAT_STD:
        return None, f"{FLAT} (grey standard deviation under {FLAT_STD})"
    bits = imagehash.phash(grey, hash_size=HASH_SIZE).hash
    return np.packbits(bits.ravel()), None


def perceptual_hashes(root, paths, workers: int | None = None):
    """Hashes of the files ``root / p`` for ``p`` in ``paths``.

    Returns ``(hashes (n, 32) uint8, problems)``: ``problems[k]`` is None when
    ``hashes[k]`` is the file's hash, else the reason it has none (its row is zeros).
    Files are decoded on ``workers`` threads (default: up to 4; the decoders
    release the GIL).
    """
    try:
        import imagehash  # noqa: F401  (checked here, once, not in every thread)
    except ImportError as exc:
        raise ImportError(
            f"the leakage check's perceptual hash needs the imagehash package ({exc}); "
            "install it with pip install 'imagehash>=4.3,<5' (or pip install -e . again)"
        ) from exc
    root = Path(root)
    workers = workers or min(4, os.cpu_count() or 1)
    hashes = np.zeros((len(paths), HASH_BITS // 8), dtype=np.uint8)
    problems = [None] * len(paths)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        for k, (h, problem) in enumerate(pool.map(image_hash, (root / p for p in paths))):
            if h is None:
                problems[k] = problem
            else:
                hashes[k] = h
    return hashes, problems


def hamming(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Bits in which the packed hashes ``a`` and ``b`` (``(..., 32)`` uint8) differ:
    ``(...)`` int64."""
    return _POPCOUNT[np.bitwise_xor(a, b)].sum(axis=-1, dtype=np.int64)


def close_pairs(hashes: np.ndarray, max_distance: int, block: int = 64):
    """Pairs ``i < j`` of rows of ``hashes`` (``(n, 32)`` uint8) at most ``max_distance``
    bits apart: ``((m, 2) int64, (m,) int64 distances)``.

    Compared ``block`` rows against all at a time, so memory is ``block x n x 32``
    bytes (40 MB for 20,000 hashes), not ``n x n``.
    """
    ij, dist = [np.zeros((0, 2), np.int64)], [np.zeros(0, np.int64)]
    for start in range(0, len(hashes), block):
        D = hamming(hashes[start:start + block, None, :], hashes[None, :, :])   # (b, n)
        rows, cols = np.nonzero(D <= max_distance)
        keep = cols > rows + start                                             # i < j once
        rows, cols = rows[keep], cols[keep]
        ij.append(np.stack([rows + start, cols], axis=1))
        dist.append(D[rows, cols])
    return np.concatenate(ij), np.concatenate(dist)
