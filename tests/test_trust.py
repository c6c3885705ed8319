"""Trust in labels and probabilities: the label audit (cleanlab on out-of-fold
probabilities), the calibration error and temperature scaling (fitted on validation
rows only, never changing a predicted class), and what records, predict and the report
do with them."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from conftest import TOY_COLOURS, make_folder

from pipeline.calibration import (
    ece,
    fit_temperature,
    holdout_calibration,
    reliability,
    scale,
)


def _softmax(z):
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def test_ece_of_hand_made_predictions():
    """Ten images at confidence 0.8 of which 8 are right: calibrated (0); ten at 0.9 of
    which 6 are right: 0.3; both together: the share-weighted mean, 0.15."""
    right = np.array([[0.8, 0.2]] * 10)
    y_right = np.array([0] * 8 + [1] * 2)
    over = np.array([[0.1, 0.9]] * 10)
    y_over = np.array([1] * 6 + [0] * 4)
    assert ece(right, y_right) == pytest.approx(0.0, abs=1e-12)
    assert ece(over, y_over) == pytest.approx(0.3)
    assert ece(np.vstack([right, over]), np.concatenate([y_right, y_over])) == \
        pytest.approx(0.15)
    bins = reliability(np.vstack([right, over]), np.concatenate([y_right, y_over]))
    assert [(b["n"], round(b["accuracy"], 3)) for b in bins] == [(10, 0.8), (10, 0.6)]


def test_temperature_is_recovered_and_never_changes_the_predicted_class():
    """Labels drawn from softmax(z / 2.5) while the model says softmax(z): the fitted
    temperature is about 2.5, the scaled probabilities are calibrated where the raw ones
    are over-confident, and no image's predicted class (nor its order of the classes above
    the clip) moves."""
    rng = np.random.default_rng(0)
    z = rng.normal(0, 4, (4000, 5))
    true = _softmax(z / 2.5)
    y = np.array([rng.choice(5, p=p) for p in true])
    proba = _softmax(z)
    t = fit_temperature(proba[:2000], y[:2000])
    assert t == pytest.approx(2.5, rel=0.1)
    scaled = scale(proba[2000:], t)
    assert ece(scaled, y[2000:]) < 0.03 < 0.1 < ece(proba[2000:], y[2000:])
    for temperature in (0.05, 0.5, t, 20.0):
        other = scale(proba, temperature)
        np.testing.assert_array_equal(other.argmax(1), proba.argmax(1))
        above = proba > 1e-6      # below the log's clip (1e-7) classes may tie
        for i in range(0, len(proba), 97):
            keep = above[i]
            np.testing.assert_array_equal(np.argsort(-other[i][keep], kind="stable"),
                                          np.argsort(-proba[i][keep], kind="stable"))
    # a kNN head's exact zeros: clipped, never nan, and still the same class
    hard = np.array([[1.0, 0.0, 0.0], [0.0, 0.5, 0.5]])
    assert np.isfinite(scale(hard, 0.5)).all()
    assert scale(hard, 0.5).argmax(1).tolist() == [0, 1]


def test_temperatures_are_fitted_without_the_rows_they_score():
    """Holdout: the temperature depends on the validation split only (any test labels give
    the same).  Cross-validation: an outer fold's temperature and predictions are the same
    whatever the labels of its own test rows are."""
    from pipeline.heads.crossval import OuterFold, fit_fold

    rng = np.random.default_rng(1)
    z = rng.normal(0, 3, (300, 3))
    y = np.array([rng.choice(3, p=p) for p in _softmax(z / 2)])
    val, test = slice(0, 150), slice(150, 300)
    a = holdout_calibration(y[val], _softmax(z[val]), y[test], _softmax(z[test]))
    b = holdout_calibration(y[val], _softmax(z[val]), (y[test] + 1) % 3, _softmax(z[test]))
    assert a["temperature"] == b["temperature"] != 1.0
    assert a["ece"] != b["ece"]     # the scored figures do read the test labels

    X = (z + rng.normal(0, 1.5, z.shape)).astype(np.float32)
    rows = rng.permutation(300)
    outer = OuterFold(0, 0, np.sort(rows[:240]), np.sort(rows[240:]))
    first = fit_fold("logreg", X, y, outer)
    shuffled = y.copy()
    shuffled[outer.test] = (shuffled[outer.test] + 1) % 3
    second = fit_fold("logreg", X, shuffled, outer)
    assert first.temperature is not None
    assert first.temperature == second.temperature
    np.testing.assert_array_equal(first.proba, second.proba)
    changed = y.copy()
    changed[outer.train[:60]] = (changed[outer.train[:60]] + 1) % 3
    assert fit_fold("logreg", X, changed, outer).temperature != first.temperature


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    """3 flat-colour classes x 20 images of the toy backbone, given by a label table in
    which two images carry another class's label on purpose; their store, extracted."""
    from pipeline.api import extract

    root = tmp_path_factory.mktemp("planted")
    make_folder(root / "img", per_class=20)
    rows = [[f"{c}/img_{i:02d}.png", c] for c in TOY_COLOURS for i in range(20)]
    flipped = {"red/img_03.png": "blue", "green/img_11.png": "red"}
    for row in rows:
        row[1] = flipped.get(row[0], row[1])
    table = root / "labels.csv"
    with open(table, "w", newline="") as fh:
        csv.writer(fh).writerows([["path", "label"], *rows])
    store = extract(table, backbone="toy", layers=["layer2"], out=str(root / "store.h5"),
                    image_root=str(root / "img"), progress=False)
    return {"root": root, "table": table, "store": store.path, "flipped": flipped,
            "rows": rows}


def test_audit_ranks_the_planted_label_errors_first(planted, run, tmp_path):
    """The two images given the wrong class on purpose are the two most suspect, flagged,
    with their true class suggested; the CSV lists them as the command says; a second run
    to the same file is refused without --overwrite."""
    out = tmp_path / "suspects.csv"
    res = run("audit", "--features", planted["store"], "--out", out, "--top", 5,
              "--runs", tmp_path / "runs")
    assert res.exit_code == 0, res.output
    assert "no frozen run of this store" in res.output
    with open(out, newline="") as fh:
        table = list(csv.DictReader(fh))
    assert [r["rank"] for r in table] == ["1", "2", "3", "4", "5"]
    top = {r["path"].split("img/", 1)[1]: r for r in table[:2]}
    assert set(top) == set(planted["flipped"])
    truth = {"red/img_03.png": "red", "green/img_11.png": "green"}
    for path, row in top.items():
        assert row["given_label"] == planted["flipped"][path]
        assert row["suggested_label"] == truth[path]
        assert row["flagged"] == "True"
        assert float(row["score"]) < min(float(r["score"]) for r in table[2:])
    again = run("audit", "--features", planted["store"], "--out", out,
                "--runs", tmp_path / "runs")
    assert again.exit_code == 1 and "--overwrite" in again.output


def test_audit_uses_the_best_frozen_run_and_the_report_shows_it(planted, tmp_path):
    """With fitted runs of the store, the audit takes the head of the best one (by its
    selecting score), lists only the flagged images by default, and the report's audit
    section shows the planted suspects first; the calibration section draws the run."""
    from pipeline.api import audit, fit, report

    runs = tmp_path / "runs"
    fit(planted["store"], "layer2", "logreg", runs_dir=runs, protocol="cv")
    res = audit(planted["store"], out=None, runs_dir=runs)
    assert "best frozen run" in res.why
    assert res.head == "toy layer2 + logreg and toy layer2 + knn"    # the one tap: 2 heads
    assert all(r["flagged"] for r in res.rows) and len(res.rows) == res.n_flagged >= 2
    assert {r["path"].split("img/", 1)[1] for r in res.rows[:2]} == set(planted["flipped"])
    html = report(runs, out=tmp_path / "report.html").read_text(encoding="utf-8")
    audit_html = html[html.index('id="audit"'):html.index('id="calibration"')]
    first = audit_html.index("img_03.png") if "img_03.png" in audit_html else -1
    assert 0 < first and "img_11.png" in audit_html
    assert 'id="calibration"' in html and "reliability diagram" in html


def test_cv_record_keeps_its_calibration_and_predict_applies_it(planted, tmp_path):
    """A cross-validated fit records ECE before and after scaling in its scored metrics and
    the calibration block; the saved head carries the same temperature, and predict's
    probabilities are the head's scaled by it."""
    from pipeline.api import fit
    from pipeline.models import load_model

    run = fit(planted["store"], "layer2", "logreg", runs_dir=tmp_path / "runs",
              protocol="cv")
    record = json.loads(run.path.read_text())
    block = record["calibration"]
    assert record["metrics"]["oof"]["ece"] == block["ece"]
    assert record["metrics"]["oof"]["ece_scaled"] == block["ece_scaled"]
    assert block["reliability"]["before"] and block["fitted_on"]
    model = load_model(record["run_id"], tmp_path / "runs")
    assert model.temperature == block["temperature"] != 1.0
    files = [planted["root"] / "img" / "blue" / "img_00.png"]
    scaled, _ = model.predict_proba(files)
    model.bundle["temperature"] = 1.0
    raw, _ = model.predict_proba(files)
    np.testing.assert_allclose(scaled, scale(raw, block["temperature"]), atol=1e-9)
    assert scaled.argmax() == raw.argmax()


def test_the_audit_ensemble_takes_the_next_deeper_tap_and_the_other_head():
    from pipeline.workflows.audit import ensemble

    taps = ["layer2", "layer3", "layer4", "head"]
    assert ensemble("logreg", "layer4", taps) == [
        ("logreg", "layer4"), ("knn", "layer4"), ("logreg", "head"), ("knn", "head")]
    assert ensemble("knn", "head", taps) == [
        ("knn", "head"), ("logreg", "head"), ("knn", "layer4"), ("logreg", "layer4")]
    assert ensemble("svm", "layer2", ["layer2"]) == [("svm", "layer2"), ("knn", "layer2")]


def test_a_record_with_a_partial_calibration_block_still_renders(planted, tmp_path):
    """A record whose calibration block holds only its temperature (hand-edited, or from
    another version) is read and the report renders its section without the figures; a
    temperature that is not a positive number makes the record unreadable, named."""
    from pipeline.api import fit, report
    from pipeline.runs.records import load_records

    runs = tmp_path / "runs"
    run = fit(planted["store"], "layer2", "logreg", runs_dir=runs, protocol="cv")
    data = json.loads(run.path.read_text())
    data["calibration"] = {"temperature": 1.5}
    run.path.write_text(json.dumps(data))
    html = report(runs, out=tmp_path / "r.html").read_text(encoding="utf-8")
    section = html[html.index('id="calibration"'):html.index('id="leakage"')]
    assert "T = 1.50" in section and "(not recorded)" in section
    data["calibration"] = {"temperature": -1}
    run.path.write_text(json.dumps(data))
    assert load_records(runs) == []
