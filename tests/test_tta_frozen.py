"""Flip test-time augmentation of frozen features (``extract --tta flip``).

A toy network that is not mirror-symmetric (a horizontal difference, then a ReLU),
16 x 16 PNGs (so decoding, resizing and cropping are exact): a flip store's vector is
the mean of the plain vectors of the image and of a mirrored copy of its file; every
runtime computes it the same; a head fitted on the flip store predicts the store's
test probabilities again from the files, and its ONNX export matches predict.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from conftest import TOY
from PIL import Image

from pipeline.backbones import load_backbone, register_backbone
from pipeline.configs import ExtractConfig, FitConfig
from pipeline.extraction.forward import build_extractor
from pipeline.extraction.job import run_extract
from pipeline.store.hdf5 import FeatureStore
from pipeline.workflows.export import run_export
from pipeline.workflows.fit import run_fit
from pipeline.workflows.predict import load_run_model, run_predict


def build_asym():
    """Stage ``a`` (tap layer1): ReLU of R[x] - R[x+1] and of G[x+1] - B[x] (a 1x2 kernel),
    then 2x2 average pooling; stage ``b`` (tap layer2): a 1x1 mix, ReLU, 2x2 pooling.
    A mirror changes both taps' pooled vectors (unlike the symmetric toy network's)."""
    import torch.nn as nn

    net = nn.Module()
    net.a = nn.Sequential(nn.Conv2d(3, 2, (1, 2), bias=False), nn.ReLU(), nn.AvgPool2d(2))
    net.b = nn.Sequential(nn.Conv2d(2, 3, 1, bias=False), nn.ReLU(), nn.AvgPool2d(2))
    with torch.no_grad():
        w = torch.zeros(2, 3, 1, 2)
        w[0, 0, 0] = torch.tensor([1.0, -1.0])
        w[1, 1, 0, 1], w[1, 2, 0, 0] = 1.0, -1.0
        net.a[0].weight.copy_(w)
        net.b[0].weight.copy_(torch.tensor([[1.0, 0.5], [-0.5, 1.0], [0.3, -1.0]]).view(3, 2, 1, 1))
    return net


ASYM = replace(TOY, name="toy_asym",
               description="a horizontal difference and ReLU: not mirror-symmetric (tests only)",
               build=build_asym,
               load_weights=lambda model, weights: "toy-asym-known-weights",
               imagenet_identity=lambda: "toy-asym-known-weights")
register_backbone(ASYM, replace=True)

TAPS = ("layer1", "layer2")
COLOURS = {"amber": (200, 120, 30), "moss": (60, 150, 70), "slate": (70, 90, 170)}


def textured(root: Path, mirrored: bool = False, per_class: int = 8) -> Path:
    """16 x 16 PNGs, a left-to-right ramp biased to a colour per class, plus noise
    (the same images, mirrored, when ``mirrored``)."""
    rng = np.random.default_rng(0)
    ramp = np.linspace(-60, 60, 16)[None, :, None]
    for c, (name, rgb) in enumerate(COLOURS.items()):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            arr = np.clip(rng.normal(0, 35, (16, 16, 3)) + np.array(rgb) + (c - 1) * ramp,
                          0, 255).astype(np.uint8)
            img = Image.fromarray(arr)
            if mirrored:
                img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
            img.save(root / name / f"{i:02d}.png")
    return root


def extract(folder: Path, out: Path, tta: str = "none") -> FeatureStore:
    summary = run_extract(ExtractConfig(data=str(folder), backbone="toy_asym", layers=TAPS,
                                        tta=tta, runtime="eager", out=str(out), progress=False,
                                        workers=0, batch_size=5))
    return FeatureStore(summary.path)


@pytest.fixture(scope="module")
def stores(tmp_path_factory):
    """The flip store and the plain one of the same folder (one output folder), and the
    plain store of the mirrored copies of its files."""
    root = tmp_path_factory.mktemp("tta")
    folder = textured(root / "img")
    flip, plain = extract(folder, root / "f", "flip"), extract(folder, root / "f")
    mirror = extract(textured(root / "mirror" / "img", mirrored=True), root / "m")
    return {"root": root, "folder": folder, "flip": flip, "plain": plain, "mirror": mirror,
            "runs": root / "runs"}


def test_flip_store_holds_the_mean_of_the_image_and_its_mirrored_file(stores):
    flip, plain, mirror = stores["flip"], stores["plain"], stores["mirror"]
    assert flip.path.name == "img_toy_asym_avg_flip.h5" and plain.path.name == "img_toy_asym_avg.h5"
    assert flip.paths == plain.paths == mirror.paths
    assert (flip.tta, plain.tta) == ("flip", "none") and "tta" not in plain.config
    for tap in TAPS:
        want = (plain.X(tap) + mirror.X(tap)) / 2
        np.testing.assert_allclose(flip.X(tap), want, rtol=1e-6, atol=1e-4)
        assert np.abs(plain.X(tap) - mirror.X(tap)).max() > 1.0     # the mirror matters here
    # a second run finds its own store: no forward pass, neither store taken for the other
    again = run_extract(ExtractConfig(data=str(stores["folder"]), backbone="toy_asym",
                                      layers=TAPS, tta="flip", runtime="eager",
                                      out=str(stores["root"] / "f"), progress=False, workers=0))
    assert again.up_to_date and again.path == flip.path
    assert any(line.startswith("test-time augmentation: flip") for line in again.describe())
    methods = [json.loads(s.attrs["cost"])["method"] for s in (flip, plain)]
    assert "doubled: flip TTA" in methods[0] and "doubled" not in methods[1]


@pytest.mark.parametrize("runtime", ["onnx", "openvino"])
def test_every_runtime_averages_with_the_mirror(runtime, tmp_path):
    from pipeline.extraction import runtimes as rt

    if not rt.installed(runtime):
        pytest.skip(f"{runtime} is not installed")
    loaded = load_backbone("toy_asym")
    flip = build_extractor(loaded, TAPS, "avg", "flip")
    plain = build_extractor(loaded, TAPS, "avg")
    assert rt.model_key(flip) != rt.model_key(plain)
    batch = torch.from_numpy(np.random.default_rng(1).integers(0, 256, (3, 3, 16, 16),
                                                               dtype=np.uint8))
    runner = rt.make_runner(flip, runtime, torch.device("cpu"), ASYM.preprocessing,
                            precision="fp32", cache=rt.ExportCache(cache_dir=tmp_path))
    with torch.inference_mode():
        got = [o.float().numpy() for o in runner(batch)]
        want = [o.numpy() for o in flip(batch)]
        mirrored = [o.numpy() for o in plain(torch.flip(batch, dims=(3,)))]
        direct = [o.numpy() for o in plain(batch)]
    for g, w, m, d in zip(got, want, mirrored, direct, strict=True):
        np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-3)
        np.testing.assert_allclose(w, (d + m) / 2, rtol=1e-6, atol=1e-4)


def _crops(path, files) -> np.ndarray:
    import onnxruntime as ort

    from pipeline.data.decode import CropRule

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    rule = CropRule(**json.loads(session.get_modelmeta().custom_metadata_map["crop_rule"]))
    return session, np.stack([rule.load(f) for f in files])


def test_a_flip_run_predicts_and_exports_what_it_was_scored_with(stores, tmp_path):
    """predict on the run's saved model gives the record's test probabilities (computed
    from the stored flip vectors) from the image files; the export passes its own parity
    check and ONNX Runtime gives predict's probabilities on the same files."""
    from pipeline.calibration import scale

    ((record, _path),) = run_fit(FitConfig(features=str(stores["flip"].path), layer="layer2",
                                           clf="logreg", protocol="holdout"), stores["runs"])
    record = record.to_dict()
    assert record["features"]["tta"] == "flip" and "flip TTA" in record["label"]
    files = [Path(stores["flip"].data_root) / p for p in record["predictions"]["paths"]]
    model = load_run_model(record["run_id"], stores["runs"])
    assert model.describe()["tta"] == "flip"
    temperature, model.bundle["temperature"] = model.temperature, 1.0
    raw, errors = model.predict_proba(files)
    assert not errors
    np.testing.assert_allclose(raw, record["predictions"]["proba"], atol=2e-5)
    classes = record["classes"]
    preds = run_predict(record["run_id"], files, stores["runs"], top_k=len(classes))
    predicted = np.array([[dict(p.top)[c] for c in classes] for p in preds])
    np.testing.assert_allclose(predicted, scale(raw, temperature), atol=1e-5)

    out = tmp_path / "flip.onnx"
    res = run_export(record["run_id"], out, stores["runs"])
    assert res.max_difference < 1e-5 and res.metadata["tta"] == "flip"
    session, crops = _crops(out, files)
    exported = session.run(None, {"images": crops})[0]
    np.testing.assert_allclose(exported, predicted, atol=1e-5)
    assert {p.key: p.value for p in onnx.load(str(out)).metadata_props}["tta"] == "flip"


def test_class_map_of_a_flip_score_sums_to_it():
    """The CAM of a linear head on flip-averaged features (the image's map and its mirror's
    mapped back) averages to the head's score over its positions, as a plain CAM does,
    and a mirrored image gets the mirrored map."""
    from pipeline.models.cam import linear_cam
    from pipeline.models.frozen import mirrored_mean

    extractor = build_extractor(load_backbone("toy_asym"), ["layer1"], "avg", "flip")
    weight = torch.tensor([[1.0, -2.0], [0.5, 1.5], [-1.0, 0.25]])
    x = torch.from_numpy(np.random.default_rng(2).integers(0, 256, (4, 3, 16, 16))).float()
    targets = [0, 1, 2, 1]
    cam = mirrored_mean(extractor, lambda b, t: linear_cam(extractor.maps(b)["layer1"],
                                                           weight, t))
    maps, of_mirror = cam(x, targets), cam(torch.flip(x, dims=(3,)), targets)
    assert extractor.tta == "flip"                              # put back after
    # the mirror's map is this map mirrored: each half sits where its pixels are
    np.testing.assert_allclose(torch.flip(of_mirror, dims=(2,)).numpy(), maps.numpy(),
                               rtol=1e-5, atol=1e-3)
    with torch.no_grad():
        scores = (extractor(x)[0] @ weight.T)[torch.arange(4), torch.tensor(targets)]
        plain = linear_cam(extractor.maps(x)["layer1"], weight, targets).mean(dim=(1, 2))
    np.testing.assert_allclose(maps.mean(dim=(1, 2)).numpy(), scores.numpy(), rtol=1e-5)
    assert np.abs(plain.numpy() - scores.numpy()).max() > 1.0   # the mirror's half counts
