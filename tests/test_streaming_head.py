"""The streaming head ``sgd-logreg``: accuracy like in-memory logreg, bounded reads and memory."""

from __future__ import annotations

import json
import tracemalloc
from dataclasses import replace

import h5py
import numpy as np
import pytest
from click.testing import CliRunner

from pipeline.configs import FitConfig
from pipeline.data.split import assign_split
from pipeline.errors import UsageError
from pipeline.heads import streaming
from pipeline.heads.persist import load_head
from pipeline.store.hdf5 import FeatureStore, StoreContents, write_store
from pipeline.workflows.fit import run_fit


def make_store(path, n_per_class=400, n_classes=4, dim=32, noise=2.2, seed=0):
    """A store of Gaussian blobs, rows class by class (as an image folder gives them).

    Class means are random unit-scale vectors; ``noise`` makes the classes
    overlap so accuracy is well below 100% and the two heads can be compared.
    """
    rng = np.random.default_rng(seed)
    means = rng.normal(size=(n_classes, dim))
    labels = np.repeat(np.arange(n_classes), n_per_class)
    X = (means[labels] + noise * rng.normal(size=(len(labels), dim))).astype(np.float32)
    X[:, 0] = X[:, 0] * 50 + 300     # one badly scaled feature: standardisation matters
    paths = [f"c{c}/img_{i:05d}.png" for i, c in enumerate(labels)]
    split = assign_split(paths, labels, seed=0)
    rows = [{"path": p, "label": int(c), "split": int(s), "sha256": f"{i:064x}", "size": 1,
             "mtime_ns": 1, "vectors": (lambda i=i: {"feat": X[i]})}
            for i, (p, c, s) in enumerate(zip(paths, labels, split))]
    config = {"backbone": "synthetic", "classes": [f"c{c}" for c in range(n_classes)]}
    attrs = {"backbone": "synthetic", "weights": "none", "data_root": str(path.parent),
             "dataset": "blobs", "split_seed": 0}
    write_store(path, StoreContents(config=config, attrs=attrs, classes=config["classes"],
                                    rows=rows, skipped=[], taps={"feat": dim}))
    return path, X, labels, split


def test_sgd_logreg_accuracy_close_to_in_memory_logreg(tmp_path):
    path, *_ = make_store(tmp_path / "blobs.h5")
    cfg = FitConfig(features=path, layer="feat", protocol="holdout")
    (sgd, _), = run_fit(replace(cfg, clf="sgd-logreg"), tmp_path / "runs")
    (lr, _), = run_fit(cfg, tmp_path / "runs")
    acc_sgd, acc_lr = sgd["metrics"]["test"]["accuracy"], lr["metrics"]["test"]["accuracy"]
    assert 0.6 < acc_lr < 0.97            # the task is neither trivial nor hopeless
    assert abs(acc_sgd - acc_lr) <= 0.03, (acc_sgd, acc_lr)   # 240 test rows: 0.03 = 7 rows
    assert sgd["method"] == "sgd-logreg" and "alpha" in sgd["hyperparameters"]
    assert len(sgd["search"]) == 13 and sgd["trainable_params"] == 4 * 32 + 4
    # The saved head predicts what the record says it predicted on the test split.
    store = FeatureStore(path)
    head = load_head(sgd["model_file"])["model"]
    np.testing.assert_array_equal(head.predict(store.X("feat", "test")),
                                  sgd["predictions"]["y_pred"])


def test_alpha_is_chosen_on_validation_and_ties_go_to_stronger_regularisation(tmp_path):
    path, *_ = make_store(tmp_path / "blobs.h5")
    store = FeatureStore(path)
    res, _pred, _proba = streaming.stream_select_and_fit(store, "feat", grid=[1e-4, 1e-2, 1e-3])
    accs = [s["val_accuracy"] for s in res.search]
    assert [s["alpha"] for s in res.search] == [1e-2, 1e-3, 1e-4]
    assert res.params["alpha"] == res.search[int(np.argmax(accs))]["alpha"]
    assert accs[int(np.argmax(accs))] == pytest.approx(
        float(np.mean(res.val_pred == store.y("val"))))


def test_streaming_reads_bounded_blocks_never_whole_taps(tmp_path, monkeypatch):
    path, *_ = make_store(tmp_path / "blobs.h5", n_per_class=300)   # 1200 rows
    reads = []
    real = h5py.Dataset.__getitem__

    def spy(self, key):
        out = real(self, key)
        if self.name.startswith("/taps/"):
            reads.append(len(out))
        return out

    def no_whole_matrix(*a, **k):
        raise AssertionError("the streaming head loaded a whole tap with FeatureStore.X")

    monkeypatch.setattr(h5py.Dataset, "__getitem__", spy)
    monkeypatch.setattr(FeatureStore, "X", no_whole_matrix)
    store = FeatureStore(path)
    streaming.stream_select_and_fit(store, "feat", grid=[1e-3],
                                    passes=streaming.Passes(epochs=2, block=32, buffer_blocks=4))
    assert reads and max(reads) <= 32 * 4 < len(store)
    # Every epoch reads every training row: 2 selection + 2 final epochs, plus
    # the scaler pass and the val and test predictions.
    assert sum(reads) >= 4 * len(store)


def _peak_bytes(store, **kw):
    tracemalloc.start()
    try:
        streaming.stream_select_and_fit(store, "feat", grid=[1e-3, 1e-2],
                                        passes=streaming.Passes(epochs=1, **kw))
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_streaming_peak_memory_does_not_grow_with_rows(tmp_path):
    small = FeatureStore(make_store(tmp_path / "s.h5", n_per_class=1000, dim=256)[0])
    big = FeatureStore(make_store(tmp_path / "b.h5", n_per_class=4000, dim=256)[0])
    kw = dict(block=64, buffer_blocks=4)
    peak_small, peak_big = _peak_bytes(small, **kw), _peak_bytes(big, **kw)
    train_bytes_big = int((big.split_codes == 0).sum()) * 256 * 4
    # In memory the big fit would hold its 11,200 x 256 training matrix (11.5 MB) at least.
    assert peak_big < train_bytes_big / 4, (peak_big, train_bytes_big)
    # 4x the rows: the peak grows only by the per-row index columns and test predictions.
    assert peak_big < 1.5 * peak_small, (peak_small, peak_big)


def test_unknown_tap_and_bad_parameters_are_usage_errors(tmp_path):
    store = FeatureStore(make_store(tmp_path / "blobs.h5", n_per_class=20)[0])
    with pytest.raises(UsageError, match="tap 'layer9' is not in blobs.h5; it holds feat"):
        streaming.stream_select_and_fit(store, "layer9")
    with pytest.raises(UsageError, match="must be >= 1"):
        streaming.stream_select_and_fit(store, "feat", passes=streaming.Passes(epochs=0))


def test_cli_fit_sgd_logreg(tmp_path):
    from cli import cli

    path, *_ = make_store(tmp_path / "blobs.h5", n_per_class=100)
    res = CliRunner().invoke(cli, ["fit", "--features", str(path), "--layer", "all",
                                   "--clf", "sgd-logreg", "--protocol", "holdout",
                                   "--runs", str(tmp_path / "runs")])
    assert res.exit_code == 0, res.output
    assert "synthetic feat + sgd-logreg: {'alpha'" in res.output
    (record,) = [json.loads(p.read_text()) for p in (tmp_path / "runs").glob("*.json")]
    assert record["layer"] == "feat" and record["metrics"]["test"]["n"] == 60
