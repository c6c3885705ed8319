"""End to end with the real pretrained efficientnet_lite0 on the bundled flowers subset.

This is what ``python cli.py demo`` runs: extract layer2-4, logreg and svm on
every tap, the pixel and scratch-CNN baselines, a fine-tuning run, the feature
hierarchy, a transfer-explorer grid, the report.  Frozen
pretrained features must beat raw pixels by a wide margin on the same test
images; a random or mis-preprocessed backbone would not.
"""

from __future__ import annotations

import json

import h5py
import pytest

from pipeline.workflows.demo import run_demo, summary_rows


@pytest.mark.slow
def test_demo_frozen_features_beat_pixels_by_25_points(tmp_path):
    result = run_demo(out_dir=tmp_path / "demo", features_dir=tmp_path / "features",
                      progress=False, protocol="holdout", insight=False)
    records = result["records"]
    by_kind = {}
    for r in records:
        by_kind.setdefault(r["kind"], []).append(r)
    frozen = by_kind["frozen"]
    assert len(frozen) == 6   # logreg + svm on layer2, layer3, layer4
    assert {r["layer"] for r in frozen} == {"layer2", "layer3", "layer4"}
    baselines = {r["method"]: r for r in by_kind["baseline"]}
    pixels = baselines["pixels"]["metrics"]["test"]["accuracy"]
    cnn = baselines["cnn"]
    best = max(r["metrics"]["test"]["accuracy"] for r in frozen)
    assert best >= pixels + 0.25, summary_rows(records)
    assert best > cnn["metrics"]["test"]["accuracy"], summary_rows(records)

    # every method was judged on the same stored test images
    fingerprints = {r["features"]["fingerprint"] for r in records}
    assert len(fingerprints) == 1
    with h5py.File(result["extract"].path) as f:
        assert json.loads(f.attrs["config"])["backbone"] == "efficientnet_lite0"
        n_test = int((f["split"][:] == 2).sum())
    assert all(r["split_sizes"]["test"] == n_test for r in records)

    html = result["report"].read_text()
    assert "efficientnet_lite0" in html and "pixels" in html
    assert (result["folder"] / "runs").is_dir()
