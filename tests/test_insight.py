"""Insight features: the leakage check (planted duplicates, counted by hand) and its
report section."""

from __future__ import annotations

import logging
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from report_helpers import add_frozen_runs

from pipeline.data.phash import FLAT, close_pairs, hamming, perceptual_hashes
from pipeline.extraction.job import ExtractConfig, run_extract
from pipeline.runs.records import load_records
from pipeline.store.hdf5 import FeatureStore
from pipeline.store.leakage import (
    HASH_MAX,
    HASH_MIN,
    MIN_REFERENCE,
    OUTLIER_Z,
    candidate_pairs,
    exact_pairs,
    find_duplicates,
    hash_threshold,
    nearest_neighbours,
    outlier_cut,
    within_budget,
)
from pipeline.workflows.report import build_report

SAMPLE = Path(__file__).resolve().parent.parent / "pipeline" / "sample_data" / "flowers"


def plant(root: Path) -> Path:
    """6 photos each of daisy, roses, tulips plus planted duplicates.

    Exact: copy_a (daisy, same class), copy_b (a rose filed under tulips), copy_c
    (tulips), copy_d (a rose).  Near: near_0..2, each a photo resized to 90% and
    saved again as JPEG quality 85 (cosine 0.97-0.98 with its original); crop_0, a
    daisy cropped by 2% on each side; grey_0, a tulip in grey (JPEG quality 90).
    """
    files = {}
    for cls in ("daisy", "roses", "tulips"):
        (root / cls).mkdir(parents=True)
        for p in sorted((SAMPLE / cls).glob("*.jpg"))[:6]:
            shutil.copy(p, root / cls / p.name)
        files[cls] = sorted((root / cls).glob("*.jpg"))
    shutil.copy(files["daisy"][0], root / "daisy" / "copy_a.jpg")
    shutil.copy(files["roses"][1], root / "tulips" / "copy_b.jpg")
    shutil.copy(files["tulips"][2], root / "tulips" / "copy_c.jpg")
    shutil.copy(files["roses"][3], root / "roses" / "copy_d.jpg")
    for k, cls in enumerate(("daisy", "roses", "tulips")):
        with Image.open(files[cls][3]) as im:
            im = im.convert("RGB")
            im.resize((round(im.width * 0.9), round(im.height * 0.9)), Image.BICUBIC).save(
                root / cls / f"near_{k}.jpg", quality=85)
    with Image.open(files["daisy"][4]) as im:
        w, h = im.size
        im.crop((round(w * 0.02), round(h * 0.02), w - round(w * 0.02), h - round(h * 0.02))
                ).save(root / "daisy" / "crop_0.jpg", quality=90)
    with Image.open(files["tulips"][4]) as im:
        im.convert("L").save(root / "tulips" / "grey_0.jpg", quality=90)
    return root


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    """The planted folder's efficientnet_lite0 (real weights) layer4 store, and the log."""
    root = tmp_path_factory.mktemp("leak")
    data = plant(root / "data")
    handler = _Collect()
    logging.getLogger("pipeline.extraction.job").addHandler(handler)
    try:
        summary = run_extract(ExtractConfig(data=str(data), layers=("layer4",),
                                            runtime="eager", out=str(root / "features"),
                                            progress=False, batch_size=32))
    finally:
        logging.getLogger("pipeline.extraction.job").removeHandler(handler)
    return FeatureStore(summary.path), handler.messages, root


class _Collect(logging.Handler):
    def __init__(self):
        super().__init__(logging.INFO)
        self.messages = []

    def emit(self, record):
        self.messages.append(record.getMessage())


def test_rule_pieces_by_hand():
    # unit rows: cos(0,1) = 0.99, cos(0,2) = 0, cos(1,2) = sqrt(1 - 0.99^2) ~ 0.141
    Z = np.array([[1.0, 0.0], [0.99, np.sqrt(1 - 0.99 ** 2)], [0.0, 1.0]], np.float32)
    for block in (1, 2, 512):
        index, cosine = nearest_neighbours(Z, k=2, block=block)
        assert index.tolist() == [[1, 2], [0, 2], [1, 0]]
        assert cosine.ravel() == pytest.approx([0.99, 0, 0.99, 0.141, 0.141, 0], abs=1e-3)
    # candidates: the two nearest with cosine >= 0.5, once per pair; a same-file
    # neighbour (rows 0 and 1 share a hash) is an exact pair, never a candidate
    c = candidate_pairs(Z, ["a", "b", "c"], k=2)
    assert c.pairs.tolist() == [[0, 1]] and c.cosine == pytest.approx([0.99])
    assert c.nn_median == pytest.approx(0.99)    # nearest other file: 0.99, 0.99, 0.141
    assert candidate_pairs(Z, ["a", "a", "c"], k=2).pairs.tolist() == []
    # features alone: OUTLIER_Z robust sds of log(1 - cos) below the median
    d = np.array([0.2, 0.25, 0.3, 0.35, 0.4])
    log_d = np.log(d)
    sd = 1.4826 * np.median(np.abs(log_d - np.median(log_d)))
    assert outlier_cut(1 - d) == pytest.approx(1 - np.exp(np.log(0.3) - OUTLIER_Z * sd))
    assert outlier_cut(np.array([0.9, 0.9, 0.9, 0.5])) is None     # no spread, no outliers
    # hash threshold: median - HASH_Z x 1.4826 x MAD, within [HASH_MIN, HASH_MAX]
    assert hash_threshold([120, 130] * 10)[0] == HASH_MAX           # 125 - 4 x 7.4 = 95
    assert hash_threshold([40, 100] * 10)[0] == HASH_MIN            # 70 - 4 x 44.5 < 0
    assert hash_threshold([60, 80] * 10)[0] == 10                   # 70 - 4 x 14.8 = 10.7
    assert hash_threshold([120] * (MIN_REFERENCE - 1))[0] == HASH_MIN   # too few to tell
    # at most 2 images hashed: pairs (0,1) and (1,0)... then (2,3) would bring two more
    assert within_budget(np.array([[0, 1], [0, 1], [2, 3], [1, 2]]), 2) == 2
    assert within_budget(np.array([[0, 1], [2, 3]]), 4) == 2
    assert exact_pairs(["a", "b", "a", "c", "a"]) == [(0, 2), (0, 4), (2, 4)]


def test_perceptual_hash_tells_copies_from_other_photos_and_never_raises(tmp_path):
    photo, other = sorted((SAMPLE / "daisy").glob("*.jpg"))[:2]
    with Image.open(photo) as im:
        im.save(tmp_path / "q75.jpg", quality=75)
        im.resize((im.width // 2, im.height // 2), Image.BICUBIC).save(tmp_path / "half.png")
    (tmp_path / "cut.jpg").write_bytes(photo.read_bytes()[:2000])       # truncated
    (tmp_path / "notes.jpg").write_text("not an image")
    Image.new("RGB", (40, 30), (90, 90, 90)).save(tmp_path / "flat.png")
    names = [photo, other, tmp_path / "q75.jpg", tmp_path / "half.png", tmp_path / "cut.jpg",
             tmp_path / "notes.jpg", tmp_path / "flat.png", tmp_path / "missing.jpg"]
    hashes, problems = perceptual_hashes("/", [str(p) for p in names], workers=2)
    assert problems[:4] == [None] * 4
    assert "truncated" in problems[4] and "not an image" in problems[5]
    assert problems[6].startswith(FLAT) and "cannot read" in problems[7]
    assert (hashes[4:] == 0).all()
    assert hamming(hashes[0], hashes[2]) <= HASH_MIN and hamming(hashes[0], hashes[3]) <= HASH_MIN
    assert hamming(hashes[0], hashes[1]) > HASH_MAX                      # another daisy
    # close_pairs: every pair within the distance (as counted one by one), blockwise
    by_hand = [[a, b] for a in range(4) for b in range(a + 1, 4)
               if hamming(hashes[a], hashes[b]) <= HASH_MIN]
    assert [0, 2] in by_hand and [0, 3] in by_hand and [0, 1] not in by_hand
    for block in (1, 3, 64):
        ij, dist = close_pairs(hashes[:4], HASH_MIN, block=block)
        assert ij.tolist() == by_hand
        assert dist.tolist() == [hamming(hashes[a], hashes[b]) for a, b in ij]


def _split_counts(pairs, split) -> dict:
    """by_split counts of ``pairs`` (path pairs) from the store's ``split`` of each path."""
    names = ("train", "val", "test")
    counts = {f"{a}-{b}": 0 for k, a in enumerate(names) for b in names[k:]}
    for a, b in pairs:
        x, y = sorted((split[a], split[b]), key=names.index)
        counts[f"{x}-{y}"] += 1
    return counts


def test_planted_duplicates_are_found_across_splits_and_classes(planted):
    store, messages, _ = planted
    found = find_duplicates(store)
    pairs = {(p["kind"], *sorted((p["a"]["path"], p["b"]["path"]))) for p in found["pairs"]}
    rose, rose_copy = "roses/15977362155_461030c196_m.jpg", "roses/copy_d.jpg"
    exact = {("daisy/105806915_a9c13e2106_n.jpg", "daisy/copy_a.jpg"),
             ("roses/15186434972_e353da940a.jpg", "tulips/copy_b.jpg"), (rose, rose_copy),
             ("tulips/13513616525_2ee0f049e1.jpg", "tulips/copy_c.jpg")}
    assert {p[1:] for p in pairs if p[0] == "exact"} == exact
    # near_1 is a copy of the rose and of its exact copy: two pairs.  The resized,
    # cropped (2%) and grey copies are confirmed by hash; no natural pair is flagged.
    near = {("daisy/16737503507_431768a927.jpg", "daisy/near_0.jpg"),
            (rose, "roses/near_1.jpg"), (rose_copy, "roses/near_1.jpg"),
            ("tulips/14087792403_f34f37ba3b_m.jpg", "tulips/near_2.jpg"),
            ("daisy/19544831049_0d738d4872_m.jpg", "daisy/crop_0.jpg"),
            ("tulips/14746916178_40403cc57e.jpg", "tulips/grey_0.jpg")}
    assert {p[1:] for p in pairs if p[0] == "near"} == near
    assert {p["by"] for p in found["pairs"] if p["kind"] == "near"} <= {"hash", "hash+features"}
    assert found["rule"] == "features+phash" and found["pretrained"]
    assert found["hash"]["threshold"] >= HASH_MIN and found["near_caveat"] is None
    # counted by where the store put each image (the split is another module's business)
    split = dict(zip(store.paths, (store.SPLITS[c] for c in store.split_codes)))
    for kind, expected in (("exact", exact), ("near", near)):
        assert found[kind]["by_split"] == _split_counts(expected, split)
        assert found[kind]["total"] == len(expected)
        assert found[kind]["cross_split"] == sum(split[a] != split[b] for a, b in expected)
    assert found["exact"]["cross_class"] == 1 and found["near"]["cross_class"] == 0
    leaked = sorted({x for a, b in exact | near for x, y in ((a, b), (b, a))
                     if split[x] == "test" and split[y] == "train"})
    assert found["test_with_train_duplicate"] == leaked and leaked
    # extract warned with the same counts and the store's own thresholds
    warning = [m for m in messages if m.startswith("leakage check")]
    assert len(warning) == 1
    assert "4 exact-duplicate pair(s) (1 across splits, 1 across classes)" in warning[0]
    assert f"and 6 near-duplicate pair(s) ({found['near']['cross_split']} across splits" in (
        warning[0])
    assert (f"6 confirmed by perceptual hash (at most {found['hash']['threshold']} of 256 bits"
            in warning[0])
    assert f"{len(leaked)} test image(s) have one in training" in warning[0]


def test_a_moved_image_folder_leaves_pairs_unconfirmed_and_says_so(planted, tmp_path):
    store = FeatureStore(planted[0].path)
    store.attrs = {**store.attrs, "data_root": str(tmp_path / "moved")}   # as if moved away
    found = find_duplicates(store)
    assert found["exact"]["total"] == 4                       # from the stored hashes
    assert found["hash"]["unreadable"] == found["hash"]["hashed"] > 0
    assert {p["by"] for p in found["pairs"] if p["kind"] == "near"} <= {"features"}
    assert "could not be compared by hash" in found["near_caveat"]
    assert "moved" in found["near_caveat"] and "cannot read file" in found["near_caveat"]


@pytest.fixture(scope="module")
def random_weights(planted):
    """The planted folder through efficientnet_lite0 with random weights, and the log."""
    _, _, root = planted
    handler = _Collect()
    logging.getLogger("pipeline.extraction.job").addHandler(handler)
    try:
        summary = run_extract(ExtractConfig(data=str(root / "data"), layers=("layer4",),
                                            weights="none", runtime="eager",
                                            out=str(root / "random"), progress=False,
                                            batch_size=32))
    finally:
        logging.getLogger("pipeline.extraction.job").removeHandler(handler)
    return FeatureStore(summary.path), handler.messages, root


def test_random_weights_find_no_feature_duplicates_and_say_why(random_weights, planted):
    store, messages, root = random_weights
    found = find_duplicates(store)
    assert store.config["weights"].startswith("random-init")
    assert found["rule"] == "phash" and not found["pretrained"]
    assert "random-init" in found["near_caveat"] and "mean nothing" in found["near_caveat"]
    near = [p for p in found["pairs"] if p["kind"] == "near"]
    # every pair by hash alone at HASH_MIN: the resized and grey copies, not the crop
    assert {p["by"] for p in near} == {"hash"} and {p["similarity"] for p in near} == {None}
    assert all(p["hash_distance"] <= HASH_MIN for p in near)
    assert {p["b"]["path"] for p in near} == {"daisy/near_0.jpg", "roses/near_1.jpg",
                                              "tulips/near_2.jpg", "tulips/grey_0.jpg"}
    assert found["exact"]["total"] == 4
    warning = [m for m in messages if m.startswith("leakage check")]
    assert len(warning) == 1 and "not pretrained" in warning[0]
    assert "every pair compared by perceptual hash" in warning[0]
    # the report says so above the pairs
    add_frozen_runs(store, root / "random_runs", clfs=("logreg",))
    html = build_report(root / "random_runs", root / "random.html").read_text(encoding="utf-8")
    sec = re.search(r'<section id="leakage".*?</section>', html, re.S).group(0)
    assert "has no pretrained weights here (random-init(seed=0))" in sec
    assert "near-duplicates were not searched in them" in sec


def scans(root: Path, per_class: int = 14, size: int = 160, seed: int = 0) -> Path:
    """Grey 'scans' in two classes: a bright elliptic rim on black around smoothed noise,
    like the slices of a brain MRI set (look-alikes at layer4, no two the same)."""
    from PIL import ImageFilter

    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size] / size - 0.5
    for cls in ("a", "b"):
        (root / cls).mkdir(parents=True)
        for k in range(per_class):
            ax, ay, t = rng.uniform(0.30, 0.42), rng.uniform(0.36, 0.46), rng.uniform(-0.3, 0.3)
            u, v = xx * np.cos(t) + yy * np.sin(t), -xx * np.sin(t) + yy * np.cos(t)
            r = np.sqrt((u / ax) ** 2 + (v / ay) ** 2)
            noise = Image.fromarray(rng.integers(0, 255, (size, size), dtype=np.uint8))
            noise = np.asarray(noise.filter(ImageFilter.GaussianBlur(3)), float)
            img = np.where(r < 0.9, 60 + (noise - 128) * 1.5 + (40 if cls == "b" else 0)
                           * (r < 0.3), 0.0)
            img = np.where((r >= 0.9) & (r < 1.0), 220, img)
            Image.fromarray(np.clip(img, 0, 255).astype(np.uint8), "L").save(
                root / cls / f"{cls}{k:02d}.png")
    return root


def test_grey_scans_flag_their_copies_not_their_look_alikes(tmp_path):
    data = scans(tmp_path / "scans")
    with Image.open(data / "a" / "a03.png") as im:     # a re-encoded and a resized copy
        im.save(data / "a" / "copy_q80.jpg", quality=80)
        im.resize((128, 128), Image.BICUBIC).save(data / "b" / "copy_small.png")
    summary = run_extract(ExtractConfig(data=str(data), layers=("layer4",), runtime="eager",
                                        out=str(tmp_path / "features"), progress=False))
    store = FeatureStore(summary.path)
    X = store.X("layer4")
    Z = X / np.linalg.norm(X, axis=1, keepdims=True)
    n = len(Z)
    upper = (Z @ Z.T)[np.triu_indices(n, 1)]
    assert (upper >= 0.95).mean() > 0.25     # one global cosine would flag a quarter of pairs
    found = find_duplicates(store)
    flagged = {tuple(sorted((p["a"]["path"], p["b"]["path"]))) for p in found["pairs"]}
    assert flagged == {("a/a03.png", "a/copy_q80.jpg"), ("a/a03.png", "b/copy_small.png"),
                       ("a/copy_q80.jpg", "b/copy_small.png")}
    assert len(flagged) / (n * (n - 1) / 2) < 0.02
    assert found["hash"]["threshold"] == HASH_MIN   # look-alike scans hash close: the floor


def test_report_lists_pairs_and_scores_the_clean_test_images(planted):
    store, _, root = planted
    runs = root / "runs"
    add_frozen_runs(store, runs, clfs=("logreg",))
    out = build_report(runs, root / "report.html")
    html = out.read_text(encoding="utf-8")
    assert len(html.encode()) < 5_000_000
    m = re.search(r'<section id="leakage".*?</section>', html, re.S)
    assert m
    sec = m.group(0)
    assert "<strong>4</strong> exact-duplicate pairs" in sec
    assert "<strong>6</strong> near-duplicate pairs" in sec
    found = find_duplicates(store)
    assert (f"differ in at most {found['hash']['threshold']} bits" in sec
            and "rule fitted to this store" in sec)
    assert "All 10 pairs" in sec
    assert sec.count("data:image/jpeg;base64,") == 20       # two thumbnails per pair
    n_test = store.split_sizes()["test"]
    leaked = found["test_with_trainval_duplicate"]
    assert f"<strong>{len(found['test_with_train_duplicate'])}</strong> of {n_test} test" in sec
    assert f"<strong>{len(leaked)}</strong> in training or validation" in sec
    # the accuracy on the test images without a duplicate in training or validation
    rec = load_records(runs)[0]
    pred = rec["predictions"]
    keep = [t == p for path, t, p in zip(pred["paths"], pred["y_true"], pred["y_pred"])
            if path not in leaked]
    assert len(keep) == n_test - len(leaked) and leaked
    assert f"<strong>{sum(keep) / len(keep) * 100:.1f}%</strong> on the {len(keep)}" in sec


def test_cv_run_is_rescored_on_images_without_a_duplicate_in_another_fold(planted, tmp_path):
    from pipeline.configs import FitConfig
    from pipeline.workflows.fit import run_fit

    store, _, _ = planted
    [(record, _path)] = run_fit(FitConfig(features=str(store.path), layer="layer4",
                                          protocol="cv"), tmp_path / "runs")
    html = build_report(tmp_path / "runs", tmp_path / "r.html").read_text(encoding="utf-8")
    sec = re.search(r'<section id="leakage".*?</section>', html, re.S).group(0)
    # by hand: a pair leaks when its two images sit in different folds of repeat 0
    folds = dict(zip(store.paths, store.folds[:, 0]))
    found = find_duplicates(store)
    leaked = {x for p in found["pairs"] if folds[p["a"]["path"]] != folds[p["b"]["path"]]
              for x in (p["a"]["path"], p["b"]["path"])}
    assert sorted(leaked) == found["oof_with_train_duplicate"] and leaked
    pred = record["predictions"]
    keep = [t == p for path, t, p in zip(pred["paths"], pred["y_true"], pred["y_pred"])
            if path not in leaked]
    assert "is cross-validated" in sec
    assert f"<strong>{len(leaked)}</strong> images have a duplicate in another fold" in sec
    assert f"<strong>{sum(keep) / len(keep) * 100:.1f}%</strong> on the {len(keep)}" in sec


# ------------------------------------------------------------------ augmentation preview


def _tiles(jpeg: bytes, tile: int = 112):
    """The grid's tiles as arrays: ``[row][column]``."""
    import io

    img = np.asarray(Image.open(io.BytesIO(jpeg)).convert("RGB")).astype(int)
    step = tile + 16
    return [[img[r * step:r * step + tile, c * step:c * step + tile]
             for c in range(img.shape[1] // step)] for r in range(img.shape[0] // step)]


def test_augmentation_preview_draws_the_preset_and_is_reproducible():
    import torch

    from pipeline.backbones import get_backbone
    from pipeline.train.datasets import augmentation_preview

    pre = get_backbone("efficientnet_lite0").preprocessing
    paths = ["daisy/105806915_a9c13e2106_n.jpg", "roses/15186434972_e353da940a.jpg"]
    torch.manual_seed(123)
    before = torch.rand(1)
    torch.manual_seed(123)
    standard = augmentation_preview(SAMPLE, paths, pre, "standard", draws=6, seed=0)
    assert torch.rand(1) == before                 # training's RNG is left as it was
    assert standard == augmentation_preview(SAMPLE, paths, pre, "standard", draws=6, seed=0)
    tiles = _tiles(standard)
    assert len(tiles) == 2 and len(tiles[0]) == 7  # original + 6 draws per image
    draws = tiles[0][1:]
    assert min(np.abs(a - b).mean() for k, a in enumerate(draws) for b in draws[k + 1:]) > 1
    none = _tiles(augmentation_preview(SAMPLE, paths, pre, "none", draws=6, seed=0))[0][1:]
    assert max(np.abs(a - none[0]).mean() for a in none) < 1   # centre crop: all the same


@pytest.fixture(scope="module")
def tuned(tmp_path_factory):
    """A toy store over 3 x 6 real photos, one frozen run and one (tiny) fine-tuning run."""
    from pipeline.train.finetune import FinetuneConfig
    from pipeline.workflows.finetune import run_finetune

    root = tmp_path_factory.mktemp("aug")
    for cls in ("daisy", "roses", "tulips"):
        (root / "data" / cls).mkdir(parents=True)
        for p in sorted((SAMPLE / cls).glob("*.jpg"))[:6]:
            shutil.copy(p, root / "data" / cls / p.name)
    summary = run_extract(ExtractConfig(data=str(root / "data"), backbone="toy",
                                        layers=("layer1",), out=str(root / "f"),
                                        progress=False, workers=0))
    store = FeatureStore(summary.path)
    add_frozen_runs(store, root / "runs", clfs=("logreg",))
    record, path = run_finetune(FinetuneConfig(
        features=str(summary.path), backbone="resnet18", weights="none", input_size=32,
        epochs=1, batch_size=8, views=2, unfreeze="layer4", protocol="holdout"), root / "runs")
    return store, record, root


def test_finetune_run_stores_its_augmentation_preview_and_the_curves_show_it(tuned):
    import base64
    import json

    store, record, root = tuned
    info = json.loads((root / "runs" / f"{record['run_id']}.json").read_text())[
        "augmentation_preview"]
    file = Path(info["file"])
    assert file == (root / "runs" / f"{record['run_id']}.augment.jpg").resolve()
    assert info["preset"] == "standard" and info["draws"] == 6 and info["cached_views"] == 2
    assert "RandomResizedCrop(size=(32, 32), scale=(0.8, 1.0)" in info["transform"]
    assert "ColorJitter(brightness=(0.8, 1.2)" in info["transform"]
    # three training images, one per class, each the first of its class in the store
    train = [p for p, c in zip(store.paths, store.split_codes) if c == 0]
    assert info["paths"] == [next(p for p in train if p.startswith(c + "/"))
                             for c in ("daisy", "roses", "tulips")]
    tiles = _tiles(file.read_bytes())
    assert len(tiles) == 3 and len(tiles[0]) == 7
    html = build_report(root / "runs", root / "report.html").read_text(encoding="utf-8")
    curves = re.search(r'<section id="curves".*?</section>', html, re.S).group(0)
    uri = "data:image/jpeg;base64," + base64.b64encode(file.read_bytes()).decode("ascii")
    assert curves.count(uri) == 1 and "preset <strong>standard</strong>" in curves
    assert "1 augmented view drawn once" in curves
    assert len(html.encode()) < 5_000_000


# ------------------------------------------------------------------ feature hierarchy


def test_hierarchy_record_by_hand_on_the_toy_net(toy_folder, tmp_path):
    """Toy net (conftest): layer1 = (R, G) pooled 2x2, layer2 = (R+G, R-G, R/2) pooled
    4x4, on flat-colour images (colour + 3 x index), so every number is known."""
    from click.testing import CliRunner

    from cli import cli
    from pipeline.workflows.hierarchy import latest_hierarchy

    runs = tmp_path / "runs"
    result = CliRunner().invoke(cli, ["hierarchy", "--data", str(toy_folder), "--backbone",
                                      "toy", "--channels", "2", "--patches", "3",
                                      "--runs", str(runs)])
    assert result.exit_code == 0, result.output
    record = latest_hierarchy(runs)
    assert Path(result.output.strip().splitlines()[-1]).is_file()
    assert record["n_images"] == 18 and [t["tap"] for t in record["taps"]] == ["layer1",
                                                                              "layer2"]
    l1, l2 = record["taps"]
    # receptive fields: 1x1 convolutions after 2x2 (layer1) and 2x2 + 2x2 (layer2) pooling
    assert (l1["receptive_field"], l2["receptive_field"]) == (2, 4)
    assert l1["map_size"] == [8, 8] and l2["map_size"] == [4, 4]
    # layer1: R (0, 200, 240 + 3i) varies more than G (0, 160, 3i): R first
    assert [u["channel"] for u in l1["units"]] == [0, 1]
    red = l1["units"][0]["patches"]
    assert [p["path"] for p in red] == ["red/img_05.png", "red/img_04.png", "red/img_03.png"]
    assert [p["activation"] for p in red] == pytest.approx([255, 252, 249])
    assert all(p["box"][2] - p["box"][0] == 2 for p in red)
    # layer2 per class (blue, green, red): R+G 0/160/240, R-G 0/-160/240, R/2 0/0/120,
    # so R-G varies most, then R+G
    assert [u["channel"] for u in l2["units"]] == [1, 0]
    assert record["filters"]["shape"] == [2, 3, 1, 1]
    assert record["filters"]["grid"].startswith("data:image/png;base64,")
    # the report shows the record as it is
    from report_helpers import add_frozen_runs as add_runs
    from report_helpers import make_store

    add_runs(make_store(toy_folder, tmp_path / "features"), runs, clfs=("logreg",))
    html = build_report(runs, tmp_path / "report.html").read_text(encoding="utf-8")
    sec = re.search(r'<section id="hierarchy".*?</section>', html, re.S).group(0)
    assert sec.count(l1["grid"]) == 1 and sec.count(l2["grid"]) == 1
    assert record["filters"]["grid"] in sec and "From 18 of your images" in sec
    assert "receptive field 2 px" in sec and "rows: channels 0, 1" in sec
    # the toy images are flat, so no pair of them can be compared by perceptual hash
    leak = re.search(r'<section id="leakage".*?</section>', html, re.S).group(0)
    assert "could not be compared by hash" in leak and "flat image" in leak
