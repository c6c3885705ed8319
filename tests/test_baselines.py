"""Baselines on a tiny synthetic ImageFolder: valid run records on the store's split."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import make_folder
from PIL import Image

from pipeline.configs import BaselineConfig
from pipeline.errors import DataError, UsageError
from pipeline.extraction.job import ExtractConfig, run_extract
from pipeline.heads.persist import load_head
from pipeline.runs.records import load_records
from pipeline.store.hdf5 import FeatureStore
from pipeline.train.baselines import make_cnn, make_mlp, pixel_matrix
from pipeline.workflows.baseline import run_baseline


def _baseline(kind, store, runs, **opts):
    """``run_baseline`` on the store's holdout split; ``opts`` override the kind's
    defaults (``epochs`` and ``seed`` are fields of the config, the rest its options)."""
    known = {k: opts.pop(k) for k in ("epochs", "seed") if k in opts}
    return run_baseline(BaselineConfig(kind=kind, features=store, protocol="holdout",
                                       options=opts, **known), runs)


@pytest.fixture(scope="module")
def store_path(tmp_path_factory):
    root = tmp_path_factory.mktemp("bl")
    folder = make_folder(root / "img", per_class=10, size=(40, 36))
    (folder / "red" / "broken.jpg").write_bytes(b"\xff\xd8 truncated")   # skipped by extract
    summary = run_extract(ExtractConfig(data=str(folder), backbone="toy", layers=("layer1",),
                                        out=str(root / "f"), progress=False, workers=0))
    return summary.path


def test_pixel_matrix_shape_and_skips(tmp_path):
    Image.new("RGB", (50, 40), (255, 0, 0)).save(tmp_path / "a.png")
    (tmp_path / "b.png").write_bytes(b"")
    X, ok, skipped = pixel_matrix(tmp_path, ["a.png", "b.png"], 8)
    assert X.shape == (1, 3 * 8 * 8) and ok.tolist() == [0] and skipped[0][0] == "b.png"
    assert X.reshape(3, 8, 8)[0].min() == 255 and X.reshape(3, 8, 8)[1].max() == 0


def test_model_shapes():
    assert make_mlp(12, 4)(torch.zeros(2, 12)).shape == (2, 4)
    assert make_cnn(5, width=8)(torch.zeros(2, 3, 32, 32)).shape == (2, 5)


@pytest.mark.parametrize("kind, opts", [
    ("pixels", {"size": 8}),
    ("mlp", {"size": 8, "epochs": 3}),
    ("cnn", {"size": 32, "epochs": 2, "width": 8}),
])
def test_baseline_writes_a_valid_record_on_the_store_split(store_path, tmp_path, kind, opts):
    record, path = _baseline(kind, store_path, tmp_path / "runs", seed=0, **opts)
    store = FeatureStore(store_path)
    saved = json.loads(Path(path).read_text())
    assert saved["kind"] == "baseline" and saved["method"] == kind
    assert saved["split_sizes"] == store.split_sizes()
    assert saved["predictions"]["paths"] == store.rel_paths("test")
    assert saved["predictions"]["y_true"] == store.y("test").tolist()
    assert len(saved["predictions"]["y_pred"]) == store.split_sizes()["test"]
    assert np.allclose(np.sum(saved["predictions"]["proba"], axis=1), 1.0, atol=1e-3)
    assert 0.0 <= saved["metrics"]["test"]["accuracy"] <= 1.0
    assert saved["trainable_params"] > 0
    model_file = Path(saved["model_file"])
    assert model_file.is_file()
    if kind == "pixels":
        assert "C" in saved["hyperparameters"] and saved["search"]
        assert load_head(model_file)["classes"] == store.classes
    else:
        assert len(saved["history"]) >= 1 and "lr" in saved["history"][0]
        assert "state_dict" in torch.load(model_file, weights_only=True)
    assert [r["run_id"] for r in load_records(tmp_path / "runs")] == [saved["run_id"]]


def test_pixels_separate_flat_colours(store_path, tmp_path):
    record, _ = _baseline("pixels", store_path, tmp_path / "runs", size=4)
    assert record["metrics"]["test"]["accuracy"] == 1.0


def test_bad_kind_or_option_is_a_usage_error(store_path, tmp_path):
    with pytest.raises(UsageError, match="valid: pixels, mlp, cnn"):
        _baseline("svm", store_path, tmp_path)
    with pytest.raises(UsageError, match="no option"):
        _baseline("pixels", store_path, tmp_path, epochs=3)


def test_missing_test_image_is_refused(tmp_path):
    folder = make_folder(tmp_path / "img", per_class=6, size=(20, 20))
    summary = run_extract(ExtractConfig(data=str(folder), backbone="toy", layers=("layer1",),
                                        out=str(tmp_path / "f"), progress=False, workers=0))
    store = FeatureStore(summary.path)
    (folder / store.rel_paths("test")[0]).write_bytes(b"")
    with pytest.raises(DataError, match="same images"):
        _baseline("pixels", summary.path, tmp_path / "runs", size=4)
