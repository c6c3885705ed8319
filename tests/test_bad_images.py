"""Awkward and broken files: each is decoded correctly or skipped with its reason.

Every case is made with PIL in ``tmp_path`` next to a toy folder of 18 good
images and run through the real ``extract`` job with the toy backbone (whose
taps are known by hand: layer1 = mean (R, G) of the centre crop).  A decoded
file must give the taps of the colour it shows; a skipped one must be listed
with its reason in the summary and in the store's ``skipped`` group, and the
run must finish with the 18 good images.
"""

from __future__ import annotations

import io
import os
import struct
import zlib

import numpy as np
import pytest
from conftest import make_folder, toy_expected
from PIL import Image

from pipeline.backbones import get_backbone
from pipeline.data.decode import MAX_PIXELS, load_rgb
from pipeline.extraction.job import ExtractConfig, run_extract
from pipeline.extraction.loader import ImageDataset
from pipeline.store.hdf5 import FeatureStore

N_GOOD = 18


@pytest.fixture
def folder(tmp_path):
    return make_folder(tmp_path / "photos")


def _extract(folder, tmp_path):
    return run_extract(ExtractConfig(
        data=str(folder), backbone="toy", layers=("layer1", "layer2"), out=str(tmp_path / "f"),
        progress=False, batch_size=4, workers=0))


def assert_skipped(summary, rel, *reason_words):
    """``rel`` is out of the rows and listed, with a reason naming ``reason_words``."""
    reasons = dict(summary.skipped)
    assert rel in reasons, f"{rel} not in the summary's skipped list {summary.skipped}"
    for word in reason_words:
        assert word in reasons[rel], f"reason {reasons[rel]!r} lacks {word!r}"
    store = FeatureStore(summary.path)
    assert dict(store.skipped)[rel] == reasons[rel]
    assert rel not in store.paths and len(store) == summary.n_images == N_GOOD


def assert_decoded_as(summary, rel, rgb, atol=1.0):
    """``rel`` is a row of the store whose taps are those of colour ``rgb``."""
    store = FeatureStore(summary.path)
    assert rel in store.paths, f"{rel} missing; skipped: {store.skipped}"
    assert rel not in dict(summary.skipped)
    row = store.paths.index(rel)
    for tap in ("layer1", "layer2"):
        np.testing.assert_allclose(store.X(tap)[row], toy_expected(rgb)[tap], atol=atol)
    assert len(store) == summary.n_images == N_GOOD + 1


def _noise_jpeg(path, size=(64, 48)):
    arr = np.random.default_rng(1).integers(0, 256, size=(size[1], size[0], 3), dtype=np.uint8)
    Image.fromarray(arr).save(path, quality=95)


# ------------------------------------------------------------ skipped files


def test_zero_byte_file(folder, tmp_path):
    (folder / "red" / "empty.jpg").write_bytes(b"")
    assert_skipped(_extract(folder, tmp_path), "red/empty.jpg", "empty file", "0 bytes")


def test_truncated_jpeg(folder, tmp_path):
    _noise_jpeg(folder / "red" / "cut.jpg")
    data = (folder / "red" / "cut.jpg").read_bytes()
    (folder / "red" / "cut.jpg").write_bytes(data[: len(data) // 2])
    assert_skipped(_extract(folder, tmp_path), "red/cut.jpg", "truncated")


def test_text_file_named_jpg(folder, tmp_path):
    (folder / "red" / "readme.jpg").write_text("this is not a picture\n")
    assert_skipped(_extract(folder, tmp_path), "red/readme.jpg", "not an image file")


@pytest.mark.parametrize("width, height, words", [
    (9000, 8000, ("72,000,000 pixels", f"{MAX_PIXELS:,}-pixel limit")),   # the project's limit
    (30000, 30000, ("decompression bomb",)),                              # PIL's own refusal
])
def test_decompression_bomb(folder, tmp_path, width, height, words):
    """A small PNG whose header claims huge dimensions is refused before decoding."""
    buf = io.BytesIO()
    Image.new("RGB", (1, 1), (9, 9, 9)).save(buf, format="PNG")
    data = bytearray(buf.getvalue())
    struct.pack_into(">II", data, 16, width, height)             # IHDR width, height
    struct.pack_into(">I", data, 29, zlib.crc32(bytes(data[12:29])))
    (folder / "red" / "bomb.png").write_bytes(bytes(data))
    assert len(data) < 200
    assert_skipped(_extract(folder, tmp_path), "red/bomb.png", *words)


def test_empty_class_folder(folder, tmp_path):
    (folder / "violet").mkdir()
    summary = _extract(folder, tmp_path)
    assert FeatureStore(summary.path).classes == ["blue", "green", "red"]
    assert_skipped(summary, "violet/", "class folder holds no image")


def test_hidden_files_and_folders(folder, tmp_path):
    (folder / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1")
    (folder / "red" / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1")
    (folder / "red" / "._img_00.png").write_bytes(b"\x00\x05\x16\x07 AppleDouble")
    (folder / "red" / ".thumbs").mkdir()
    Image.new("RGB", (8, 8), (1, 2, 3)).save(folder / "red" / ".thumbs" / "t.png")
    summary = _extract(folder, tmp_path)
    for rel in (".DS_Store", "red/.DS_Store", "red/._img_00.png"):
        assert_skipped(summary, rel, "hidden file")
    assert_skipped(summary, "red/.thumbs/", "hidden folder")
    assert not any("t.png" in p for p in FeatureStore(summary.path).paths)


def test_non_image_files(folder, tmp_path):
    (folder / "red" / "notes.txt").write_text("shot in May")
    (folder / "red" / "Makefile").write_text("all:\n")
    (folder / "LICENSE").write_text("CC-BY")
    summary = _extract(folder, tmp_path)
    assert_skipped(summary, "red/notes.txt", "not an image file name", "'.txt'")
    assert_skipped(summary, "red/Makefile", "not an image file name", "'none'")
    assert_skipped(summary, "LICENSE", "not inside a class folder")


# ------------------------------------------------------------ decoded files


def test_png_with_alpha_is_composited_over_white(folder, tmp_path):
    Image.new("RGBA", (24, 20), (200, 40, 0, 128)).save(folder / "red" / "alpha.png")
    a = 128 / 255
    want = [200 * a + 255 * (1 - a), 40 * a + 255 * (1 - a), 255 * (1 - a)]
    assert_decoded_as(_extract(folder, tmp_path), "red/alpha.png", want)


@pytest.mark.parametrize("transparent", [False, True])
def test_palette_png(folder, tmp_path, transparent):
    img = Image.new("P", (24, 20), 1)
    img.putpalette([0, 0, 0, 30, 90, 150] + [0] * 762)
    kw = {"transparency": 0} if transparent else {}  # index 0 transparent, unused
    img.save(folder / "blue" / "palette.png", **kw)
    assert Image.open(folder / "blue" / "palette.png").mode == "P"
    assert_decoded_as(_extract(folder, tmp_path), "blue/palette.png", (30, 90, 150))


def test_grayscale(folder, tmp_path):
    Image.new("L", (24, 20), 90).save(folder / "green" / "grey.jpg", quality=100)
    assert_decoded_as(_extract(folder, tmp_path), "green/grey.jpg", (90, 90, 90))


def test_cmyk_jpeg(folder, tmp_path):
    Image.new("RGB", (24, 20), (200, 30, 60)).convert("CMYK").save(
        folder / "red" / "cmyk.jpg", quality=100)
    assert Image.open(folder / "red" / "cmyk.jpg").mode == "CMYK"
    assert_decoded_as(_extract(folder, tmp_path), "red/cmyk.jpg", (200, 30, 60), atol=3)


def test_16_bit_png(folder, tmp_path):
    Image.fromarray(np.full((20, 24), 40000, np.uint16)).save(folder / "green" / "deep.png")
    assert Image.open(folder / "green" / "deep.png").mode == "I;16"
    grey = round(40000 / 65535 * 255)  # 156: scaled from 16 bits, not clipped to 255
    assert_decoded_as(_extract(folder, tmp_path), "green/deep.png", (grey,) * 3)


def _rotated_photo(path):
    """Stored 40x20, left half red and right half blue, EXIF orientation 6
    (display rotated 90 degrees clockwise: 20 wide, 40 tall, red on top)."""
    arr = np.zeros((20, 40, 3), np.uint8)
    arr[:, :20] = (255, 0, 0)
    arr[:, 20:] = (0, 0, 255)
    exif = Image.Exif()
    exif[274] = 6
    Image.fromarray(arr).save(path, exif=exif.tobytes(), quality=100)


def test_exif_rotation_is_applied(folder, tmp_path):
    _rotated_photo(folder / "red" / "rotated.jpg")
    assert Image.open(folder / "red" / "rotated.jpg").size == (40, 20)
    img = np.asarray(load_rgb(folder / "red" / "rotated.jpg"))
    assert img.shape == (40, 20, 3)                       # tall once rotated
    assert (img[:15, :, 0] > 200).all() and (img[:15, :, 2] < 60).all()   # red on top
    assert (img[25:, :, 2] > 200).all() and (img[25:, :, 0] < 60).all()   # blue below
    # What the network sees: the centre crop of the tall image, red above blue.
    crop = ImageDataset(folder, ["red/rotated.jpg"], [0], get_backbone("toy").preprocessing,
                        hash_files=False)[0].image
    assert crop.shape == (3, 16, 16)
    assert (crop[0, :6] > 200).all() and (crop[2, :6] < 60).all()
    assert (crop[2, 10:] > 200).all() and (crop[0, 10:] < 60).all()
    summary = _extract(folder, tmp_path)
    half = np.asarray(crop, dtype=float).mean(axis=(1, 2))   # half red, half blue
    assert_decoded_as(summary, "red/rotated.jpg", half, atol=0.01)


def test_non_ascii_file_and_class_names(folder, tmp_path):
    name = "fleur-été-日本.jpg"
    Image.new("RGB", (24, 20), (240, 0, 0)).save(folder / "red" / name, quality=100)
    summary = _extract(folder, tmp_path)
    assert_decoded_as(summary, f"red/{name}", (240, 0, 0), atol=2)
    assert _extract(folder, tmp_path).up_to_date   # the stored name matches the file again
    (folder / "rosé").mkdir()
    for i in range(3):
        Image.new("RGB", (24, 20), (250, 200, 210)).save(folder / "rosé" / f"ß{i}.png")
    store = FeatureStore(_extract(folder, tmp_path / "with-rosé").path)  # new class: new store
    assert store.classes == ["blue", "green", "red", "rosé"] and "rosé/ß0.png" in store.paths


# ------------------------------------------------------------ all at once


def test_one_run_over_every_bad_file_finishes_and_lists_them(folder, tmp_path):
    (folder / "red" / "empty.jpg").write_bytes(b"")
    (folder / "red" / "readme.jpg").write_text("not a picture")
    _noise_jpeg(folder / "red" / "cut.jpg")
    cut = (folder / "red" / "cut.jpg").read_bytes()
    (folder / "red" / "cut.jpg").write_bytes(cut[: len(cut) // 2])
    (folder / "red" / "notes.txt").write_text("x")
    (folder / "red" / ".DS_Store").write_bytes(b"x")
    (folder / "violet").mkdir()
    Image.new("LA", (24, 20), (90, 255)).save(folder / "green" / "grey-alpha.png")
    _rotated_photo(folder / "blue" / "rotated.jpg")
    summary = _extract(folder, tmp_path)
    assert summary.n_images == N_GOOD + 2
    assert sorted(p for p, _ in summary.skipped) == [
        "red/.DS_Store", "red/cut.jpg", "red/empty.jpg", "red/notes.txt", "red/readme.jpg",
        "violet/"]
    again = _extract(folder, tmp_path)
    assert again.up_to_date and sorted(again.skipped) == sorted(summary.skipped)
    (folder / "red" / "notes.txt").unlink()          # the list follows the folder
    third = _extract(folder, tmp_path)
    assert third.n_extracted == 0 and "red/notes.txt" not in dict(third.skipped)


def test_large_jpeg_decodes_at_reduced_dct_scale_never_below_the_target(folder, tmp_path):
    arr = np.zeros((1500, 2000, 3), np.uint8)
    arr[:, :, 1] = 160
    Image.fromarray(arr).save(folder / "green" / "big.jpg", quality=90)
    assert load_rgb(folder / "green" / "big.jpg").size == (2000, 1500)
    # 1/4 scale (500x375) keeps the short side >= 256; 1/8 (250x188) would not.
    assert load_rgb(folder / "green" / "big.jpg", target_short_side=256).size == (500, 375)
    assert load_rgb(folder / "green" / "big.jpg", target_short_side=400).size == (1000, 750)
    assert_decoded_as(_extract(folder, tmp_path), "green/big.jpg", (0, 160, 0), atol=2)


def test_a_link_loop_is_called_a_link_loop(folder, tmp_path):
    """``red/self -> self`` was listed as "not an image file name" (its name has no
    extension); a link that leads nowhere is said to be one, loop or broken."""
    os.symlink("self", folder / "red" / "self")
    os.symlink("gone.txt", folder / "red" / "dangling")
    summary = _extract(folder, tmp_path)
    assert_skipped(summary, "red/self", "symbolic link loop", "remove the link")
    assert_skipped(summary, "red/dangling", "broken link", "gone.txt")
