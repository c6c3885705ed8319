"""Predict with any run, export one ONNX classifier, deploy it without torch.

Runs on resnet18 with random weights (weights none) and the toy backbone, on
textured images of several sizes (JPEG and PNG), so every resize and crop
matters.  Two kinds of check: ``predict`` reproduces what training computed
(the run record's own test probabilities), and the exported graph equals
``predict``'s model on the same uint8 batch (1e-5) and end to end from files.
"""

from __future__ import annotations

import csv
import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from click.testing import CliRunner
from conftest import make_folder
from PIL import Image

import cli
from pipeline.configs import FitConfig
from pipeline.extraction.job import ExtractConfig, run_extract
from pipeline.store.hdf5 import FeatureStore
from pipeline.workflows.export import run_export
from pipeline.workflows.fit import run_fit
from pipeline.workflows.predict import load_run_model, run_predict

ROOT = Path(__file__).resolve().parent.parent
COLOURS = {"amber": (200, 120, 30), "moss": (60, 150, 70), "slate": (70, 90, 170)}


def textured_folder(root: Path, per_class: int = 12) -> Path:
    """Noisy images biased to a colour per class, each its own size, JPEG and PNG."""
    rng = np.random.default_rng(0)
    for c, (name, rgb) in enumerate(COLOURS.items()):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            w, h = int(rng.integers(40, 110)), int(rng.integers(40, 110))
            noise = rng.normal(0, 40, (h, w, 3)) + np.array(rgb)
            stripes = 30 * np.sin(np.arange(w) / (2 + c + i % 3))[None, :, None]
            arr = np.clip(noise + stripes, 0, 255).astype(np.uint8)
            ext = "jpg" if i % 2 else "png"
            Image.fromarray(arr).save(root / name / f"{i:02d}.{ext}")
    return root


def image_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.suffix in (".jpg", ".png"))


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A resnet18 (random weights) store at layer2 of 36 images and a runs folder."""
    root = tmp_path_factory.mktemp("export")
    folder = textured_folder(root / "img")
    summary = run_extract(ExtractConfig(data=str(folder), backbone="resnet18", weights="none",
                                        layers=("layer2",), out=str(root / "f"),
                                        progress=False, workers=0, batch_size=12))
    return {"root": root, "folder": folder, "store": str(summary.path),
            "runs": root / "runs", "files": image_files(folder)}


def _fit(world, clf: str, layer: str = "layer2", store=None) -> dict:
    ((record, _path),) = run_fit(FitConfig(features=store or world["store"], layer=layer,
                                           clf=clf, protocol="holdout"), world["runs"])
    return record


def _proba_of(preds, classes) -> np.ndarray:
    """Rows of full probability vectors from predictions made with top_k = n_classes."""
    return np.array([[dict(p.top)[c] for c in classes] for p in preds])


def _test_paths(record, world) -> list[Path]:
    data_root = Path(FeatureStore(world["store"]).data_root)
    return [data_root / p for p in record["predictions"]["paths"]]


def _session(path) -> ort.InferenceSession:
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def _crops(model_path, files) -> np.ndarray:
    """uint8 (n, S, S, 3) crops made by the exported model's own rule."""
    from pipeline.data.decode import CropRule

    meta = _session(model_path).get_modelmeta().custom_metadata_map
    rule = CropRule(**json.loads(meta["crop_rule"]))
    return np.stack([rule.load(f) for f in files])


# ------------------------------------------------------------------ preprocessing


def test_crop_rules_reproduce_the_training_transforms(tmp_path):
    """The PIL+numpy rule an exported model carries makes the pixels training made."""
    from pipeline.backbones import Preprocessing
    from pipeline.extraction.loader import ImageDataset
    from pipeline.models import get_model_kind
    from pipeline.train.baselines import cnn_preprocessing, pixel_matrix
    from pipeline.train.datasets import ImageFolderDataset, image_transform

    def crop_rule(kind, bundle):
        return get_model_kind(kind)(bundle).crop_rule()

    folder = textured_folder(tmp_path / "img", per_class=4)
    files = image_files(folder)
    big = tmp_path / "big.jpg"      # larger than every resize side: the bicubic pre-shrink acts
    Image.fromarray(np.random.default_rng(1).integers(0, 255, (301, 217, 3), np.uint8)).save(big)
    files.append(big)
    pre = Preprocessing(input_size=40, crop_pct=0.8, interpolation="bicubic",
                        mean=(0.5, 0.4, 0.3), std=(0.2, 0.25, 0.3))
    mean, std = np.array(pre.mean)[:, None, None], np.array(pre.std)[:, None, None]
    # fine-tuning with the trunk cache: load_rgb + image_transform(pre, "none")
    from pipeline.data.decode import load_rgb

    rule = crop_rule("finetune", {"preprocessing": pre.to_dict(), "cut": 3})
    transform = image_transform(pre, "none")
    for f in files:
        want = transform(load_rgb(f, target_short_side=50)).numpy()
        got = (rule.load(f).transpose(2, 0, 1) / 255.0 - mean) / std
        np.testing.assert_allclose(got, want, atol=1e-5)
    # the CNN (and fine-tuning without the cache): ImageFolderDataset, bicubic pre-shrink
    cnn = cnn_preprocessing(24)
    rule = crop_rule("cnn", {"params": {"size": 24}})
    assert rule.pre_shrink == 28 and rule.rounding == "torchvision"
    ds = ImageFolderDataset("/", [str(f) for f in files], [0] * len(files), cnn, augment="none")
    for f, (x, _) in zip(files, ds):
        got = (rule.load(f).transpose(2, 0, 1) / 255.0 - 0.5) / 0.25
        np.testing.assert_allclose(got, x.numpy(), atol=1e-5)
    # pixels and MLP: pixel_matrix
    X, ok, _ = pixel_matrix("/", [str(f) for f in files], 16)
    rule = crop_rule("mlp", {"params": {"size": 16}})
    np.testing.assert_array_equal(
        X, np.stack([rule.load(f).transpose(2, 0, 1).reshape(-1) for f in files]))
    # frozen heads: ImageDataset resizes with torch's antialiased kernels (PIL's filters):
    # the same geometry, pixels within 2 of 255
    rule = crop_rule("frozen", {"store_config": {"backbone": "resnet18"}})
    rpre = Preprocessing(input_size=224, crop_pct=224 / 256, interpolation="bilinear")
    ds = ImageDataset("/", [str(f) for f in files], range(len(files)), rpre, hash_files=False)
    for f, item in zip(files, ds):
        diff = np.abs(rule.load(f).transpose(2, 0, 1).astype(int) - item.image.astype(int))
        assert diff.max() <= 2 and diff.mean() < 0.05


# ------------------------------------------------------------------ frozen heads


def _confident_head(world, record, clf, tmp_path) -> Path:
    """The run's head refitted with a weak penalty (C = 10) and saved as a ``.skops``:
    the searched C is the smallest on this tiny set, so its probabilities are nearly flat."""
    from pipeline.heads.persist import save_head
    from pipeline.heads.selection import make_head

    store = FeatureStore(world["store"])
    bundle = load_run_model(record["run_id"], world["runs"]).bundle
    model = make_head(clf, 10.0).fit(store.X("layer2", "train"), store.y("train"))
    path = tmp_path / f"confident-{clf}.skops"
    save_head({**bundle, "model": model}, path)
    return path


@pytest.fixture(scope="module")
def batch32(world):
    """32 uint8 crops by the frozen heads' rule and their features from the eager cut
    network: the model parts of predict, fed the same batch as the exported graph."""
    from pipeline.backbones import load_backbone
    from pipeline.extraction.forward import build_extractor
    from pipeline.models import get_model_kind

    rule = get_model_kind("frozen")({"store_config": {"backbone": "resnet18"}}).crop_rule()
    crops = np.stack([rule.load(f) for f in world["files"][:32]])
    extractor = build_extractor(load_backbone("resnet18", "none"), ["layer2"], "avg")
    with torch.inference_mode():
        feats = extractor(torch.from_numpy(crops).permute(0, 3, 1, 2))[0].numpy()
    return crops, feats


def _frozen_parity(world, batch32, ref, out, classes, files) -> np.ndarray:
    """Export ``ref``; the graph = predict's parts on the same 32 crops (1e-5); from
    ``files``, the .onnx path vs the run's (PIL vs torch resize); the graph's output."""
    from pipeline.calibration import scale
    from pipeline.heads.selection import predict_proba

    res = run_export(ref, out, world["runs"], overwrite=True)
    assert res.max_difference < 1e-5
    crops, feats = batch32
    np.testing.assert_array_equal(_crops(out, world["files"][:32]), crops)
    exported = _session(out).run(None, {"images": crops})[0]
    model = load_run_model(ref, world["runs"])
    np.testing.assert_allclose(exported, scale(predict_proba(model.bundle["model"], feats),
                                               model.temperature), atol=1e-5, rtol=0)
    if files:
        by_run = _proba_of(run_predict(ref, files, world["runs"], top_k=3), classes)
        by_onnx = _proba_of(run_predict(str(out), files, top_k=3), classes)
        assert np.abs(by_onnx - by_run).max() < 0.02
        assert np.mean(by_onnx.argmax(1) == by_run.argmax(1)) >= 0.9
    return exported


def _assert_as_recorded(world, record, predicted, atol):
    """The saved model without its temperature gives the record's test probabilities
    (kept as training evaluated them), and ``predicted`` (what ``predict`` gave) is that
    scaled by the temperature the run fitted on validation."""
    from pipeline.calibration import scale

    model = load_run_model(record["run_id"], world["runs"])
    temperature = model.temperature
    assert temperature == record["calibration"]["temperature"] != 1.0
    model.bundle["temperature"] = 1.0
    raw, errors = model.predict_proba(_test_paths(record, world))
    assert not errors
    np.testing.assert_allclose(raw, record["predictions"]["proba"], atol=atol)
    np.testing.assert_allclose(predicted, scale(raw, temperature), atol=1e-5)


@pytest.mark.parametrize("clf", ["logreg", "linear-svm"])
def test_linear_head_export_equals_predict(world, batch32, tmp_path, clf):
    """predict = the run record's test probabilities; the exported graph = predict's
    model parts (eager cut network + the scikit-learn head's predict_proba) on the
    same 32 uint8 images within 1e-5, for the run's head and a confident one; end to
    end from files within the torch-vs-PIL resize difference."""
    record = _fit(world, clf)
    classes = record["classes"]
    test = run_predict(record["run_id"], _test_paths(record, world), world["runs"], top_k=3)
    _assert_as_recorded(world, record, _proba_of(test, classes), 2e-5)
    out = tmp_path / f"{clf}.onnx"
    _frozen_parity(world, batch32, record["run_id"], out, classes, [])
    confident = str(_confident_head(world, record, clf, tmp_path))
    exported = _frozen_parity(world, batch32, confident, out, classes, world["files"][::3])
    assert exported.max(axis=1).mean() > 0.9            # the confident head is


@pytest.mark.parametrize("clf", ["svm", "knn"])
def test_svm_and_knn_heads_export_through_skl2onnx(world, batch32, tmp_path, clf):
    """The calibrated RBF SVM and kNN heads: skl2onnx's graph joined to the trunk's
    equals predict on the same 32 crops within 1e-5, and from files."""
    record = _fit(world, clf)
    exported = _frozen_parity(world, batch32, record["run_id"], tmp_path / f"{clf}.onnx",
                              record["classes"], world["files"][::6])
    assert exported.shape == (32, 3)
    proto = onnx.load(str(tmp_path / f"{clf}.onnx"))
    assert [o.name for o in proto.graph.output] == ["probabilities"]
    assert {p.key: p.value for p in proto.metadata_props}["method"] == clf


def test_export_metadata_names_classes_rule_run_and_tap(world, tmp_path):
    record = _fit(world, "logreg")
    out = tmp_path / "m.onnx"
    run_export(record["run_id"], out, world["runs"])
    proto = onnx.load(str(out))
    meta = {p.key: p.value for p in proto.metadata_props}
    assert json.loads(meta["classes"]) == ["amber", "moss", "slate"]
    assert meta["input_size"] == "224" and meta["resize_short_side"] == "256"
    assert meta["interpolation"] == "bilinear" and meta["tap"] == "layer2"
    assert meta["run_id"] == record["run_id"] and meta["backbone"] == "resnet18"
    assert "resize the shorter side to 256 px (PIL bilinear), centre-crop 224x224" in \
        meta["preprocessing"]
    (inp,) = proto.graph.input
    assert inp.name == "images" and inp.type.tensor_type.elem_type == onnx.TensorProto.UINT8
    dims = [d.dim_value or d.dim_param for d in inp.type.tensor_type.shape.dim]
    assert dims == ["n", 224, 224, 3]
    # one image or many: rows are probabilities
    one = _session(out).run(None, {"images": _crops(out, world["files"][:1])})[0]
    assert one.shape == (1, 3) and abs(one.sum() - 1) < 1e-5
    with pytest.raises(Exception, match="exists"):
        run_export(record["run_id"], out, world["runs"])


def test_an_uncalibrated_svm_head_is_refused_naming_the_alternatives(tmp_path):
    """An SVM whose smallest class had one image keeps raw margins (softmaxed by predict),
    which ONNX's SVM operator does not compute: predict works, export says what to do."""
    from pipeline.heads.persist import load_head, save_head
    from pipeline.heads.selection import make_head

    folder = make_folder(tmp_path / "toy", per_class=8)
    summary = run_extract(ExtractConfig(data=str(folder), backbone="toy", layers=("layer1",),
                                        out=str(tmp_path / "f"), progress=False, workers=0))
    ((record, _),) = run_fit(FitConfig(features=str(summary.path), layer="layer1", clf="svm",
                                       protocol="holdout"), tmp_path / "runs")
    bundle = load_head(record["model_file"])
    store = FeatureStore(summary.path)
    raw = make_head("svm", 1.0, calibrated=False).fit(store.X("layer1"), store.labels)
    head = tmp_path / "raw-svm.skops"
    save_head({**bundle, "model": raw}, head)
    preds = run_predict(str(head), [folder / "red"])
    assert {p.label for p in preds} == {"red"}
    res = CliRunner().invoke(cli.cli, ["export", "--model", str(head), "--out",
                                       str(tmp_path / "svm.onnx")])
    assert res.exit_code == 2, res.output
    assert "uncalibrated" in res.output and "--clf logreg" in res.output
    assert "predict --model" in res.output and not (tmp_path / "svm.onnx").exists()


def test_sgd_head_exports_exactly(tmp_path):
    folder = make_folder(tmp_path / "toy", per_class=8)
    summary = run_extract(ExtractConfig(data=str(folder), backbone="toy",
                                        layers=("layer1", "layer2"), out=str(tmp_path / "f"),
                                        progress=False, workers=0))
    ((record, _),) = run_fit(FitConfig(features=str(summary.path), layer="layer2",
                                       clf="sgd-logreg", protocol="holdout"), tmp_path / "runs")
    import pipeline as wb

    out = tmp_path / "sgd.onnx"
    res = wb.export(wb.Run(record), out)            # the API: a Run, its model file
    assert res.path == out and res.metadata["method"] == "sgd-logreg"
    assert res.metadata["run_id"] == record["run_id"]
    files = image_files(folder)
    by_run = run_predict(record["run_id"], files, tmp_path / "runs", top_k=3)
    by_onnx = run_predict(str(out), files, top_k=3)   # toy: nearest, PIL on both paths
    classes = record["classes"]
    np.testing.assert_allclose(_proba_of(by_onnx, classes), _proba_of(by_run, classes),
                               atol=1e-5)


# ------------------------------------------------------------------ torch runs


def _finetune(world, **kw):
    from pipeline.train.finetune import FinetuneConfig
    from pipeline.workflows.finetune import run_finetune

    cfg = dict(features=world["store"], backbone="resnet18", weights="none", input_size=32,
               epochs=1, batch_size=8, lr=1e-2, views=1, patience=None, checkpoint_dir=None,
               protocol="holdout")
    cfg.update(kw)
    record, _ = run_finetune(FinetuneConfig(**cfg), world["runs"])
    return record


@pytest.mark.parametrize("cache, tolerance, tta, classify_at", [("off", 2e-5, "none", None),
                                                                ("auto", 5e-3, "none", None),
                                                                ("off", 2e-5, "flip", None),
                                                                ("auto", 5e-3, "flip", None),
                                                                ("auto", 5e-3, "none", "layer3")])
def test_finetuned_export_equals_predict(world, tmp_path, cache, tolerance, tta, classify_at):
    """predict = the network training evaluated (the record's test probabilities;
    the trunk cache holds float16 activations, hence its tolerance); the exported graph
    = predict on the same 32 uint8 images within 1e-5, and end to end from files.  With
    flip TTA all three average each image with its mirror (training's test predictions
    from the cached mirrored view); classified at layer3, the saved network ends there."""
    record = _finetune(world, unfreeze="layer3" if classify_at else "layer4", cache=cache,
                       tta=tta, classify_at=classify_at)
    classes = record["classes"]
    if classify_at:
        bundle = torch.load(record["model_file"], map_location="cpu", weights_only=True)
        assert bundle["stage_names"][-1] == "layer3" and "layer4" not in bundle["stage_names"]
    assert record["finetune"]["cached_trunk"] == (cache == "auto")
    assert record["finetune"]["tta"] == tta
    test = run_predict(record["run_id"], _test_paths(record, world), world["runs"], top_k=3)
    _assert_as_recorded(world, record, _proba_of(test, classes), tolerance)

    out = tmp_path / "ft.onnx"
    run_export(record["run_id"], out, world["runs"])
    files = world["files"][:32]
    crops = _crops(out, files)
    assert crops.shape == (32, 32, 32, 3)
    classifier = load_run_model(record["run_id"], world["runs"]).classifier()
    with torch.inference_mode():
        eager = classifier(torch.from_numpy(crops)).numpy()
    exported = _session(out).run(None, {"images": crops})[0]
    np.testing.assert_allclose(exported, eager, atol=1e-5, rtol=0)
    if tta == "flip":   # the mirror is in the graph: without it the answer differs
        from pipeline.train.deploy import as_classifier

        plain = load_run_model(record["run_id"], world["runs"])
        one_view = as_classifier(plain.body(tta=False), plain.temperature)
        with torch.inference_mode():
            single = one_view(torch.from_numpy(crops)).numpy()
        assert np.abs(single - exported).max() > 1e-4
    files = world["files"][::3]
    by_run = _proba_of(run_predict(record["run_id"], files, world["runs"], top_k=3), classes)
    by_onnx = _proba_of(run_predict(str(out), files, top_k=3), classes)
    np.testing.assert_allclose(by_onnx, by_run, atol=1e-5)


@pytest.mark.parametrize("kind", ["pixels", "mlp", "cnn"])
def test_baselines_predict_as_trained_and_export(world, tmp_path, kind):
    from pipeline.configs import BaselineConfig
    from pipeline.workflows.baseline import run_baseline

    epochs = None if kind == "pixels" else 2
    record, _ = run_baseline(BaselineConfig(kind=kind, features=world["store"], epochs=epochs,
                                            protocol="holdout"), world["runs"])
    classes = record["classes"]
    test = run_predict(record["run_id"], _test_paths(record, world), world["runs"], top_k=3)
    np.testing.assert_allclose(_proba_of(test, classes), record["predictions"]["proba"],
                               atol=2e-5)
    out = tmp_path / f"{kind}.onnx"
    run_export(record["run_id"], out, world["runs"])
    files = world["files"][::3]
    by_run = _proba_of(run_predict(record["run_id"], files, world["runs"], top_k=3), classes)
    by_onnx = _proba_of(run_predict(str(out), files, top_k=3), classes)
    np.testing.assert_allclose(by_onnx, by_run, atol=1e-5)


def test_a_crafted_torch_model_file_is_refused_unrun(tmp_path, world):
    from test_untrusted_files import Payload

    marker = tmp_path / "pwned"
    evil = tmp_path / "run.pt"
    torch.save({"top_state": Payload(marker), "classes": ["a"]}, evil)
    res = CliRunner().invoke(cli.cli, ["predict", "--model", str(evil), str(world["files"][0])])
    assert res.exit_code == 1 and "run.pt" in res.output and "never unpickled" in res.output
    res = CliRunner().invoke(cli.cli, ["export", "--model", str(evil), "--out",
                                       str(tmp_path / "m.onnx")])
    assert res.exit_code == 1 and not marker.exists()


# ------------------------------------------------------------------ CLI and deployment


@pytest.fixture(scope="module")
def exported(world):
    record = _fit(world, "logreg")
    out = world["root"] / "deploy" / "model.onnx"
    res = CliRunner().invoke(cli.cli, ["export", "--model", record["run_id"][:22], "--out",
                                       str(out), "--runs", str(world["runs"])])
    assert res.exit_code == 0, res.output
    assert res.output.strip().splitlines()[-1] == str(out)
    assert "resize the shorter side to 256 px" in res.output
    return record, out


def test_cli_predict_with_onnx_prints_a_table_and_writes_top_k(world, exported, tmp_path):
    record, out = exported
    res = CliRunner().invoke(cli.cli, ["predict", "--model", str(out), str(world["folder"]),
                                       "--top-k", "2", "--out", str(tmp_path / "p.csv")])
    assert res.exit_code == 0, res.output
    lines = res.output.splitlines()
    assert lines[0].split() == ["path", "label", "prob", "top-2"] and len(lines) == 36 + 2
    rows = list(csv.DictReader(open(tmp_path / "p.csv")))
    assert len(rows) == 36 and all(len(r["top_k"].split(";")) == 2 for r in rows)
    by_run = run_predict(record["run_id"], [world["folder"]], world["runs"])
    assert np.mean([r["label"] == p.label for r, p in zip(rows, by_run)]) >= 0.9
    res = CliRunner().invoke(cli.cli, ["export", "--model", record["run_id"], "--out", str(out),
                                       "--runs", str(world["runs"])])
    assert res.exit_code == 1 and "--overwrite" in res.output


SCRIPT = """
import runpy, sys
sys.argv = ["cli.py", "predict", "--model", sys.argv[1], *sys.argv[2:]]
try:
    runpy.run_path("cli.py", run_name="__main__")
except SystemExit as exc:
    assert not exc.code, exc.code
heavy = sorted(m for m in sys.modules
               if m.split(".")[0] in ("torch", "torchvision", "timm", "sklearn"))
print("HEAVY", heavy)
"""


def test_predict_with_an_onnx_model_never_imports_torch(world, exported):
    """The whole CLI process: ONNX Runtime, PIL and numpy; no torch, no scikit-learn."""
    _record, out = exported
    res = subprocess.run([sys.executable, "-c", SCRIPT, str(out), str(world["files"][0]),
                          str(world["files"][1])], capture_output=True, text=True, cwd=ROOT,
                         timeout=120)
    assert res.returncode == 0, res.stderr
    assert "HEAVY []" in res.stdout
    assert str(world["files"][0]) in res.stdout


def docs_deploy_snippet() -> str:
    """The ten-line classifier of the docs' Deploy page (docs/deploy.md), as written there."""
    section = (ROOT / "docs" / "deploy.md").read_text(encoding="utf-8").split("# Deploy", 1)[1]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_docs_deploy_snippet_runs_with_onnxruntime_pillow_numpy_only(world, exported, tmp_path):
    record, out = exported
    code = docs_deploy_snippet()
    assert len(code.strip().splitlines()) <= 10
    photo = world["files"][3]
    (tmp_path / "model.onnx").write_bytes(out.read_bytes())
    (tmp_path / "photo.jpg").write_bytes(photo.read_bytes())
    check = code + ("\nimport sys\nprint('MODULES', sorted({m.split('.')[0] for m in sys.modules}"
                    " & {'torch', 'pipeline', 'sklearn', 'torchvision'}))\n")
    res = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True,
                         cwd=tmp_path, timeout=120)
    assert res.returncode == 0, res.stderr
    assert "MODULES []" in res.stdout
    (pred,) = run_predict(str(out), [photo], top_k=1)
    label, probability = res.stdout.splitlines()[0].split()
    assert label == pred.label and abs(float(probability) - pred.probability) < 1e-4


def test_real_lite0_head_on_bundled_photos(tmp_path):
    """The pretrained efficientnet_lite0 (bicubic, 224 of 256) on 12 bundled photos:
    a logreg head on its layer4 exports; same uint8 batch within 1e-5, from files
    (PIL vs torch resize) within 1e-3 and the same labels."""
    from pipeline.backbones import get_backbone, weights_identity
    from pipeline.data.manifest import bundled_data_root
    from pipeline.extraction.features import extract_features
    from pipeline.heads.persist import save_head
    from pipeline.heads.selection import make_head

    classes = ["daisy", "roses", "tulips"]
    files = [f for c in classes for f in sorted((bundled_data_root() / c).glob("*.jpg"))[:4]]
    (res,) = extract_features(Path("."), [str(f) for f in files],
                              ExtractConfig(batch_size=12, workers=0, runtime="eager"),
                              ["layer4"], hash_files=False)
    y = np.repeat(np.arange(3), 4)
    config = {"backbone": "efficientnet_lite0", "pooling": "avg", "runtime": "eager",
              "weights": weights_identity(get_backbone("efficientnet_lite0"), "imagenet")}
    head = tmp_path / "lite0.skops"
    save_head({"model": make_head("logreg", 1.0).fit(res.features["layer4"], y),
               "classes": classes, "tap": "layer4", "store_config": config,
               "weights_source": "imagenet"}, head)
    out = tmp_path / "lite0.onnx"
    meta = run_export(head, out).metadata
    assert (meta["input_size"], meta["resize_short_side"], meta["interpolation"]) == \
        ("224", "256", "bicubic")
    by_run = _proba_of(run_predict(str(head), files, top_k=3), classes)
    by_onnx = _proba_of(run_predict(str(out), files, top_k=3), classes)
    assert np.abs(by_onnx - by_run).max() < 1e-3
    assert (by_onnx.argmax(1) == by_run.argmax(1)).all() and (by_run.argmax(1) == y).all()


def test_an_onnx_file_not_written_by_export_gives_a_message(tmp_path):
    from onnx import TensorProto, helper

    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
    plain = tmp_path / "plain.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(plain))
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(b"not a protobuf at all")
    photo = tmp_path / "p.png"
    Image.new("RGB", (8, 8)).save(photo)
    for path, message in ((plain, "not written by `python cli.py export`"),
                          (broken, "cannot be loaded by ONNX Runtime")):
        res = CliRunner().invoke(cli.cli, ["predict", "--model", str(path), str(photo)])
        assert res.exit_code == 1 and message in res.output and str(path) in res.output
