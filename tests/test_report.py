"""The HTML report: every section filled from real records, escaping, refusals, empty states."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import numpy as np
import pytest
from conftest import make_folder
from report_helpers import (
    add_history_runs,
    add_pixel_run,
    history,
    make_store,
    make_study,
)

from pipeline.errors import StoreError
from pipeline.reporting.sections import training_trap
from pipeline.runs.groups import group_runs, paired_test
from pipeline.runs.records import RunInfo, load_records, new_record, save_record
from pipeline.runs.stats import holm
from pipeline.workflows.report import build_report

SECTIONS = ("verdict", "comparison", "depth", "efficiency", "curves", "confusion", "mistakes",
            "featuremap", "advice", "provenance")
HOSTILE = ("<script>alert(1)", "<img src=x onerror=alert(1)>", "Tom & \"Jerry\"")


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    """The bundled flowers with toy features: 6 frozen runs, a pixel run, 3 seeds, a CNN."""
    return make_study(tmp_path_factory.mktemp("study"))


@pytest.fixture(scope="module")
def page(study, tmp_path_factory):
    _, runs = study
    out = build_report(runs, tmp_path_factory.mktemp("page") / "report.html")
    return out.read_text(encoding="utf-8")


def section(html: str, name: str) -> str:
    m = re.search(rf'<section id="{name}".*?</section>', html, re.S)
    assert m, f"section {name} missing"
    return m.group(0)


def test_every_section_is_filled_from_the_records(study, page):
    for name in SECTIONS:
        assert 'class="empty"' not in section(page, name).split("</h2>")[1][:300], name
    verdict = section(page, "verdict")
    assert "Best strategy" in verdict and "95% CI" in verdict and "McNemar" in verdict
    table = section(page, "comparison")
    # header, 2 taps x 2 heads, the fine-tune group, the CNN, pixels, the majority reference
    assert table.count("<tr") == 1 + 4 + 3 + 1
    assert table.count('class="reference"') == 1 and "majority class (" in table
    assert "3 seeds" in table                    # ... with the seeds folded into one row
    fewshot = section(page, "efficiency")        # few-shot curves (issue 12)
    assert "Computed by this report from the cached" in fewshot
    assert "pixels 32x32" in fewshot and "layer1" in fewshot and "k = 1" in fewshot
    curves = section(page, "curves")
    assert curves.count('class="curve"') == 4    # three fine-tune seeds and the CNN
    assert curves.count("100% training accuracy trap") == 1
    assert "PCA" in section(page, "featuremap")
    advice = section(page, "advice")
    assert 'class="here"' in advice and "training images per class" in advice
    # fine-tuning against the best frozen head: the paired test and the cost in minutes
    assert re.search(r"points over the best frozen head \([^)]*: (within noise|significant)\)",
                     advice)
    assert re.search(r"extra minutes? did not pay|so it paid for its cost", advice)
    assert "python" in section(page, "provenance")


def test_page_is_self_contained_and_small(page):
    assert not re.search(r'(src|href)="(https?:)?//', page)
    assert "<link" not in page and "@import" not in page
    assert len(page.encode()) < 5_000_000


def test_mistakes_show_thumbnails_and_top3(page):
    mistakes = section(page, "mistakes")
    assert mistakes.count('class="card"') >= 1
    assert "data:image/jpeg;base64," in mistakes
    assert re.search(r"1\. \S+ \d+\.\d%", mistakes)


def test_verdict_numbers_match_the_records(study, page):
    _, runs = study
    groups = group_runs(load_records(runs))
    best = groups[0]
    assert f"{best['accuracy'] * 100:.1f}%" in section(page, "verdict")
    tuned = next(g for g in groups if g["name"] == "fine-tune from layer2")
    assert len(tuned["runs"]) == 3
    accs = [r["metrics"]["test"]["accuracy"] for r in tuned["runs"]]
    assert tuned["accuracy"] == pytest.approx(np.mean(accs))
    assert tuned["spread"] == pytest.approx(np.std(accs, ddof=1))
    assert tuned["rep"]["metrics"]["test"]["accuracy"] == pytest.approx(np.median(accs))


def test_existing_report_is_never_overwritten_silently(study, tmp_path):
    _, runs = study
    out = tmp_path / "report.html"
    out.write_text("keep me")
    with pytest.raises(StoreError, match="--overwrite"):
        build_report(runs, out, efficiency_budget=0)
    assert out.read_text() == "keep me"
    build_report(runs, out, overwrite=True, efficiency_budget=0)
    assert "<!DOCTYPE html>" in out.read_text()


def test_empty_or_missing_runs_folder_is_a_clear_error(tmp_path):
    with pytest.raises(StoreError, match="no run records"):
        build_report(tmp_path / "nope", tmp_path / "r.html")
    (tmp_path / "runs").mkdir()
    with pytest.raises(StoreError, match="no run records"):
        build_report(tmp_path / "runs", tmp_path / "r.html")


def test_sections_without_data_say_so(study, tmp_path):
    store, _ = study
    runs = tmp_path / "runs"
    add_pixel_run(store, runs)
    html = build_report(runs, tmp_path / "r.html").read_text()
    assert "No frozen-feature runs yet" in section(html, "depth")
    assert "No frozen-feature runs yet" in section(html, "efficiency")
    assert "No runs with a per-epoch history yet" in section(html, "curves")
    assert "No frozen-feature runs yet" in section(html, "featuremap")
    assert "No fine-tuning runs yet" in section(html, "advice")
    assert "nothing to compare" in section(html, "verdict")


def test_the_advice_is_worded_by_its_template_from_facts():
    """sections.py computes the advice's facts (numbers, names, flags); the macros of
    templates/partials/advice.html say them: hand-made facts, sentences checked by hand."""
    from pipeline.reporting.build import environment

    words = environment().get_template("partials/advice.html").module
    assert words.grid["large"]["different"] == ("Fine-tune most of the network, or train "
                                                "from scratch.")
    best = {"backbone": "convnext", "tap": "layer3", "head": "logreg", "accuracy": 0.9,
            "collapsed": None}
    other = {"backbone": "resnet", "accuracy": 0.895}
    facts = {"best": best, "runner_up": other, "label": "accuracy",
             "cost": [("gflops", 4.5), ("params", 28_000_000)],
             "test": {"test": "corrected-t", "p_value": 0.2, "significant": False},
             "cheaper": other, "gflops_ratio": 2.5, "random_weights": False}
    assert str(words.backbone(facts)) == (
        "Best backbone for this data: convnext (tap layer3, logreg), 90.0% accuracy at 4.5 "
        "GFLOPs, 28 M parameters, chosen without test data. It is not significantly better "
        "than the runner-up resnet (89.5%; corrected t-test p = 0.2). resnet comes within a "
        "point (89.5%) at 2.5x fewer GFLOPs.")
    collapsed = {"best": {**best, "collapsed": "answers daisy for 100% of the 20 images"}}
    assert str(words.backbone(collapsed)) == (
        "No backbone's heads learned here: every one answers one class (e.g. it answers "
        "daisy for 100% of the 20 images); no backbone is recommended.")
    depth = {"size": "small", "similarity": "different", "depth_gain": {
        "deep": "layer4", "deep_acc": 0.8, "other": "layer3", "other_acc": 0.9, "gain": -0.1,
        "better": False, "test": {"test": "mcnemar", "p_value": 0.001, "significant": True}}}
    assert str(words.depth(depth, "accuracy")).splitlines() == [
        "<li>The deepest tap layer4 scores 80.0% accuracy against 90.0% for the best "
        "shallower tap layer3 (10.0 points worse, McNemar p = 0.001: significant); a "
        "shallower tap is significantly better, so the images look different from "
        "ImageNet.</li>",
        "<li>The grid says: Linear classifier on features from an earlier (middle) "
        "layer.</li>"]


def test_budget_overrun_is_reported_not_hidden(study, tmp_path):
    _, runs = study
    html = build_report(runs, tmp_path / "r.html", efficiency_budget=0).read_text()
    eff = section(html, "efficiency")
    assert "over the 0 s budget" in eff and "layer1" in eff


def hostile_report(tmp_path):
    """A real image folder whose class names (and one file name) are markup; its report."""
    colours = dict(zip(HOSTILE, [(200, 0, 0), (0, 200, 0), (0, 0, 200)]))
    data = make_folder(tmp_path / "hostile", per_class=20, colours=colours)
    for i, image in enumerate(sorted((data / HOSTILE[0]).iterdir())):
        image.rename(image.with_name(f"<b>bold<b>_{i}.png"))
    store = make_store(data, tmp_path / "features")
    runs = tmp_path / "runs"
    y_val, y_test = store.y("val"), store.y("test")
    for tap in store.taps:
        # Wrong on the first test image of each class, so the mistakes gallery has entries.
        pred = y_test.copy()
        for c in np.unique(y_test):
            pred[np.flatnonzero(y_test == c)[0]] = (c + 1) % 3
        proba = np.eye(3)[pred] * 0.8 + 0.2 / 3
        run = RunInfo(kind="frozen", method="logreg", label=f"logreg on {tap}", layer=tap,
                      hyperparameters={"C": 1.0})
        save_record(new_record(run, store, y_val, pred, proba), runs)
    return build_report(runs, tmp_path / "report.html", efficiency_budget=5)


def test_markup_in_class_and_file_names_is_shown_as_text(tmp_path):
    html = hostile_report(tmp_path).read_text()
    for name in HOSTILE:
        assert name not in html
    assert "&lt;script&gt;alert(1)" in html
    assert "&lt;img src=x onerror=alert(1)&gt;" in html
    assert "Tom &amp; &#34;Jerry&#34;" in html
    assert "&lt;b&gt;bold&lt;b&gt;_" in section(html, "mistakes")
    assert "<b>" not in html
    assert html.count("<script") == 1            # the sort script, nothing injected


def test_report_never_imports_torch(study, tmp_path):
    """Records alone make the whole page without torch: only the mistakes gallery's
    class-activation maps run a saved model (pipeline.workflows.explain), and with the
    model files gone the gallery says so instead."""
    _, runs = study
    records = tmp_path / "records"
    records.mkdir()
    for record in runs.glob("*.json"):   # each with its model file named, but gone
        rec = json.loads(record.read_text())
        if rec.get("model_file"):
            rec["model_file"] = str(records / rec["model_file"].rsplit("/", 1)[-1])
        (records / record.name).write_text(json.dumps(rec))
    code = ("import sys; from pipeline.workflows.report import build_report; "
            f"build_report({str(records)!r}, {str(tmp_path / 'r.html')!r}, "
            "efficiency_budget=1); "
            "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] == 'torch')))")
    out = subprocess.run([sys.executable, "-c", "import json; " + code], capture_output=True,
                         text=True, check=True)
    assert json.loads(out.stdout.strip().splitlines()[-1]) == []
    assert "No maps of the best frozen run" in section((tmp_path / "r.html").read_text(),
                                                       "mistakes")


def test_training_trap_flags_memorising_runs():
    assert training_trap(history(6, trap=False)) is None
    trap = training_trap(history(6, trap=True))
    assert trap["train"] == pytest.approx(1.0) and trap["gap"] >= 0.15
    assert training_trap([{"epoch": 1, "train_accuracy": 1.0, "val_accuracy": 0.93}])["epoch"] == 1
    assert training_trap([{"epoch": 1, "train_loss": 1.0}]) is None


def test_holm_adjustment_by_hand():
    # sorted 0.01, 0.03, 0.04 -> x3, x2, x1 = 0.03, 0.06, 0.04 -> running max 0.03, 0.06, 0.06
    assert holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    assert holm([0.5, 0.9]) == pytest.approx([1.0, 1.0])


def test_paired_test_needs_the_same_test_images():
    paths = ["a.jpg", "b.jpg", "c.jpg", "d.jpg"]

    def rec(pred, fingerprint="f"):
        scored = {"accuracy": 0.5, "n": 4, "balanced_accuracy": 0.5, "macro_f1": 0.5,
                  "per_class": {}, "confusion_matrix": [[2, 0], [0, 2]]}
        return {"run_id": "r", "kind": "frozen", "split_fingerprint": fingerprint,
                "metrics": {"test": scored},
                "predictions": {"paths": paths, "y_true": [0, 1, 0, 1], "y_pred": pred}}

    res = paired_test(rec([0, 1, 0, 1]), rec([1, 0, 0, 1]))
    assert (res["a_only"], res["b_only"], res["n"]) == (2, 0, 4)
    assert res["p_value"] == pytest.approx(0.5)
    assert paired_test(rec([0, 1, 0, 1]), rec([0, 1, 0, 1], fingerprint="g")) is None


def test_twenty_odd_runs_stay_under_five_megabytes(study, tmp_path):
    store, runs = study
    many = tmp_path / "runs"
    many.mkdir()
    for f in runs.glob("*.json"):
        (many / f.name).write_text(f.read_text())
    # (add_history_runs also writes the scratch CNN's seed 0 again: it counts once)
    add_history_runs(store, many, seeds=range(3, 19))
    assert len(load_records(many)) >= 24
    out = build_report(many, tmp_path / "r.html", efficiency_budget=2)
    assert out.stat().st_size < 5_000_000
    assert section(out.read_text(), "curves").count('class="curve"') >= 20
