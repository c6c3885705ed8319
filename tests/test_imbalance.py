"""Imbalanced classes: the rule, the selection metric, class weights, collapse, the
majority-class reference, per-fold metrics, the holdout bootstrap, and a 95:5 set of real
flower photos through the CLI and the report."""

from __future__ import annotations

import json
import re
import shutil
import warnings
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from report_helpers import make_store
from sklearn.metrics import accuracy_score, balanced_accuracy_score, f1_score, recall_score

from pipeline.balance import (
    IMBALANCE_RATIO,
    Selection,
    collapse,
    confusion,
    is_imbalanced,
    metric_values,
    resolve_class_weight,
    resolve_metric,
)
from pipeline.data.split import assign_folds, assign_split
from pipeline.errors import UsageError
from pipeline.heads import get_head
from pipeline.heads.crossval import FoldResult
from pipeline.heads.selection import Choice, fit_head, make_head, select_and_fit
from pipeline.reporting.sections import training_trap, verdict_section
from pipeline.runs.groups import (
    compare,
    group_runs,
    majority_reference,
    resolve_report_metric,
    score,
)
from pipeline.runs.records import RunInfo, load_records, new_cv_record, save_record
from pipeline.runs.stats import bootstrap_interval, corrected_ttest, paired_bootstrap
from pipeline.store.hdf5 import FeatureStore, StoreContents, write_store
from pipeline.workflows.report import build_report

SAMPLE = Path(__file__).resolve().parent.parent / "pipeline" / "sample_data" / "flowers"
#: The full flowers' class sizes (daisy, dandelion, roses, sunflowers, tulips): 898 / 633.
FLOWERS = [633, 898, 641, 699, 799]


# ------------------------------------------------------------------ the rule


def test_imbalance_rule_metric_and_weights_resolve_from_class_counts():
    assert not is_imbalanced(["a"] * 15 + ["b"] * 10)           # exactly 1.5x: balanced
    assert is_imbalanced(["a"] * 16 + ["b"] * 10)               # 1.6x
    assert not is_imbalanced([0] * 7)                            # one class: nothing to weigh
    # the five flowers (1.42x) keep accuracy and no weights: their results do not move
    assert resolve_metric("auto", FLOWERS)[0] == "accuracy"
    assert resolve_class_weight("auto", FLOWERS)[0] == "none"
    metric, why = resolve_metric("auto", [380, 20], ["daisy", "roses"])
    assert metric == "balanced_accuracy" and "19.00x" in why and f"{IMBALANCE_RATIO}" in why
    assert resolve_class_weight("auto", [380, 20])[0] == "balanced"
    assert resolve_metric("macro_f1", [380, 20]) == ("macro_f1", "macro_f1 (asked for)")
    with pytest.raises(UsageError, match="valid: auto, accuracy, balanced_accuracy, macro_f1"):
        resolve_metric("f1", FLOWERS)


def test_knn_refuses_class_weights_and_says_the_fix():
    with pytest.raises(UsageError) as exc:
        resolve_class_weight("balanced", [380, 20], head=get_head("knn"))
    message = exc.value.render()
    assert "--class-weight none" in message and "--clf logreg" in message
    assert "KNeighborsClassifier" in message
    weight, why = resolve_class_weight("auto", [380, 20], head=get_head("knn"))
    assert weight == "none" and "knn takes no class weights" in why
    with pytest.raises(UsageError, match="class_weight"):
        make_head("knn", 5, class_weight="balanced")


def test_metric_values_are_scikit_learns():
    rng = np.random.default_rng(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")   # sklearn warns of classes absent from y_true
        for _ in range(100):
            k, n = int(rng.integers(2, 6)), int(rng.integers(4, 40))
            y, p = rng.integers(0, k, n), rng.integers(0, k, n)
            got = metric_values(y, p, k)
            assert got["accuracy"] == pytest.approx(accuracy_score(y, p))
            assert got["balanced_accuracy"] == pytest.approx(balanced_accuracy_score(y, p))
            assert got["macro_f1"] == pytest.approx(f1_score(y, p, average="macro",
                                                              zero_division=0))


def test_collapse_is_one_class_for_nearly_everything_not_a_large_class():
    y = np.array([0] * 95 + [1] * 5)
    assert collapse(confusion(y, np.zeros(100, int)))["class"] == 0          # all majority
    assert collapse(confusion(y, np.ones(100, int)))["class"] == 1           # all minority
    # 96% of the answers are class 0, yet it finds 4 of the 5 others: not collapsed
    finds = np.array([0] * 95 + [1] * 4 + [0])
    assert collapse(confusion(y, finds)) is None
    # 99% of the answers class 0, 1 of the 5 others found: nearly all one class
    nearly = np.array([0] * 95 + [1] + [0] * 4)
    assert collapse(confusion(y, nearly))["others_as_class"] == pytest.approx(0.8)
    assert collapse(confusion(np.zeros(10, int), np.zeros(10, int))) is None  # truth is one class
    # balanced data, one class for 97% of the answers: collapsed
    y = np.repeat([0, 1, 2], 20)
    p = np.zeros(60, int)
    p[20] = 1
    assert collapse(confusion(y, p)) == {"class": 0, "share": pytest.approx(59 / 60),
                                         "others_as_class": pytest.approx(39 / 40)}


# ------------------------------------------------------------------ heads and training


def blobs(counts=(190, 10), sep=1.2, dims=4, seed=0):
    """Two overlapping Gaussian classes, ``counts`` images each: ``(X, y)``."""
    rng = np.random.default_rng(seed)
    y = np.repeat(np.arange(len(counts)), counts)
    return rng.normal(size=(len(y), dims)) + sep * np.eye(len(counts), dims)[y], y


def minority_recall(model, X, y):
    return recall_score(y, model.predict(X), labels=[1], average=None)[0]


@pytest.mark.parametrize("clf", ["logreg", "svm", "linear-svm", "sgd-logreg"])
def test_balanced_class_weights_raise_a_weighted_heads_minority_recall(clf):
    X, y = blobs()
    X_te, y_te = blobs(seed=1)
    recalls = {}
    for weight in ("none", "balanced"):
        model = fit_head(make_head(clf, 1.0 if clf != "sgd-logreg" else 1e-3, seed=0,
                                   calibrated=clf == "svm", class_weight=weight), X, y, weight)
        recalls[weight] = minority_recall(model, X_te, y_te)
    assert recalls["balanced"] > recalls["none"] + 0.2, recalls


def test_selection_metric_and_weights_reach_select_and_fit():
    X, y = blobs()
    X_va, y_va = blobs(seed=2)
    res = select_and_fit("logreg", X, y, X_va, y_va, choice=Choice("auto", "auto"))
    assert (res.metric, res.class_weight) == ("balanced_accuracy", "balanced")
    assert {"val_accuracy", "val_balanced_accuracy", "val_macro_f1"} <= set(res.search[0])
    best = max(res.search, key=lambda s: s["val_balanced_accuracy"])["val_balanced_accuracy"]
    chosen = next(s for s in res.search if s["C"] == res.params["C"])
    assert chosen["val_balanced_accuracy"] == best
    assert res.model[-1].class_weight == "balanced"


def test_weighted_loss_and_the_epoch_kept_by_balanced_accuracy():
    import torch

    from pipeline.train.datasets import TensorPairs
    from pipeline.train.loop import ParamGroup, Schedule, TrainConfig, loss_weights, train

    X, y = blobs(sep=1.0)
    X_va, y_va = blobs(seed=3, sep=1.0)
    train_set, val_set = TensorPairs(X.astype(np.float32), y), TensorPairs(
        X_va.astype(np.float32), y_va)
    recall = {}
    for weight in ("none", "balanced"):
        torch.manual_seed(0)
        model = torch.nn.Linear(4, 2)
        weights = loss_weights(weight, train_set, 2)
        cfg = TrainConfig(epochs=6, batch_size=32, optimizer="adam", patience=None,
                          schedule=Schedule("constant", per="epoch"), class_weights=weights,
                          select_by="balanced_accuracy", channels_last=False)
        res = train(model, [ParamGroup("all", list(model.parameters()), 0.05)], train_set,
                    val_set, cfg)
        scores = [h["val_balanced_accuracy"] for h in res.history]
        assert res.history[res.best_epoch - 1]["val_balanced_accuracy"] == max(scores)
        with torch.no_grad():
            pred = model(torch.as_tensor(X_va, dtype=torch.float32)).argmax(1).numpy()
        recall[weight] = float(np.mean(pred[y_va == 1] == 1))
    assert weights == pytest.approx((200 / (2 * 190), 200 / (2 * 10)))
    assert recall["balanced"] > recall["none"], recall


# ------------------------------------------------------------------ per-fold metrics and tests


def imbalanced_store(path, counts=(95, 20), seed=0, sep=2.0):
    """A store of two Gaussian blobs, ``counts`` images, with the usual split and folds."""
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(2), counts)
    X = rng.normal(size=(len(labels), 4)) + sep * np.eye(2, 4)[labels]
    paths = [f"c{y}/img{i}.png" for i, y in enumerate(labels)]
    split, folds = assign_split(paths, labels), assign_folds(paths, labels)
    rows = [{"path": p, "label": int(y), "split": int(s), "folds": f, "sha256": str(i),
             "size": 1, "mtime_ns": 1, "vectors": (lambda x=x: {"feat": x})}
            for i, (p, y, s, f, x) in enumerate(zip(paths, labels, split, folds, X))]
    write_store(path, StoreContents(
        config={"backbone": "synthetic"},
        attrs={"backbone": "synthetic", "data_root": str(path.parent), "split_seed": 0},
        classes=["major", "minor"], rows=rows, skipped=[], taps={"feat": 4}))
    return FeatureStore(path)


def constant_record(store, cls: int, label: str) -> dict:
    """A real cv record of a classifier that answers ``cls`` for every image."""
    k = len(store.classes)
    folds = [FoldResult(r, f, te, np.eye(k)[np.full(len(te), cls)], {"C": 1.0}, len(tr))
             for r, f, tr, te in store.cv_splits()]
    record = new_cv_record(RunInfo(kind="frozen", method="constant", label=label,
                                   layer="feat", seed=0), store, folds)
    record.update(Selection.resolve("auto", "auto", store.labels, store.classes)
                  .record_fields())
    return record


def test_cv_records_keep_every_folds_metrics_and_the_t_test_uses_the_chosen_one(tmp_path):
    from pipeline.configs import FitConfig
    from pipeline.workflows.fit import run_fit

    store = imbalanced_store(tmp_path / "s.h5", counts=(95, 20))
    (fitted, _), = run_fit(FitConfig(features=store.path, layer="feat", protocol="cv"),
                           tmp_path / "runs")
    assert fitted["selection_metric"] == "balanced_accuracy"
    assert fitted["class_weight"] == "balanced"
    assert fitted["class_counts"] == {"major": 95, "minor": 20}
    assert "auto" in fitted["selection_metric_reason"]
    fm = fitted["cv"]["fold_metrics"]
    assert fm["accuracy"] == pytest.approx(fitted["cv"]["fold_scores"])
    y = store.labels
    pred = np.array(fitted["predictions"]["y_pred_repeats"])
    fold_of = store.folds
    r, f = fitted["cv"]["fold_ids"][4]
    rows = np.flatnonzero(fold_of[:, r] == f)
    assert fm["balanced_accuracy"][4] == pytest.approx(
        balanced_accuracy_score(y[rows], pred[r, rows]))
    majority = constant_record(store, 0, "always major")
    t = compare(fitted, majority, "balanced_accuracy")
    diffs = np.array(fm["balanced_accuracy"]) - 0.5        # the constant scores 1/K per fold
    by_hand = corrected_ttest(diffs, np.mean(fitted["cv"]["fold_n_train"]),
                              np.mean(fitted["cv"]["fold_n_test"]))
    assert t["metric"] == "balanced_accuracy" and t["t"] == pytest.approx(by_hand["t"])
    assert compare(fitted, majority, "accuracy")["metric"] == "accuracy"
    # an older record without per-fold metrics: tested on accuracy, and said so
    old = json.loads(json.dumps(fitted.to_dict()))
    del old["cv"]["fold_metrics"]
    assert compare(fitted, old, "balanced_accuracy")["metric"] == "accuracy"
    assert score(old, "balanced_accuracy")["fallback"] is True


def test_holdout_bootstrap_interval_and_paired_test():
    rng = np.random.default_rng(0)
    y = np.array([0] * 90 + [1] * 10)
    good = np.where(rng.random(100) < 0.1, 1 - y, y)
    always = np.zeros(100, int)
    value = metric_values(y, good)["balanced_accuracy"]
    lo, hi = bootstrap_interval("balanced_accuracy", y, good)
    assert 0 <= lo < value < hi <= 1
    assert bootstrap_interval("balanced_accuracy", y, good) == (lo, hi)      # seeded
    res = paired_bootstrap("balanced_accuracy", y, good, always)
    assert res["mean"] == pytest.approx(value - 0.5)
    assert res["ci"][0] > 0 and res["p_value"] < 0.01 and res["n"] == 100
    assert paired_bootstrap("macro_f1", y, good, good)["p_value"] == 1.0


def test_holdout_comparison_on_balanced_accuracy_is_a_paired_bootstrap(tmp_path):
    from pipeline.configs import FitConfig
    from pipeline.workflows.fit import run_fit

    store = imbalanced_store(tmp_path / "s.h5", counts=(190, 40))
    runs = tmp_path / "runs"
    cfg = FitConfig(features=store.path, layer="feat", protocol="holdout")
    (a, _), = run_fit(cfg, runs)
    (b, _), = run_fit(replace(cfg, class_weight="none"), runs)
    test = compare(a, b, "balanced_accuracy")
    assert test["test"] == "bootstrap" and len(test["ci"]) == 2 and 0 < test["p_value"] <= 1
    assert compare(a, b, "accuracy")["test"] == "mcnemar"
    sc = score(a)
    assert sc["metric"] == "balanced_accuracy" and sc["low"] <= sc["value"] <= sc["high"]


def test_training_trap_says_memorising_only_with_high_training_accuracy():
    collapsed_cnn = [{"epoch": e, "train_accuracy": 0.576, "val_accuracy": 0.387}
                     for e in (1, 2, 3)]
    assert training_trap(collapsed_cnn)["kind"] == "gap"                 # never "memorising"
    found = {"text": "answers benign for 100% of the 31 validation images"}
    trap = training_trap(collapsed_cnn, found, best_epoch=2)
    assert trap["kind"] == "collapse" and trap["epoch"] == 2 and "benign" in trap["text"]
    flagged = [dict(collapsed_cnn[0], val_collapsed=True)]
    assert training_trap(flagged)["kind"] == "collapse"
    memorising = [{"epoch": 1, "train_accuracy": 1.0, "val_accuracy": 0.7}]
    assert training_trap(memorising)["kind"] == "memorising"


# ------------------------------------------------------------------ 95:5 real photos


@pytest.fixture(scope="module")
def study95(tmp_path_factory):
    """A 95:5 two-class set of real flower photos (the bundled 30 per class: 120 of
    daisy, dandelion, sunflowers and tulips as "other", 6 roses), toy-backbone features,
    ``fit --layer all`` (logreg, class weights none and balanced) through the CLI, a
    classifier answering "other" for every image, and the report."""
    from click.testing import CliRunner

    import cli

    root = tmp_path_factory.mktemp("imb95")
    data = root / "data"
    for name in ("daisy", "dandelion", "sunflowers", "tulips"):
        (data / "other").mkdir(parents=True, exist_ok=True)
        for f in sorted((SAMPLE / name).glob("*.jpg")):
            shutil.copy(f, data / "other" / f"{name}_{f.name}")
    (data / "roses").mkdir()
    for f in sorted((SAMPLE / "roses").glob("*.jpg"))[:6]:
        shutil.copy(f, data / "roses" / f.name)
    store = make_store(data, root / "features")
    runs = root / "runs"
    outputs = {}
    for weight in ("none", "auto"):
        res = CliRunner().invoke(cli.cli, ["fit", "--features", str(store.path), "--layer",
                                           "all", "--class-weight", weight, "--runs",
                                           str(runs)])
        assert res.exit_code == 0, res.output
        outputs[weight] = res.output
    save_record(constant_record(store, store.classes.index("other"), "always other"), runs)
    page = build_report(runs, root / "report.html", efficiency_budget=1).read_text()
    return {"store": store, "runs": runs, "outputs": outputs, "page": page, "root": root}


def section(html: str, name: str) -> str:
    return re.search(rf'<section id="{name}".*?</section>', html, re.S).group(0)


def test_95_5_the_metric_switches_automatically_and_the_output_says_which(study95):
    store = study95["store"]
    assert np.bincount(store.labels).tolist() == [120, 6]
    out = study95["outputs"]["auto"]
    assert "selection metric: balanced_accuracy (auto: imbalanced classes" in out
    assert "class weights: balanced (auto: imbalanced classes" in out
    assert "balanced accuracy cv" in out and "[bal. acc., balanced weights]" in out
    assert "class weights: none (asked for)" in study95["outputs"]["none"]
    verdict = section(study95["page"], "verdict")
    assert "Selection metric: <strong>balanced accuracy</strong>" in verdict
    assert "imbalanced" in verdict


def test_95_5_a_one_class_predictor_never_wins_and_is_flagged(study95, tmp_path):
    records = load_records(study95["runs"])
    for metric in ("balanced_accuracy", "accuracy"):          # even ranked on accuracy
        groups = group_runs(records, metric)
        assert groups[0]["name"] != "always other"
        assert groups[-1]["name"] == "always other" and groups[-1]["collapsed"]
        assert verdict_section(groups)["best"]["name"] != "always other"
    page = study95["page"]
    verdict, table = section(page, "verdict"), section(page, "comparison")
    assert "Collapsed:</strong> always other answers other for 100%" in verdict
    assert re.search(r'class="collapsed">\s*<td>always other <span class="flag">collapsed', table)
    assert "never recommended" in section(page, "advice")
    forced = build_report(study95["runs"], tmp_path / "acc.html", efficiency_budget=1,
                          metric="accuracy").read_text()
    assert "Selection metric: <strong>accuracy</strong>: accuracy (asked for)" in forced
    assert "<strong>always other</strong>" not in section(forced, "verdict")


def test_95_5_tables_show_the_majority_row_balanced_accuracy_and_macro_f1(study95):
    page = study95["page"]
    verdict, table = section(page, "verdict"), section(page, "comparison")
    for html in (verdict, table, section(page, "depth")):
        assert "majority class (other), reference" in html
    assert re.search(r"acc\. \d+\.\d% · macro-F1 \d+\.\d%", section(page, "depth"))
    head = table.split("<tbody>")[0]
    assert "balanced accuracy (selects)" in head and "accuracy" in head and "macro-F1" in head
    assert "accuracy" in verdict.split("<tbody>")[0] and "macro-F1" in verdict.split("<tbody>")[0]
    record = load_records(study95["runs"])[0]
    ref = majority_reference(record, "balanced_accuracy")
    assert ref["accuracy"] == pytest.approx(120 / 126) and ref["balanced_accuracy"] == 0.5
    assert ref["macro_f1"] == pytest.approx((2 * 120 / (120 + 126)) / 2)


def test_95_5_class_weights_raise_minority_recall(study95):
    by_weight = {}
    for r in load_records(study95["runs"]):
        if r["method"] == "logreg" and r["layer"] == "layer2":
            by_weight[r["class_weight"]] = r["metrics"]["oof"]["per_class"]["roses"]["recall"]
    assert by_weight["balanced"] > by_weight["none"], by_weight


def test_old_records_without_the_new_fields_still_load_and_report(study95, tmp_path):
    old = tmp_path / "runs"
    old.mkdir()
    for f in study95["runs"].glob("*.json"):
        record = json.loads(f.read_text())
        for key in ("selection_metric", "selection_metric_reason", "class_weight",
                    "class_weight_reason", "class_counts"):
            record.pop(key, None)
        record["cv"].pop("fold_metrics", None)
        (old / f.name).write_text(json.dumps(record))
    records = load_records(old)
    assert len(records) == len(list(study95["runs"].glob("*.json")))
    metric, why = resolve_report_metric(records)
    assert metric == "balanced_accuracy" and "predate" in why
    page = build_report(old, tmp_path / "r.html", efficiency_budget=1).read_text()
    verdict = section(page, "verdict")
    assert "Recorded before per-fold balanced accuracy was kept" in verdict
    assert "majority class (other), reference" in verdict
    assert group_runs(records)[-1]["name"] == "always other"


def test_streamed_sgd_head_weights_classes_and_selects_by_the_metric(tmp_path):
    from pipeline.heads.streaming import Passes, stream_select_and_fit

    store = imbalanced_store(tmp_path / "s.h5", counts=(380, 20), sep=1.2)
    y_test = store.y("test")
    recall = {}
    for weight in ("none", "balanced"):
        res, pred, _ = stream_select_and_fit(store, "feat", passes=Passes(epochs=5),
                                             choice=Choice("balanced_accuracy", weight))
        assert res.metric == "balanced_accuracy" and res.class_weight == weight
        chosen = next(s for s in res.search if s["alpha"] == res.params["alpha"])
        assert chosen["val_balanced_accuracy"] == max(s["val_balanced_accuracy"]
                                                      for s in res.search)
        recall[weight] = float(np.mean(pred[y_test == 1] == 1))
    assert recall["balanced"] > recall["none"], recall


def test_demo_and_ladder_tables_end_with_the_majority_row_and_flag_collapse(study95, capsys):
    from pipeline.cli.tables import print_rows
    from pipeline.workflows.demo import summary_rows
    from pipeline.workflows.ladder import reference_row, summarise_group

    records = load_records(study95["runs"])
    rows = summary_rows(records)
    assert rows[-1]["reference"] and rows[-1]["label"] == "majority class (other), reference"
    assert rows[-2]["label"] == "always other" and "answers other" in rows[-2]["collapsed"]
    assert rows[0]["metric"] == "balanced_accuracy" and rows[0]["collapsed"] is None
    print_rows(rows, "balanced_accuracy", imbalanced=True, protocol=records[0].protocol)
    out = capsys.readouterr().out
    assert "cv bal. acc." in out and "acc" in out and "macro-F1" in out
    assert "COLLAPSED: answers other for 100%" in out
    assert out.strip().splitlines()[-2].startswith("majority class (other), reference")
    ladder_record = next(r for r in records if r.label == "always other")
    ladder = summarise_group([ladder_record])
    assert ladder.metric == "balanced_accuracy" and ladder.score == 0.5
    assert ladder.collapsed and reference_row(records[0], "balanced_accuracy").reference
    # a row's metrics carry the run record's names, and its JSON is theirs too
    row = json.loads(json.dumps(ladder.to_dict()))
    assert row["balanced_accuracy"] == ladder_record.scored_metrics["balanced_accuracy"]
    assert row["accuracy"] == ladder.accuracy and row["protocol"] == "cv" and row["ci"]


def test_ladder_cli_prints_the_metric_the_other_scores_and_the_majority_row(study95, tmp_path):
    from click.testing import CliRunner

    import cli

    res = CliRunner().invoke(cli.cli, ["ladder", "--features", str(study95["store"].path),
                                       "--rungs", "frozen", "--runs", str(tmp_path / "runs")])
    assert res.exit_code == 0, res.output
    lines = res.output.strip().splitlines()
    head = next(line for line in lines if line.startswith("method"))
    assert "cv bal. acc." in head and "macro-F1" in head and "acc" in head
    assert any(line.startswith("frozen toy") for line in lines)
    assert any(line.startswith("majority class (other), reference") for line in lines)
    assert "selection metric: balanced_accuracy (auto" in res.output


def test_demo_cli_prints_the_table_with_the_metric_and_the_majority_row(study95, monkeypatch):
    """The demo command's printing, on the 95:5 study's records (the demo itself is the
    slow end-to-end test)."""
    from click.testing import CliRunner

    import cli
    from pipeline.workflows import demo

    records = load_records(study95["runs"])
    monkeypatch.setattr(demo, "run_demo", lambda **kw: {
        "records": records, "seconds": 1.0, "report": study95["root"] / "report.html"})
    res = CliRunner().invoke(cli.cli, ["demo", "--metric", "auto"])
    assert res.exit_code == 0, res.output
    lines = res.output.strip().splitlines()
    assert "cv bal. acc." in next(line for line in lines if line.startswith("method"))
    assert any(line.startswith("majority class (other), reference") for line in lines)
    assert any(line.startswith("always other") and "COLLAPSED" in line for line in lines)
    assert "selection metric: balanced_accuracy (auto" in res.output
