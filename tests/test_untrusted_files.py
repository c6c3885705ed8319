"""Files a user can be handed (heads, checkpoints, caches, weights) never run code.

Each loader gets a planted payload: a pickle whose unpickling would create a
marker file.  The tests prove the marker never appears and that the user gets
a message naming the file, for every loader that reads such a file.
"""

from __future__ import annotations

import json
import pathlib
import pickle
from dataclasses import replace

import joblib
import numpy as np
import pytest
import torch
from click.testing import CliRunner
from conftest import make_folder

import cli
from pipeline.errors import StoreError, WeightsError
from pipeline.extraction.job import ExtractConfig, run_extract
from pipeline.heads.persist import load_head, save_head
from pipeline.heads.selection import make_head
from pipeline.train.finetune import FinetuneConfig
from pipeline.workflows.finetune import run_finetune


class Payload:
    """Unpickling this calls ``Path.touch(marker)``: proof that code ran."""

    def __init__(self, marker):
        self.marker = pathlib.Path(marker)

    def __reduce__(self):
        return (pathlib.Path.touch, (self.marker,))


def _pickle_payload_works(marker):
    """The payload is real: a plain unpickle does create the marker."""
    pickle.loads(pickle.dumps(Payload(marker)))
    assert marker.exists()
    marker.unlink()


@pytest.fixture(scope="module")
def toy_store(tmp_path_factory):
    root = tmp_path_factory.mktemp("untrusted")
    folder = make_folder(root / "img", per_class=8, size=(40, 36))
    summary = run_extract(ExtractConfig(data=str(folder), backbone="toy", layers=("layer1",),
                                        out=str(root / "f"), progress=False, workers=0))
    return str(summary.path), folder


@pytest.mark.parametrize("suffix", [".joblib", ".pkl", ".skops"])
def test_predict_never_unpickles_a_head_file(tmp_path, toy_store, suffix):
    marker = tmp_path / "pwned"
    _pickle_payload_works(marker)
    evil = tmp_path / f"head{suffix}"
    joblib.dump({"model": Payload(marker), "classes": ["a"]}, evil)
    res = CliRunner().invoke(cli.cli, ["predict", "--model", str(evil), str(toy_store[1])])
    assert not marker.exists()
    assert res.exit_code == 1 and str(evil) in res.output
    assert "Traceback" not in res.output


def test_a_run_record_pointing_at_a_pickle_is_refused(tmp_path, toy_store):
    """A shared runs folder: the record's model_file names a crafted pickle."""
    runs = tmp_path / "runs"
    res = CliRunner().invoke(cli.cli, ["fit", "--features", toy_store[0], "--layer", "layer1",
                                       "--clf", "logreg", "--protocol", "holdout",
                                       "--runs", str(runs)])
    assert res.exit_code == 0, res.output
    record_file = next(runs.glob("*.json"))
    record = json.loads(record_file.read_text())
    marker = tmp_path / "pwned"
    evil = runs / "evil.joblib"
    joblib.dump({"model": Payload(marker)}, evil)
    record["model_file"] = str(evil)
    record_file.write_text(json.dumps(record))
    res = CliRunner().invoke(cli.cli, ["predict", "--model", record["run_id"],
                                       "--runs", str(runs), str(toy_store[1])])
    assert not marker.exists()
    assert res.exit_code == 1 and "evil.joblib" in res.output and "pickle" in res.output


class Crafted:
    """A type no head contains; skops would rebuild it by setting its state."""

    def __setstate__(self, state):
        pathlib.Path(state["marker"]).touch()


def test_a_skops_file_with_an_untrusted_type_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    obj = Crafted()
    obj.marker = str(marker)
    path = tmp_path / "head.skops"
    save_head({"model": obj, "classes": ["a"]}, path)
    with pytest.raises(StoreError, match="Crafted") as err:
        load_head(path)
    assert str(path) in str(err.value)
    assert not marker.exists()


def test_every_head_kind_round_trips_through_the_safe_format(tmp_path):
    rng = np.random.default_rng(0)
    X, y = rng.normal(size=(60, 4)), np.arange(60) % 3
    X[np.arange(60), y] += 3
    for clf in ("logreg", "svm", "linear-svm", "knn", "sgd-logreg"):
        model = make_head(clf, 3 if clf == "knn" else 1.0, calibrated=True).fit(X, y)
        save_head({"model": model, "classes": ["a", "b", "c"], "store_config": {"k": (1, 2)}},
                  tmp_path / f"{clf}.skops")
        back = load_head(tmp_path / f"{clf}.skops")
        np.testing.assert_array_equal(back["model"].predict(X), model.predict(X))
        assert back["classes"] == ["a", "b", "c"]


@pytest.mark.parametrize("content", [b"", b"\x00" * 100, bytes(range(256)) * 4, b"PK\x03\x04xx"])
def test_random_bytes_as_a_head_give_a_message(tmp_path, content):
    path = tmp_path / "head.skops"
    path.write_bytes(content)
    with pytest.raises(StoreError, match="head.skops"):
        load_head(path)


def _tiny_cfg(store, **kw):
    base = dict(features=store, backbone="resnet18", weights="none", input_size=32,
                epochs=2, batch_size=8, lr=1e-2, lr_factor=0.5, views=1, unfreeze="none",
                patience=None, protocol="holdout")
    base.update(kw)
    return FinetuneConfig(**base)


def test_resume_from_a_crafted_or_truncated_checkpoint_runs_nothing(tmp_path, toy_store):
    cfg = _tiny_cfg(toy_store[0], checkpoint_dir=str(tmp_path / "ck"), stop_after=1)
    run_finetune(cfg, tmp_path / "runs")
    last = tmp_path / "ck" / "last.pt"
    assert last.is_file()
    good = last.read_bytes()
    last.write_bytes(good[: len(good) // 2])                     # truncated by a crash
    with pytest.raises(StoreError, match="last.pt.*damaged"):
        run_finetune(replace(cfg, stop_after=None, resume=True), tmp_path / "runs")
    marker = tmp_path / "pwned"
    torch.save({"config": Payload(marker), "model": {}, "epoch": 0}, last)
    with pytest.raises(StoreError, match="last.pt"):
        run_finetune(replace(cfg, stop_after=None, resume=True), tmp_path / "runs")
    assert not marker.exists()


def test_a_crafted_trunk_cache_is_recomputed_not_run(tmp_path, toy_store, caplog):
    cache = tmp_path / "cache"
    cfg = _tiny_cfg(toy_store[0], unfreeze="layer4", epochs=1)
    first, _ = run_finetune(cfg, tmp_path / "r1", cache_dir=cache)
    (cached,) = cache.glob("activations-*.pt")
    marker = tmp_path / "pwned"
    torch.save({"train": Payload(marker)}, cached)
    # a folder, not a TrunkCache: each run has its own memory, so the next one reads the disk
    second, _ = run_finetune(cfg, tmp_path / "r2", cache_dir=cache)
    assert not marker.exists()
    assert "recomputing the trunk cache" in caplog.text and cached.name in caplog.text
    assert second["predictions"]["proba"] == first["predictions"]["proba"]


def test_weights_path_with_a_payload_is_refused(tmp_path):
    from pipeline.backbones.weights import load_local_state_dict

    marker = tmp_path / "pwned"
    path = tmp_path / "weights.pt"
    torch.save({"state_dict": Payload(marker)}, path)
    with pytest.raises(WeightsError, match="weights.pt"):
        load_local_state_dict(path)
    assert not marker.exists()
