"""Storage options of the feature store: ``--dtype float16`` and the measured layout."""

from __future__ import annotations

import h5py
import numpy as np
from click.testing import CliRunner
from conftest import make_folder
from PIL import Image

from pipeline.extraction.job import ExtractConfig, run_extract
from pipeline.store import hdf5 as st
from pipeline.store.hdf5 import FeatureStore


def _extract(folder, out, **kw):
    return run_extract(ExtractConfig(data=str(folder), backbone="toy", layers=("layer1", "layer2"),
                                     out=str(out), progress=False, batch_size=4, workers=0, **kw))


def test_float16_store_holds_the_float32_vectors_rounded(tmp_path):
    folder = make_folder(tmp_path / "img", per_class=3)
    rng = np.random.default_rng(0)   # noise: means like 127.37, which float16 must round
    for cls in ("blue", "green", "red"):
        for i in range(3):
            noise = rng.integers(0, 256, size=(20, 24, 3), dtype=np.uint8)
            Image.fromarray(noise).save(folder / cls / f"noise_{i}.png")
    full = FeatureStore(_extract(folder, tmp_path / "f32").path)
    half_path = _extract(folder, tmp_path / "f16", dtype="float16").path
    half = FeatureStore(half_path)
    assert half.config["dtype"] == "float16" and half.paths == full.paths
    with h5py.File(half_path) as f:
        assert all(f[f"taps/{t}"].dtype == np.float16 for t in ("layer1", "layer2"))
    for tap in ("layer1", "layer2"):
        got = half.X(tap)
        assert got.dtype == np.float32                      # readers always get float32
        np.testing.assert_array_equal(got, full.X(tap).astype(np.float16).astype(np.float32))
    assert not np.array_equal(half.X("layer2"), full.X("layer2"))  # rounding did happen


def test_cli_dtype_option_reaches_the_store(tmp_path):
    from cli import cli

    folder = make_folder(tmp_path / "img", per_class=3)
    res = CliRunner().invoke(cli, ["extract", "--data", str(folder), "--backbone", "toy",
                                   "--layer", "layer1", "--dtype", "float16", "--workers", "0",
                                   "--out", str(tmp_path / "f"), "--no-progress"])
    assert res.exit_code == 0, res.output
    with h5py.File(tmp_path / "f" / "img_toy_avg.h5") as f:
        assert f["taps/layer1"].dtype == np.float16


def test_tap_datasets_use_the_measured_layout(tmp_path):
    """Uncompressed, chunks of CHUNK_ROWS rows (docs/performance.md, "Store layout")."""
    folder = make_folder(tmp_path / "img", per_class=3)
    with h5py.File(_extract(folder, tmp_path / "f").path) as f:
        for tap in ("layer1", "layer2"):
            d = f[f"taps/{tap}"]
            assert d.compression is None
            assert d.chunks == (min(st.CHUNK_ROWS, d.shape[0]), d.shape[1])
