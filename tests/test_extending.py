"""Adding a head or a kind of trained model is adding one class: both are defined here,
registered here, and go through fit (holdout and cv), predict and export on a real
store with no library file touched.

The head is nearest centroid (scikit-learn's ``NearestCentroid``); the model kind
is "templates", a linear classifier on raw pixels saved as ``.npz``.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from conftest import TOY_COLOURS, make_folder

from pipeline.configs import FitConfig
from pipeline.errors import UsageError
from pipeline.extraction.job import ExtractConfig, run_extract
from pipeline.heads.registry import HeadKind, get_head, register_head, unregister_head
from pipeline.models.base import TrainedModel
from pipeline.models.registry import (
    load_model,
    register_model_kind,
    unregister_model_kind,
)
from pipeline.workflows.export import run_export
from pipeline.workflows.fit import run_fit
from pipeline.workflows.predict import run_predict

ROOT = Path(__file__).resolve().parent.parent


class NearestCentroidHead(HeadKind):
    """Nearest (shrunken) centroid: its discriminant ``-|x - c_k|^2 + 2 log prior_k`` is
    affine in x up to ``-|x|^2``, a term common to every class, so it exports as linear."""

    name = "nearest-centroid"
    param = "shrink_threshold"
    grid = (0.1, 0.5, 2.0)
    larger_is_stronger = True
    unweighted = "scikit-learn's NearestCentroid takes no class weights"
    estimators = ("NearestCentroid",)
    export = "linear"

    def estimator(self, value, seed, calibrated, weight):
        from sklearn.neighbors import NearestCentroid

        return NearestCentroid(shrink_threshold=value)


def read_templates(path) -> dict:
    with np.load(path, allow_pickle=False) as data:
        return {k: data[k] for k in data.files}


class Templates(TrainedModel):
    """One template image per class: logits ``10 (x . t_k - |t_k|^2 / 2)`` on pixels in
    [0, 1], channel-major (the pixel baseline's layout)."""

    kind = "templates"
    title = "template classifier"
    suffixes = ("npz",)
    read = staticmethod(read_templates)

    @classmethod
    def claims(cls, bundle):
        return "templates" in bundle

    def __init__(self, bundle, path=None, record=None):
        super().__init__(bundle, path, record)
        self.classes = [str(c) for c in bundle["classes"]]

    def crop_rule(self):
        from pipeline.train.deploy import pixel_rule

        return pixel_rule(int(self.bundle["size"]))

    def body(self):
        import torch

        from pipeline.train.deploy import Pixels

        t = torch.from_numpy(self.bundle["templates"]).float()
        linear = torch.nn.Linear(t.shape[1], t.shape[0])
        with torch.no_grad():
            linear.weight.copy_(10 * t)
            linear.bias.copy_(-5 * (t * t).sum(1))
        return Pixels(linear)


@pytest.fixture
def centroid_head():
    head = register_head(NearestCentroidHead)
    yield head
    unregister_head(head.name)


@pytest.fixture
def templates_kind():
    kind = register_model_kind(Templates)
    yield kind
    unregister_model_kind(kind.kind)


@pytest.fixture
def toy_store(tmp_path):
    folder = make_folder(tmp_path / "toy", per_class=8)
    summary = run_extract(ExtractConfig(data=str(folder), backbone="toy",
                                        layers=("layer1", "layer2"), out=str(tmp_path / "f"),
                                        progress=False, workers=0))
    return folder, str(summary.path)


def _proba(preds, classes) -> np.ndarray:
    return np.array([[dict(p.top)[c] for c in classes] for p in preds])


def test_the_new_kinds_touch_no_library_file():
    for path in [*(ROOT / "pipeline").rglob("*.py"), ROOT / "cli.py"]:
        text = path.read_text(encoding="utf-8")
        for name in ("nearest-centroid", "NearestCentroid", "template classifier", "Templates"):
            assert name not in text, (name, path)


def test_a_head_registered_here_fits_predicts_and_exports(centroid_head, toy_store, tmp_path):
    folder, store = toy_store
    runs = tmp_path / "runs"
    fit = FitConfig(features=str(store), layer="layer1", clf="nearest-centroid")
    ((record, path),) = run_fit(replace(fit, protocol="holdout", class_weight="auto"), runs)
    assert record.method == "nearest-centroid" and record.kind == "frozen"
    assert set(record.hyperparameters) == {"shrink_threshold", "class_weight"}
    assert [s["shrink_threshold"] for s in record.search] == [2.0, 0.5, 0.1]  # strongest first
    assert record.scored_metrics["accuracy"] == 1.0           # flat colours: separable
    assert get_head("nearest-centroid") is centroid_head
    # cv: nested selection inside every outer fold
    ((cv, _),) = run_fit(replace(fit, protocol="cv"), runs)
    assert len(cv.cv["fold_scores"]) == 15 and cv.cv["mean"] == 1.0
    # predict: the saved skops head loads (scikit-learn's types only) and labels files
    files = sorted(folder.rglob("*.png"))
    preds = run_predict(record.run_id, files, runs, top_k=3)
    assert [p.label for p in preds] == [f.parent.name for f in files]
    # export: the head is read off as one linear layer and equals predict
    out = tmp_path / "centroid.onnx"
    res = run_export(record.run_id, out, runs)
    assert res.max_difference < 1e-5 and res.metadata["method"] == "nearest-centroid"
    assert res.metadata["kind"] == "frozen" and res.metadata["tap"] == "layer1"
    by_onnx = run_predict(str(out), files, top_k=3)
    np.testing.assert_allclose(_proba(by_onnx, record.classes),
                               _proba(preds, record.classes), atol=1e-5)
    # the head takes no class weights: refused with the fix, as knn is
    with pytest.raises(UsageError, match="NearestCentroid takes no class weights"):
        run_fit(replace(fit, class_weight="balanced"), runs)


def test_a_model_kind_registered_here_predicts_and_exports(templates_kind, tmp_path):
    folder = make_folder(tmp_path / "toy", per_class=3)
    size = 8
    classes = sorted(TOY_COLOURS)
    templates = np.stack([np.repeat(np.array(TOY_COLOURS[c]) / 255.0, size * size)
                          for c in classes])
    path = tmp_path / "colours.npz"
    np.savez(path, templates=templates, classes=np.array(classes), size=size)
    model = load_model(path)
    assert isinstance(model, Templates) and model.classes == classes
    assert model.describe()["method"] == "templates" and model.run_id == "colours"
    files = sorted(folder.rglob("*.png"))
    preds = run_predict(str(path), files, top_k=3)
    assert [p.label for p in preds] == [f.parent.name for f in files]
    res = run_export(str(path), tmp_path / "colours.onnx")
    assert res.metadata["kind"] == "templates" and res.metadata["run_id"] == "colours"
    by_onnx = run_predict(str(tmp_path / "colours.onnx"), files, top_k=3)
    np.testing.assert_allclose(_proba(by_onnx, classes), _proba(preds, classes), atol=1e-5)
    np.savez(tmp_path / "other.npz", weights=templates)
    with pytest.raises(OSError, match="holds no template classifier"):
        load_model(tmp_path / "other.npz")
