"""Hardening of run records and the report: perfect scores, bad record files, moved or
replaced feature stores, repeated seeds, and report outputs that cannot be written.

Records are built with :func:`pipeline.runs.records.new_record` on toy stores of a few
flat-colour images, so every report here takes about a second.
"""

from __future__ import annotations

import re

import numpy as np
import pytest
from click.testing import CliRunner
from conftest import make_folder
from report_helpers import make_store

import cli
from pipeline.reporting import plots
from pipeline.runs.records import new_record, save_record
from pipeline.runs.stats import wilson_interval
from pipeline.workflows.report import build_report


@pytest.fixture(scope="module")
def stores(tmp_path_factory):
    """Two toy stores with different images (so different fingerprints); 9 test images in a."""
    root = tmp_path_factory.mktemp("stores")
    a = make_store(make_folder(root / "a", per_class=17), root / "fa")
    b = make_store(make_folder(root / "b", per_class=18), root / "fb")
    assert a.fingerprint != b.fingerprint
    return a, b


def frozen(store, layer="layer1", right=1.0, seed=None, group=None, kind="frozen"):
    """A run record on ``store``'s split that gets the first ``right`` fraction of the
    test images right (the rest wrong: next class)."""
    y_val, y_test = store.y("val"), store.y("test")
    k = len(store.classes)
    pred = y_test.copy()
    n_wrong = len(y_test) - int(round(right * len(y_test)))
    if n_wrong:
        pred[-n_wrong:] = (pred[-n_wrong:] + 1) % k
    return new_record(kind=kind, method="logreg", label=group or f"logreg on {layer}",
                      store=store, classes=store.classes, val_pred=y_val, test_pred=pred,
                      test_proba=np.eye(k)[pred] * 0.9 + 0.1 / k, layer=layer, seed=seed,
                      group=group, hyperparameters={"C": 1.0})


def section(html: str, name: str) -> str:
    m = re.search(rf'<section id="{name}".*?</section>', html, re.S)
    assert m, f"section {name} missing"
    return m.group(0)


@pytest.fixture
def run(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    runner = CliRunner()

    def invoke(*args):
        return runner.invoke(cli.cli, [str(a) for a in args], catch_exceptions=False)

    return invoke


# ------------------------------------------------------------------ 1. 0% and 100% runs


def test_wilson_interval_at_none_and_all_correct_holds_the_estimate_exactly():
    for n in range(1, 201):
        for k in (0, n):
            p = k / n
            lo, hi = wilson_interval(k, n)
            assert 0.0 <= lo <= p <= hi <= 1.0, (k, n, lo, hi)
            assert p - lo >= 0 and hi - p >= 0       # the error bar matplotlib draws
    assert wilson_interval(7, 7)[1] == 1.0 and wilson_interval(0, 7)[0] == 0.0


def test_depth_plot_never_passes_a_negative_error_bar():
    # A seed-mean a hair (or far) outside the representative run's interval.
    series = {"logreg (toy)": [("layer1", 1.0, 1.0, 0.9999999999999999),
                               ("layer2", 0.6, 0.9, 1.0)]}
    assert plots.depth_plot(series, [], ["layer1", "layer2"]).startswith("data:image/svg")


def test_report_renders_runs_at_100_and_0_percent(stores, tmp_path):
    store, _ = stores
    runs = tmp_path / "runs"
    # Three seeds at 100%, 100%, 0%: the median run's interval is near 1, the mean is not.
    for seed, right in enumerate((1.0, 1.0, 0.0)):
        save_record(frozen(store, "layer1", right, seed=seed, group="logreg on layer1"), runs)
    save_record(frozen(store, "layer2", 0.0), runs)
    html = build_report(runs, tmp_path / "r.html", efficiency_budget=0).read_text()
    assert "data:image/svg" in section(html, "depth")
    assert "100.0%" in section(html, "comparison")
