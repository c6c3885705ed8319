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


@pytest.mark.slow
def test_demo_cross_validates_and_finds_frozen_features_significantly_better(cv_demo):
    """The demo's default on 150 photos is cv: every method on the same 15 folds of all
    images, and the verdict's corrected t-test (Holm) separates the best frozen head from
    raw pixels and from the scratch CNN."""
    from pipeline.reporting.sections import verdict_section
    from pipeline.runs.groups import group_runs

    result = cv_demo
    records = result["records"]
    assert {r["protocol"] for r in records} == {"cv"}
    assert "auto" in records[0]["protocol_reason"]
    assert {len(r["predictions"]["y_true"]) for r in records} == {150}
    assert len({tuple(map(tuple, r["cv"]["fold_ids"])) for r in records}) == 1   # same folds
    verdict = verdict_section(group_runs(records))
    assert verdict["best"]["kind"] in ("frozen", "finetune"), summary_rows(records)
    by_method = {c["group"]["method"]: c for c in verdict["comparisons"]}
    for method in ("pixels", "cnn"):
        assert by_method[method]["test"]["test"] == "corrected-t"
        assert by_method[method]["p_holm"] < 0.05, (method, by_method[method])
    html = result["report"].read_text()
    assert "Nadeau-Bengio" in html and "cross-validated accuracy" in html
    _assert_the_four_insight_sections(html, result["folder"] / "runs")


def _assert_the_four_insight_sections(html: str, runs):
    """The demo's report shows the feature hierarchy, the fine-tuning run's augmentation
    preview, the transfer explorer and the leakage check, each from its real record."""
    import re

    from pipeline.configs import DEFAULT_DEPTHS
    from pipeline.workflows.explore import latest_explore

    def section(name):
        return re.search(rf'<section id="{name}".*?</section>', html, re.S).group(0)

    assert section("hierarchy").count('<img src="data:image/') >= 4      # a grid per tap
    assert 'alt="training augmentation of fine-tune top group"' in section("curves")
    explorer = section("explore")
    record = latest_explore(runs)
    assert record["complete"] and record["grid"]["depths"] == list(DEFAULT_DEPTHS)
    assert f"{len(record['cells'])} fine-tuning runs" in explorer
    assert 'id="explore-chart"' in explorer and "McNemar" in explorer
    assert "near-duplicate" in section("leakage")
    assert len(html.encode()) < 5_000_000
