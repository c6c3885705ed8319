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


def test_logreg_search_on_the_row_space_predicts_as_on_the_inputs():
    """With more columns than rows the C search fits on the training rows' row space
    (pipeline.heads.kinds.logreg.row_space): the same validation predictions at every C
    as fits on the standardised inputs themselves, and the same probabilities at the
    chosen C to the solver's tolerance."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    from pipeline.heads.kinds.logreg import row_space
    from pipeline.heads.registry import get_head

    rng = np.random.default_rng(0)
    y = np.repeat(np.arange(3), 20)
    X = rng.normal(size=(60, 500)) + 0.4 * np.eye(3)[y] @ rng.normal(size=(3, 500))
    tr, va = np.arange(60) % 4 != 0, np.arange(60) % 4 == 0
    head = get_head("logreg")
    values = head.values(int(tr.sum()))
    fast = head.search(X[tr], y[tr], X[va], values, seed=0)
    scaler = StandardScaler().fit(X[tr])
    Xs_tr, Xs_va = scaler.transform(X[tr]), scaler.transform(X[va])
    for value, pred in zip(values, fast):
        plain = LogisticRegression(C=value, max_iter=3000).fit(Xs_tr, y[tr])
        assert (plain.predict(Xs_va) == pred).all(), value
    Z_tr, Z_va = row_space(Xs_tr, Xs_va)
    assert Z_tr.shape == (45, 44) and Z_va.shape == (15, 44)   # centred rows: rank n - 1
    small = LogisticRegression(C=1.0, max_iter=3000).fit(Z_tr, y[tr])
    wide = LogisticRegression(C=1.0, max_iter=3000).fit(Xs_tr, y[tr])
    assert np.abs(small.predict_proba(Z_va) - wide.predict_proba(Xs_va)).max() < 1e-3
    narrow = X[:, :30]                      # fewer columns than rows: left as they are
    assert row_space(narrow[tr], narrow[va])[0] is not None
    assert np.array_equal(row_space(narrow[tr], narrow[va])[1], narrow[va])


def test_cross_validated_cnn_decodes_each_image_once(store_path, tmp_path, monkeypatch):
    """The CNN's 15 cv folds and its final fit read the same images: each is decoded once."""
    from pipeline.train import datasets

    decoded, real = [], datasets.load_rgb

    def counted(path, *args, **kw):
        decoded.append(str(path))
        return real(path, *args, **kw)

    monkeypatch.setattr(datasets, "load_rgb", counted)
    store = FeatureStore(store_path)
    record, _ = run_baseline(BaselineConfig(kind="cnn", features=store_path, protocol="cv",
                                            epochs=1, options={"size": 16, "width": 4}),
                             tmp_path / "runs")
    assert record["protocol"] == "cv" and len(record["cv"]["fold_ids"]) > 1
    assert sorted(decoded) == sorted(str(store.data_root / p) for p in store.paths)
