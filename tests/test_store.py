"""The extract job and its HDF5 store, on the toy backbone with known taps."""

from __future__ import annotations

import json
import os

import h5py
import numpy as np
import pytest
from conftest import make_folder, toy_expected
from PIL import Image

from pipeline.errors import StoreError
from pipeline.extraction.job import ExtractConfig, run_extract
from pipeline.store.hdf5 import FeatureStore


def _extract(folder, out, **kw):
    cfg = dict(data=str(folder), backbone="toy", layers=("layer1", "layer2"), out=str(out),
               progress=False, batch_size=4, workers=0)
    cfg.update(kw)
    return run_extract(ExtractConfig(**cfg))


def test_store_roundtrip_matches_hand_computed_taps(toy_folder, tmp_path):
    summary = _extract(toy_folder, tmp_path / "f")
    assert summary.n_extracted == 18 and summary.path.name == "toy_toy_avg.h5"
    store = FeatureStore(summary.path)
    assert store.classes == ["blue", "green", "red"]
    assert len(store) == 18 and store.taps == ["layer1", "layer2"]
    for i, rel in enumerate(store.paths):
        pixel = np.asarray(Image.open(toy_folder / rel))[0, 0]
        for tap in ("layer1", "layer2"):
            got = store.X(tap)[i]
            np.testing.assert_allclose(got, toy_expected(pixel)[tap], atol=1e-3)
    with h5py.File(summary.path) as f:
        assert f["taps/layer2"].shape == (18, 3)
        assert json.loads(f.attrs["config"])["backbone"] == "toy"
        assert f.attrs["weights"] == "toy-known-weights"
        assert "torch" in json.loads(f.attrs["versions"])
        assert f["split"].shape == (18,)
    sizes = store.split_sizes()
    assert sizes == {"train": 12, "val": 3, "test": 3}


def test_rerun_does_no_forward_pass_and_added_images_alone(toy_folder, tmp_path):
    first = _extract(toy_folder, tmp_path / "f")
    split_before = dict(zip(FeatureStore(first.path).paths, FeatureStore(first.path).split_codes))
    again = _extract(toy_folder, tmp_path / "f")
    assert again.up_to_date and again.n_extracted == 0
    make_folder(toy_folder, per_class=8)  # adds img_06, img_07 to each class
    more = _extract(toy_folder, tmp_path / "f")
    assert more.n_extracted == 6 and more.n_reused == 18
    store = FeatureStore(more.path)
    assert len(store) == 24
    for p, code in split_before.items():
        assert store.split_codes[store.paths.index(p)] == code


def test_changed_image_is_reextracted(toy_folder, tmp_path):
    _extract(toy_folder, tmp_path / "f")
    target = toy_folder / "red" / "img_00.png"
    Image.fromarray(np.full((20, 24, 3), 7, np.uint8)).save(target)
    os.utime(target, ns=(1, 1))
    summary = _extract(toy_folder, tmp_path / "f")
    assert summary.n_extracted == 1
    store = FeatureStore(summary.path)
    row = store.paths.index("red/img_00.png")
    np.testing.assert_allclose(store.X("layer1")[row], [7, 7], atol=1e-3)


def test_other_configuration_is_refused_then_overwritten(toy_folder, tmp_path):
    _extract(toy_folder, tmp_path / "f")
    with pytest.raises(StoreError, match="--overwrite"):
        _extract(toy_folder, tmp_path / "f", dtype="float16")
    summary = _extract(toy_folder, tmp_path / "f", dtype="float16", overwrite=True)
    with h5py.File(summary.path) as f:
        assert f["taps/layer1"].dtype == np.float16


def test_new_tap_recomputes_all_rows(toy_folder, tmp_path):
    _extract(toy_folder, tmp_path / "f", layers=("layer1",))
    summary = _extract(toy_folder, tmp_path / "f", layers=("layer2",))
    assert summary.n_extracted == 18
    assert FeatureStore(summary.path).taps == ["layer1", "layer2"]


def test_unreadable_image_is_skipped_and_recorded(toy_folder, tmp_path):
    (toy_folder / "red" / "broken.jpg").write_bytes(b"\xff\xd8\xff not really a jpeg")
    summary = _extract(toy_folder, tmp_path / "f")
    assert summary.n_images == 18
    assert [p for p, _ in summary.skipped] == ["red/broken.jpg"]
    store = FeatureStore(summary.path)
    assert store.skipped[0][0] == "red/broken.jpg" and "image" in store.skipped[0][1]
    assert _extract(toy_folder, tmp_path / "f").up_to_date  # not retried while unchanged


def test_batch_size_remainders_give_identical_vectors(toy_folder, tmp_path):
    a = FeatureStore(_extract(toy_folder, tmp_path / "a", batch_size=5).path)
    b = FeatureStore(_extract(toy_folder, tmp_path / "b", batch_size=18).path)
    np.testing.assert_allclose(a.X("layer2"), b.X("layer2"), atol=1e-4)
    assert a.paths == b.paths


def test_second_writer_is_refused(toy_folder, tmp_path):
    from pipeline.store.lock import write_lock

    path = tmp_path / "f" / "toy_toy_avg.h5"
    with write_lock(path):
        with pytest.raises(StoreError, match="being written by pid"):
            _extract(toy_folder, tmp_path / "f")


def test_a_run_opens_the_old_store_once_and_the_new_one_once(toy_folder, tmp_path, monkeypatch):
    """extract reads the existing store once (config, index, vectors to reuse, split) and
    the store it wrote once (summary, leakage check), not once per question."""
    from pipeline.store import hdf5

    _extract(toy_folder, tmp_path / "f")
    make_folder(toy_folder, per_class=7)
    opened, real = [], hdf5.FeatureStore.__init__

    def counted(self, *args, **kw):
        opened.append(args[0])
        return real(self, *args, **kw)

    monkeypatch.setattr(hdf5.FeatureStore, "__init__", counted)
    more = _extract(toy_folder, tmp_path / "f")
    assert more.n_extracted == 3 and len(opened) == 2
    opened.clear()
    assert _extract(toy_folder, tmp_path / "f").up_to_date and len(opened) == 1
