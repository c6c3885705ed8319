"""Files to model input: the fast JPEG path gives PIL's pixels, the resize
follows PIL's filters, and the threaded batch loader keeps order and failures.

References are computed with PIL itself (``Image.open`` + ``exif_transpose``
for decoding, ``Image.resize`` of the whole image then a centre crop for the
resize), which is how the weights' own preprocessing is defined.
"""

from __future__ import annotations

import threading

import numpy as np
import pytest
from PIL import Image

from pipeline.backbones import get_backbone
from pipeline.data import decode as data
from pipeline.data.decode import load_array, load_rgb, resize_center_crop
from pipeline.data.manifest import bundled_data_root, scan
from pipeline.extraction.loader import BatchLoader, ImageDataset


@pytest.fixture(scope="module")
def photos():
    m = scan(bundled_data_root())
    return [m.root / p for p in m.paths]


class CountingDecoder:
    """The real simplejpeg module, counting its decode calls."""

    def __init__(self, module):
        self.module, self.calls = module, 0

    def decode_jpeg(self, *args, **kwargs):
        self.calls += 1
        return self.module.decode_jpeg(*args, **kwargs)


@pytest.fixture
def counted(monkeypatch):
    import simplejpeg

    spy = CountingDecoder(simplejpeg)
    monkeypatch.setattr(data, "_simplejpeg", lambda: spy)
    return spy


def _pil_reference_crop(img: Image.Image, size, crop_pct, resample):
    """torchvision/timm eval preprocessing done by PIL: resize the short side, centre-crop."""
    scale = int(size / crop_pct)
    w, h = img.size
    new = (scale, round(h * scale / w)) if w <= h else (round(w * scale / h), scale)
    full = np.asarray(img.resize(new, resample))
    top, left = (new[1] - size) // 2, (new[0] - size) // 2
    return full[top:top + size, left:left + size].transpose(2, 0, 1)


# ------------------------------------------------------------------ decoding


def test_fast_path_gives_pils_pixels_on_every_bundled_photo(photos, counted):
    for path in photos:
        fast = load_array(path, target_short_side=256)
        np.testing.assert_array_equal(fast, np.asarray(load_rgb(path, target_short_side=256)),
                                      err_msg=str(path))
    assert counted.calls == len(photos) == 150   # every one went the fast way


def test_without_simplejpeg_pil_decodes_the_same_array(photos, monkeypatch):
    fast = [load_array(p) for p in photos[:10]]
    monkeypatch.setattr(data, "_simplejpeg", lambda: None)
    for path, want in zip(photos[:10], fast):
        np.testing.assert_array_equal(load_array(path), want)


def _quadrants(w=40, h=24):
    arr = np.zeros((h, w, 3), np.uint8)
    arr[: h // 2, : w // 2] = (250, 0, 0)
    arr[: h // 2, w // 2:] = (0, 250, 0)
    arr[h // 2:, : w // 2] = (0, 0, 250)
    arr[h // 2:, w // 2:] = (250, 250, 0)
    return arr


@pytest.mark.parametrize("orientation", range(1, 9))
def test_every_exif_orientation_is_applied_as_pil_does(orientation, tmp_path, counted):
    path = tmp_path / f"o{orientation}.jpg"
    exif = Image.Exif()
    exif[0x0112] = orientation
    Image.fromarray(_quadrants()).save(path, exif=exif.tobytes(), quality=95)
    got = load_array(path)
    want = np.asarray(load_rgb(path))        # PIL's ImageOps.exif_transpose
    assert got.shape == want.shape == ((40, 24, 3) if orientation >= 5 else (24, 40, 3))
    np.testing.assert_array_equal(got, want)
    assert counted.calls == 1


def test_grayscale_jpeg_fast_path_is_pils_grey_to_rgb(tmp_path, counted):
    grey = np.random.default_rng(0).integers(0, 256, size=(30, 50), dtype=np.uint8)
    Image.fromarray(grey, mode="L").save(tmp_path / "g.jpg", quality=90)
    got = load_array(tmp_path / "g.jpg")
    np.testing.assert_array_equal(got, np.asarray(load_rgb(tmp_path / "g.jpg")))
    assert got.shape == (30, 50, 3) and counted.calls == 1


def test_cmyk_and_large_jpegs_and_pngs_take_the_pil_path(tmp_path, counted):
    Image.new("CMYK", (30, 20), (0, 255, 255, 0)).save(tmp_path / "cmyk.jpg")
    Image.new("RGB", (1200, 1100), (10, 200, 30)).save(tmp_path / "big.jpg")
    Image.new("RGB", (30, 20), (10, 200, 30)).save(tmp_path / "small.png")
    assert load_array(tmp_path / "cmyk.jpg")[0, 0].tolist() == [255, 0, 0]
    # 1/4 DCT scale
    assert load_array(tmp_path / "big.jpg", target_short_side=256).shape == (275, 300, 3)
    assert load_array(tmp_path / "small.png").shape == (20, 30, 3)
    assert counted.calls == 0


# ------------------------------------------------------------------ resize


@pytest.mark.parametrize("interpolation, resample", [("bicubic", Image.BICUBIC),
                                                     ("bilinear", Image.BILINEAR)])
def test_resize_follows_pils_filter_on_photos(photos, interpolation, resample):
    worst, total = 0, 0.0
    for path in photos[::5]:
        img = load_rgb(path)
        got = resize_center_crop(np.asarray(img), 224, 0.875, interpolation)
        want = _pil_reference_crop(img, 224, 0.875, resample)
        diff = np.abs(got.astype(int) - want.astype(int))
        worst, total = max(worst, int(diff.max())), total + diff.mean()
    assert got.shape == (3, 224, 224) and got.dtype == np.uint8
    assert worst <= 2 and total / len(photos[::5]) < 0.05


def test_resize_antialiases_when_shrinking():
    """Stripes one pixel on, two off, shrunk 4x, must average to a third of 255
    as PIL's filter does (a plain bicubic samples them: values 0 to 151)."""
    row = (np.arange(1024) % 3 == 0).astype(np.uint8) * 255
    img = np.repeat(np.tile(row, (1024, 1))[:, :, None], 3, axis=2)
    got = resize_center_crop(img, 224, 0.875, "bicubic").astype(int)
    want = _pil_reference_crop(Image.fromarray(img), 224, 0.875, Image.BICUBIC)
    assert np.abs(got - 85).max() <= 13
    assert np.abs(got - want.astype(int)).max() <= 2


def test_resize_of_pil_image_and_array_agree_and_the_pil_backend_is_pils(photos):
    img = load_rgb(photos[0])
    np.testing.assert_array_equal(resize_center_crop(img, 64, 0.875, "bicubic"),
                                  resize_center_crop(np.asarray(img), 64, 0.875, "bicubic"))
    np.testing.assert_array_equal(resize_center_crop(img, 64, 0.875, "nearest"),
                                  _pil_reference_crop(img, 64, 0.875, Image.NEAREST))
    np.testing.assert_array_equal(resize_center_crop(img, 32, 0.875, "bilinear", backend="pil"),
                                  _pil_reference_crop(img, 32, 0.875, Image.BILINEAR))
    with pytest.raises(ValueError, match="valid: bicubic, bilinear, nearest"):
        resize_center_crop(img, 32, 0.875, "lanczos")


# ------------------------------------------------------------------ loader


@pytest.fixture
def mixed_dataset(tmp_path, photos):
    """11 photos with a broken file in the middle: batches of 4 hold a failure."""
    import shutil

    names = []
    for k, path in enumerate(photos[:11]):
        shutil.copy(path, tmp_path / f"{k:02d}.jpg")
        names.append(f"{k:02d}.jpg")
    (tmp_path / "05.jpg").write_bytes(b"not a jpeg")
    return ImageDataset(tmp_path, names, list(range(100, 111)),
                        get_backbone("efficientnet_lite0").preprocessing)


def _flatten(batches):
    return [(idx, None if b is None else b.numpy(), shas, fails) for idx, b, shas, fails in batches]


def test_loader_keeps_order_and_failures_for_any_number_of_threads(mixed_dataset):
    runs = {w: _flatten(BatchLoader(mixed_dataset, 4, workers=w)) for w in (0, 1, 3)}
    base = runs[0]
    assert [b[0] for b in base] == [[100, 101, 102, 103], [104, 106, 107], [108, 109, 110]]
    assert [f[0] for f in base[1][3]] == [105] and "not an image" in base[1][3][0][2]
    for w in (1, 3):
        for got, want in zip(runs[w], base, strict=True):
            assert got[0] == want[0] and got[2] == want[2] and got[3] == want[3]
            np.testing.assert_array_equal(got[1], want[1])
    assert len(BatchLoader(mixed_dataset, 4)) == 3


def test_abandoned_loader_stops_its_threads_and_restores_torch_threads(mixed_dataset):
    import torch

    before = torch.get_num_threads()
    batches = iter(BatchLoader(mixed_dataset, 2, workers=2, prefetch=2))
    next(batches)
    assert any(t.name.startswith("decode") for t in threading.enumerate())
    batches.close()
    assert not any(t.name.startswith("decode") for t in threading.enumerate())
    assert torch.get_num_threads() == before
