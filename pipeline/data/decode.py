"""Decoding one image file into the pixels a backbone expects.

:func:`load_rgb` / :func:`load_array` decode one file (libjpeg-turbo for plain
JPEGs, PIL for everything else), raising :class:`ImageDecodeError` with a
reason for any file that is not a usable image; :func:`resize_center_crop`
then makes the crop the weights expect.  :class:`CropRule` is the same
resize-and-crop as data, in PIL and numpy only (no torch): what an exported
model's caller applies, written into the model's metadata.
"""

from __future__ import annotations

import io
import logging
import math
import warnings
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)


#: Images larger than this many pixels are refused as decompression bombs.
MAX_PIXELS = 64_000_000


#: Names how files become model input (decoder and resize); part of the feature
#: store's cache key, so a change here never reuses vectors made the old way.
DECODING = "rgb8-libjpeg-turbo/resize-torch-antialias/v2"


#: Photo formats Pillow does not decode (this package loads no plugin for them), by
#: extension, with what they are; :func:`undecoded_format` words the fix.
UNDECODED_FORMATS = {".heic": "a HEIC photo (iPhone)", ".heif": "a HEIF photo",
                     ".cr2": "a Canon raw photo", ".nef": "a Nikon raw photo",
                     ".arw": "a Sony raw photo", ".dng": "a raw photo (DNG)"}


def undecoded_format(path) -> str | None:
    """Why ``path`` cannot be decoded, by its extension, with the fix, when it is a photo
    format Pillow does not read (:data:`UNDECODED_FORMATS`); None otherwise."""
    suffix = Path(path).suffix.lower()
    if suffix not in UNDECODED_FORMATS:
        return None
    return (f"{UNDECODED_FORMATS[suffix]}, a format Pillow cannot decode: convert it to JPEG "
            f"or PNG (e.g. `magick {Path(path).name} {Path(path).stem}.jpg`) and run again")


class ImageDecodeError(Exception):
    """One file could not be turned into an RGB image; ``reason`` says why."""

    def __init__(self, path, reason):
        super().__init__(f"{path}: {reason}")
        self.path = str(path)
        self.reason = reason


def _to_rgb(img):
    """Convert any PIL mode to RGB: alpha over white, 16-bit scaled, CMYK via PIL."""
    from PIL import Image

    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        arr = np.asarray(img, dtype=np.float64)
        top = 65535.0 if img.mode.startswith("I;16") or arr.max() > 255 else 255.0
        arr = np.clip(arr / top * 255.0 + 0.5, 0, 255).astype(np.uint8)
        img = Image.fromarray(arr, mode="L")
    if img.mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
    if img.mode in ("RGBA", "LA", "PA"):
        img = img.convert("RGBA")
        background = Image.new("RGBA", img.size, (255, 255, 255, 255))
        img = Image.alpha_composite(background, img)
    if img.mode != "RGB":
        img = img.convert("RGB")
    return img


def load_rgb(path, target_short_side: int | None = None, max_pixels: int = MAX_PIXELS,
             data: bytes | None = None):
    """Decode ``path`` (or its bytes ``data``) to an RGB PIL image, EXIF orientation applied.

    When ``target_short_side`` is given, JPEGs much larger than it are decoded
    at a reduced DCT scale (``Image.draft``), never below the target.
    Raises :class:`ImageDecodeError` with a short reason for unusable files.
    """
    with _opened(path, max_pixels, data) as img:
        return _pil_decode(img, target_short_side)


def load_array(path, target_short_side: int | None = None, max_pixels: int = MAX_PIXELS,
               data: bytes | None = None) -> np.ndarray:
    """Like :func:`load_rgb`, as an ``(H, W, 3)`` uint8 array, decoded the fast way when it can.

    Plain RGB and grayscale JPEGs that need no DCT scaling (the common case)
    are decoded by libjpeg-turbo through ``simplejpeg``: the same library and
    settings (accurate integer DCT, fancy upsampling) as PIL, so the same
    pixels (tests/test_decoding.py compares them on every bundled photo), in
    about 60% of the time.  Everything else (CMYK, PNG, 16-bit, large JPEGs,
    a missing ``simplejpeg``) is decoded by PIL as in :func:`load_rgb`.
    """
    if data is None:
        data = _read(path)
    with _opened(path, max_pixels, data) as img:
        w, h = img.size
        decoder = _simplejpeg()
        if (decoder is None or img.format != "JPEG" or img.mode not in ("RGB", "L")
                or (target_short_side and min(w, h) >= 2 * target_short_side)):
            return np.array(_pil_decode(img, target_short_side))
        orientation = _orientation(img)
        arr = decoder.decode_jpeg(data, colorspace="RGB", fastdct=False, fastupsample=False,
                                  strict=True)
    return _apply_orientation(arr, orientation)


def _pil_decode(img, target_short_side):
    """Pixels of an opened PIL image: DCT-scaled when large, EXIF-rotated, RGB."""
    from PIL import ImageOps

    if target_short_side and img.format == "JPEG":
        # Scale so the short side stays >= target; draft picks
        # the largest DCT scale that still satisfies the request.
        w, h = img.size
        scale = min(w, h) / target_short_side
        if scale >= 2:
            img.draft("RGB", (math.ceil(w / scale), math.ceil(h / scale)))
    img.load()
    ImageOps.exif_transpose(img, in_place=True)
    return _to_rgb(img)


def _read(path) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise ImageDecodeError(path, f"cannot read file ({exc})") from None


@contextmanager
def _opened(path, max_pixels, data):
    """``with _opened(path, max_pixels, data) as img``: the file opened by PIL
    (header only), refused with a reason when empty, not an image or too large;
    decoding errors inside the block become :class:`ImageDecodeError` too."""
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    if (len(data) if data is not None else _stat_size(path)) == 0:
        raise ImageDecodeError(path, "empty file (0 bytes)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            # Leaving the block closes the file and keeps the decoded pixels.
            with Image.open(io.BytesIO(data) if data is not None else path) as img:
                w, h = img.size
                if w * h > max_pixels:
                    raise ImageDecodeError(
                        path, f"image is {w}x{h} = {w * h:,} pixels, over the "
                        f"{max_pixels:,}-pixel limit (decompression bomb?)")
                yield img
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageDecodeError(path, f"decompression bomb refused ({exc})") from None
    except UnidentifiedImageError:
        raise ImageDecodeError(path, undecoded_format(path)
                               or "not an image file (PIL cannot identify it)") from None
    except (OSError, SyntaxError, ValueError) as exc:  # ValueError: simplejpeg's too
        raise ImageDecodeError(path, f"unreadable or truncated image ({exc})") from None


def _stat_size(path) -> int:
    try:
        return path.stat().st_size
    except OSError as exc:
        raise ImageDecodeError(path, f"cannot read file ({exc})") from None


def _simplejpeg():
    try:
        import simplejpeg
    except ImportError:  # optional in effect: PIL decodes the same pixels, slower
        return None
    return simplejpeg


def _orientation(img) -> int:
    """The EXIF (or XMP) orientation PIL's ``exif_transpose`` would apply; 1 = none."""
    if not any(k in img.info for k in ("exif", "xmp", "XML:com.adobe.xmp")):
        return 1  # reading the EXIF block costs more than decoding a tenth of the photo
    return int(img.getexif().get(0x0112, 1) or 1)


def _apply_orientation(arr: np.ndarray, orientation: int) -> np.ndarray:
    """``arr`` (H, W, C) as displayed under EXIF ``orientation`` (PIL's exif_transpose)."""
    if orientation in (2, 4, 5, 7):
        arr = arr[:, ::-1]                       # mirror left-right first
    turns = {3: 2, 4: 2, 5: 1, 6: 3, 7: 3, 8: 1}.get(orientation, 0)
    if turns:
        arr = np.rot90(arr, k=turns)             # counter-clockwise quarter turns
    return np.ascontiguousarray(arr)


def resize_center_crop(img, size: int, crop_pct: float, interpolation: str,
                       backend: str = "torch") -> np.ndarray:
    """Resize the short side to ``size / crop_pct`` and take the centre ``size`` square.

    ``img`` is an ``(H, W, 3)`` uint8 array or an RGB PIL image.  With
    ``backend="torch"`` bicubic and bilinear use torch's antialiased
    interpolation on uint8, which implements PIL's filters (same kernels,
    support widened by the scale when shrinking): on the flowers it differs
    from PIL's own resize by at most 2 of 255 (mean 0.004), in under half
    PIL's time.  ``backend="pil"`` (and ``nearest`` always) resizes with PIL
    and imports no torch.  Returns uint8 of shape ``(3, size, size)``.
    """
    if interpolation not in ("bicubic", "bilinear", "nearest"):
        raise ValueError(f"unknown interpolation {interpolation!r}; valid: bicubic, "
                         "bilinear, nearest")
    arr = np.asarray(img)
    h, w = arr.shape[:2]
    new_w, new_h, left, top = _geometry(w, h, int(math.floor(size / crop_pct)), size, "round")
    if backend == "pil" or interpolation == "nearest":
        out = np.asarray(pil_resize(arr, (new_w, new_h), interpolation))
        return out[top:top + size, left:left + size].transpose(2, 0, 1).copy()
    import torch
    import torch.nn.functional as F

    # (1, 3, H, W) in channels-last memory: torch's vectorised uint8 path.
    x = torch.from_numpy(np.array(arr, copy=not arr.flags.writeable)).permute(2, 0, 1)
    y = F.interpolate(x.unsqueeze(0), size=(new_h, new_w), mode=interpolation, antialias=True,
                      align_corners=False)
    return y[0, :, top:top + size, left:left + size].contiguous().numpy()


#: How the long side and the crop offset are rounded: ``round`` as
#: :func:`resize_center_crop` (long side rounded, offset floored); ``torchvision``
#: as ``transforms.Resize(int)`` + ``CenterCrop`` (long side truncated, offset rounded).
ROUNDINGS = ("round", "torchvision")


def _geometry(w: int, h: int, short: int, size: int, rounding: str):
    """``(new_w, new_h, left, top)``: the short side resized to ``short``, a centred
    ``size`` square."""
    if rounding == "torchvision":
        long = int(short * max(w, h) / min(w, h))
        new_w, new_h = (short, long) if w <= h else (long, short)
        return new_w, new_h, int(round((new_w - size) / 2.0)), int(round((new_h - size) / 2.0))
    if w <= h:
        new_w, new_h = short, max(1, int(round(h * short / w)))
    else:
        new_w, new_h = max(1, int(round(w * short / h))), short
    return new_w, new_h, (new_w - size) // 2, (new_h - size) // 2


def pil_resize(img, size, interpolation: str):
    """``img`` (PIL image or ``(H, W, 3)`` uint8) resized by PIL to ``size = (w, h)``."""
    from PIL import Image

    if not isinstance(img, Image.Image):
        img = Image.fromarray(np.asarray(img))
    resample = {"bicubic": Image.BICUBIC, "bilinear": Image.BILINEAR,
                "nearest": Image.NEAREST}[interpolation]
    return img.resize(size, resample)


@dataclass(frozen=True)
class CropRule:
    """How a decoded image becomes a model's ``(S, S, 3)`` uint8 input, in PIL and numpy.

    Decode with :func:`load_rgb` (``target_short_side=draft_short_side``: large
    JPEGs decoded at a reduced DCT scale, as training did); when
    ``pre_shrink`` is set, first shrink images whose short side is longer with
    PIL bicubic (what :class:`pipeline.train.datasets.ImageFolderDataset`
    keeps in memory); resize the short side to ``resize_short_side`` with PIL
    ``interpolation``; take the centred ``input_size`` square (``rounding``:
    :data:`ROUNDINGS`).  An exported model carries these fields as metadata.
    """

    input_size: int
    resize_short_side: int
    interpolation: str
    rounding: str = "round"
    pre_shrink: int | None = None
    draft_short_side: int | None = None

    def __post_init__(self):
        if self.interpolation not in ("bicubic", "bilinear", "nearest"):
            raise ValueError(f"unknown interpolation {self.interpolation!r}; valid: bicubic, "
                             "bilinear, nearest")
        if self.rounding not in ROUNDINGS:
            raise ValueError(f"unknown rounding {self.rounding!r}; valid: {', '.join(ROUNDINGS)}")
        if not 0 < int(self.input_size) <= int(self.resize_short_side):
            raise ValueError(f"input_size {self.input_size} must be > 0 and at most "
                             f"resize_short_side {self.resize_short_side}")

    def to_dict(self) -> dict:
        return asdict(self)

    def describe(self) -> str:
        shrink = (f"shrink the shorter side to {self.pre_shrink} px if longer (PIL bicubic), "
                  if self.pre_shrink else "")
        return (f"RGB, {shrink}resize the shorter side to {self.resize_short_side} px "
                f"(PIL {self.interpolation}), centre-crop {self.input_size}x{self.input_size}; "
                f"uint8 (N, {self.input_size}, {self.input_size}, 3)")

    def apply(self, img) -> np.ndarray:
        """The ``(input_size, input_size, 3)`` uint8 crop of an RGB PIL image."""
        if self.pre_shrink:
            w, h = img.size
            scale = self.pre_shrink / min(w, h)
            if scale < 1:
                img = pil_resize(img, (max(1, round(w * scale)), max(1, round(h * scale))),
                                   "bicubic")
        w, h = img.size
        new_w, new_h, left, top = _geometry(w, h, self.resize_short_side, self.input_size,
                                            self.rounding)
        out = np.asarray(pil_resize(img, (new_w, new_h), self.interpolation))
        return np.ascontiguousarray(out[top:top + self.input_size,
                                        left:left + self.input_size])

    def load(self, path) -> np.ndarray:
        """Decode ``path`` and apply the rule; :class:`ImageDecodeError` if unusable."""
        from ..files import read_regular

        try:
            data = read_regular(path)  # never blocks on a FIFO that took a file's place
        except OSError as exc:
            raise ImageDecodeError(path, f"cannot read file ({exc})") from None
        return self.apply(load_rgb(path, target_short_side=self.draft_short_side, data=data))
