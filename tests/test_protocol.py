"""Evaluation protocols: the stored folds, nested cross-validation, cv records and verdicts."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import make_folder

from pipeline.configs import FitConfig
from pipeline.data.split import assign_folds
from pipeline.errors import UsageError
from pipeline.heads import crossval
from pipeline.reporting.sections import verdict_section
from pipeline.runs.groups import compare, group_runs, score
from pipeline.runs.protocol import resolve_protocol
from pipeline.store.hdf5 import FeatureStore, StoreContents, write_store
from pipeline.workflows.fit import run_fit

COLOURS = {"blue": (0, 0, 200), "green": (0, 160, 0), "red": (240, 0, 0)}


def test_folds_are_balanced_per_class_repeatable_and_order_free():
    paths = [f"c{i % 3}/img{i}.jpg" for i in range(61)]
    labels = [i % 3 for i in range(61)]
    folds = assign_folds(paths, labels, n_folds=5, n_repeats=3, seed=0)
    assert folds.shape == (61, 3) and folds.dtype == np.int8
    for r in range(3):
        for c in range(3):
            counts = np.bincount(folds[np.array(labels) == c, r], minlength=5)
            assert counts.max() - counts.min() <= 1          # stratified
    assert not np.array_equal(folds[:, 0], folds[:, 1])      # repeats differ
    order = np.random.default_rng(1).permutation(61)
    shuffled = assign_folds([paths[i] for i in order], [labels[i] for i in order])
    np.testing.assert_array_equal(shuffled, folds[order])    # depends on paths, not order
    assert not np.array_equal(assign_folds(paths, labels, seed=1), folds)


def test_added_images_keep_earlier_folds_and_fill_the_smallest():
    paths = [f"c{i % 2}/img{i}.jpg" for i in range(40)]
    labels = [i % 2 for i in range(40)]
    old = assign_folds(paths[:30], labels[:30])
    previous = {p: tuple(row) for p, row in zip(paths[:30], old)}
    new = assign_folds(paths, labels, previous=previous)
    np.testing.assert_array_equal(new[:30], old)
    for c in (0, 1):
        counts = np.bincount(new[np.array(labels) == c, 0], minlength=5)
        assert counts.max() - counts.min() <= 1


def test_extract_stores_folds_and_keeps_them_when_images_are_added(tmp_path):
    from pipeline.extraction.job import ExtractConfig, run_extract

    data = make_folder(tmp_path / "img", per_class=8, colours=COLOURS)
    cfg = ExtractConfig(data=str(data), backbone="toy", weights="none", out=str(tmp_path / "f"),
                        layers=("layer1",), progress=False)
    first = FeatureStore(run_extract(cfg).path)
    assert first.has_stored_folds and first.folds.shape == (24, 3)
    before = dict(zip(first.paths, map(tuple, first.folds)))
    make_folder(data, per_class=11, colours=COLOURS)           # 3 more images per class
    second = FeatureStore(run_extract(cfg).path)
    assert len(second) == 33
    after = dict(zip(second.paths, map(tuple, second.folds)))
    assert all(after[p] == before[p] for p in before)


def test_auto_protocol_is_cv_on_small_data_and_says_why(tmp_path):
    class Sized:
        def __init__(self, n, n_test):
            self.n, self.n_test = n, n_test

        def __len__(self):
            return self.n

        def split_sizes(self):
            return {"train": 0, "val": 0, "test": self.n_test}

    assert resolve_protocol("auto", Sized(150, 20)).name == "cv"
    assert resolve_protocol("auto", Sized(3670, 551)).name == "holdout"
    assert resolve_protocol("auto", Sized(5000, 60)).name == "cv"      # too few test images
    assert resolve_protocol("holdout", Sized(150, 20)).name == "holdout"
    assert "2,000" in resolve_protocol("auto", Sized(150, 20)).why
    with pytest.raises(UsageError, match="valid: auto, holdout, cv"):
        resolve_protocol("kfold", Sized(1, 1))


def blob_store(path, n_per_class=20, dims=6, seed=0, sep=3.0):
    """A store of Gaussian blobs (one per class) with the usual split and folds."""
    from pipeline.data.split import assign_split

    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(3), n_per_class)
    X = rng.normal(size=(len(labels), dims)) + sep * np.eye(3, dims)[labels]
    paths = [f"c{y}/img{i}.png" for i, y in enumerate(labels)]
    split = assign_split(paths, labels)
    folds = assign_folds(paths, labels)
    rows = [{"path": p, "label": int(y), "split": int(s), "folds": f, "sha256": str(i),
             "size": 1, "mtime_ns": 1, "vectors": (lambda x=x: {"feat": x})}
            for i, (p, y, s, f, x) in enumerate(zip(paths, labels, split, folds, X))]
    write_store(path, StoreContents(
        config={"backbone": "synthetic"},
        attrs={"backbone": "synthetic", "data_root": str(path.parent), "split_seed": 0},
        classes=["a", "b", "c"], rows=rows, skipped=[], taps={"feat": dims}))
    return FeatureStore(path)


def test_nested_selection_never_sees_the_outer_test_fold(tmp_path, monkeypatch):
    store = blob_store(tmp_path / "blobs.h5")
    X, y = store.X("feat"), store.labels
    row_of = {tuple(x): i for i, x in enumerate(X)}        # Gaussian rows are all distinct
    seen = []
    real = crossval.choose_param

    def spy(clf, X_in, y_in, seed=0, inner_folds=3, **kw):
        seen.append({row_of[tuple(x)] for x in X_in})
        return real(clf, X_in, y_in, seed, inner_folds, **kw)

    monkeypatch.setattr(crossval, "choose_param", spy)
    splits = store.cv_splits()
    folds = crossval.cross_validate("logreg", X, y, splits, n_jobs=1)
    assert len(folds) == len(splits) == 15 and len(seen) == 15
    for (_, _, train, test), used in zip(splits, seen):
        assert used == set(train) and not used & set(test)
    # every image predicted exactly once per repeat
    for r in range(3):
        covered = np.concatenate([f.test for f in folds if f.repeat == r])
        assert sorted(covered) == list(range(len(y)))


def test_cv_fit_records_folds_intervals_and_out_of_fold_predictions(tmp_path):
    store = blob_store(tmp_path / "blobs.h5")
    (record, _), = run_fit(FitConfig(features=store.path, layer="feat", protocol="cv"),
                           tmp_path / "runs")
    cv = record["cv"]
    assert record["protocol"] == "cv" and len(cv["fold_scores"]) == 15
    assert cv["ci"][0] <= cv["mean"] <= cv["ci"][1] and cv["mean"] > 0.9
    assert all(np.isclose(n_tr + n_te, 60) for n_tr, n_te in zip(cv["fold_n_train"],
                                                                   cv["fold_n_test"]))
    pred = np.array(record["predictions"]["y_pred_repeats"])
    assert pred.shape == (3, 60) and (pred >= 0).all()
    assert len(record["predictions"]["paths"]) == 60
    assert record["metrics"]["oof"]["n"] == 60 and "test" not in record["metrics"]
    assert len(cv["fold_params"]) == 15 and all("C" in p for p in cv["fold_params"])


def scored(accuracy, n, correct, balanced, macro_f1):
    """The metrics of scored predictions on ``n`` images of class 0, ``correct`` of them
    right (the rest class 1): what a record needs of them for the report."""
    return {"accuracy": accuracy, "n": n, "balanced_accuracy": balanced, "macro_f1": macro_f1,
            "per_class": {}, "confusion_matrix": [[correct, n - correct], [0, 0]]}


def holdout_record(name, val, test, n=100):
    y = [0] * n
    pred = [0] * round(test * n) + [1] * (n - round(test * n))
    return {"run_id": name, "label": name, "group": name, "kind": "frozen", "protocol": "holdout",
            "split_fingerprint": "f", "metrics": {
                "val": {"accuracy": val, "balanced_accuracy": val},
                "test": scored(test, n, round(test * n), test, test)},
            "predictions": {"paths": [f"p{i}" for i in range(n)], "y_true": y, "y_pred": pred}}


def test_best_is_chosen_on_validation_never_on_test():
    records = [holdout_record("high test, low val", val=0.80, test=0.95),
               holdout_record("low test, high val", val=0.90, test=0.85)]
    groups = group_runs(records)
    assert groups[0]["name"] == "low test, high val"
    assert verdict_section(groups)["best"]["name"] == "low test, high val"
    assert score(records[0])["select"] == 0.80


def cv_record(name, fold_scores, n=50):
    scores = list(fold_scores)
    y = [0] * n
    correct = round(np.mean(scores) * n)
    pred = [0] * correct + [1] * (n - correct)
    return {"run_id": name, "label": name, "group": name, "kind": "frozen", "protocol": "cv",
            "split_fingerprint": "folds",
            "cv": {"fold_ids": [[i // 5, i % 5] for i in range(len(scores))],
                   "fold_scores": scores, "fold_n_train": [40] * len(scores),
                   "fold_n_test": [10] * len(scores), "mean": float(np.mean(scores)),
                   "ci": [0.0, 1.0], "sd": float(np.std(scores, ddof=1))},
            "metrics": {"oof": scored(correct / n, n, correct, 0.5, 0.5)},
            "predictions": {"paths": [f"p{i}" for i in range(n)], "y_true": y, "y_pred": pred,
                            "y_pred_repeats": [pred]}}


def test_cv_verdict_uses_the_corrected_paired_t_test_and_holm():
    rng = np.random.default_rng(0)
    best = 0.9 + rng.normal(0, 0.02, 15)
    close = best - 0.01 + rng.normal(0, 0.02, 15)
    far = best - 0.3 + rng.normal(0, 0.02, 15)
    groups = group_runs([cv_record("far", far), cv_record("best", best),
                         cv_record("close", close)])
    v = verdict_section(groups)
    assert v["best"]["name"] == "best" and v["protocol"] == "cv"
    by_name = {c["group"]["name"]: c for c in v["comparisons"]}
    assert by_name["far"]["significant"] and not by_name["close"]["significant"]
    t = compare(groups[0]["rep"], by_name["far"]["group"]["rep"])
    assert t["test"] == "corrected-t" and t["df"] == 14 and "mcnemar" in t
    diffs = best - far
    by_hand = diffs.mean() / np.sqrt((1 / 15 + 10 / 40) * diffs.var(ddof=1))
    assert t["t"] == pytest.approx(by_hand)
    p_far = by_name["far"]["test"]["p_value"]
    assert by_name["far"]["p_holm"] == pytest.approx(min(1.0, 2 * p_far))


def test_cli_protocol_option_runs_cv_and_says_so(tmp_path):
    from click.testing import CliRunner

    import cli

    store = blob_store(tmp_path / "blobs.h5")
    res = CliRunner().invoke(cli.cli, ["fit", "--features", str(store.path), "--layer", "all",
                                       "--runs", str(tmp_path / "runs")])
    assert res.exit_code == 0, res.output
    assert "cv " in res.output and "over 15 folds" in res.output      # auto: 60 images
    res = CliRunner().invoke(cli.cli, ["fit", "--features", str(store.path), "--layer", "all",
                                       "--protocol", "holdout", "--runs", str(tmp_path / "r")])
    assert res.exit_code == 0 and "val " in res.output and "test " in res.output
    res = CliRunner().invoke(cli.cli, ["fit", "--protocol", "loo"])
    assert res.exit_code == 2 and "holdout" in res.output


# ------------------------------------------------------------------ the protocol object


def test_the_protocol_object_answers_for_holdout_and_cv():
    from pipeline.runs.protocol import (
        CrossValidation,
        Holdout,
        protocol_named,
        protocol_of,
    )
    from pipeline.runs.records import RunRecord

    holdout, cv = protocol_named("holdout", "asked"), protocol_named("cv")
    assert isinstance(holdout, Holdout) and isinstance(cv, CrossValidation)
    assert (holdout.name, holdout.why, cv.why) == ("holdout", "asked", None)
    # one object decides the path, the builder, the key: whichever belongs to it
    assert holdout.pick(holdout=1, cv=2) == 1 and cv.pick(holdout=1, cv=2) == 2
    assert not holdout.cross_validated and cv.cross_validated
    assert (holdout.scored, cv.scored) == ("test", "oof")
    assert (holdout.judged, cv.judged) == (("val", "test"), ("oof",))
    assert [holdout.part_words(p) for p in ("val", "test")] == ["validation", "test"]
    assert cv.part_words("oof") == "out-of-fold"
    # the words the report and the CLI print
    assert holdout.score_name("accuracy") == "test accuracy"
    assert cv.score_name("balanced accuracy") == "cross-validated balanced accuracy"
    assert holdout.selected_by("accuracy") == "validation accuracy"
    assert cv.selected_by("accuracy") == "the cross-validated mean accuracy"
    assert (holdout.short, cv.short, holdout.select_short, cv.select_short) == (
        "test", "cv", "val", "cv")
    assert (holdout.selects_on, cv.selects_on) == ("validation", "cv")
    assert holdout.where(551) == "on 551 test images"
    assert cv.where(150, 15) == "over 15 folds of 150 images"
    assert holdout.describe_test("accuracy") == "exact McNemar test on the shared test images"
    assert "paired bootstrap of the macro-F1" in holdout.describe_test("macro_f1")
    assert "Nadeau-Bengio" in cv.describe_test("accuracy", 15) and "15 folds" in cv.describe_test(
        "accuracy", 15)
    assert [holdout.interval_name(m) for m in ("accuracy", "macro_f1")] == [
        "Wilson CI", "bootstrap interval"]
    assert cv.interval_name("accuracy") == "corrected resampled-t interval"
    # equal to its kind and to its name, whatever its why; never to the other
    assert holdout == Holdout() == "holdout" and cv == "cv" and holdout != cv
    assert {holdout, Holdout("other why")} == {"holdout"} and str(cv) == "cv"
    # what a record must hold: the scored block, and the cv block under cv
    assert holdout.missing({"metrics": {"val": {}}}) == ["metrics.test"]
    assert cv.missing({"metrics": {"oof": {}}})[-1] == "cv"
    # a record's protocol: the typed record's own, or read from a parsed one
    rec = RunRecord.from_dict(cv_record("r", [0.8, 0.9]))
    assert protocol_of(rec) is rec.protocol and rec.protocol == "cv"
    assert protocol_of({"protocol": "cv", "protocol_reason": "why"}).why == "why"
    assert protocol_of({}) == "holdout"
    with pytest.raises(UsageError, match="valid: holdout, cv"):
        protocol_named("kfold")


def test_each_protocol_scores_and_tests_its_own_records():
    from pipeline.runs.records import RunRecord

    h = RunRecord.from_dict(holdout_record("h", val=0.8, test=0.9))
    sc = h.protocol.score(h, "accuracy")
    assert (sc["value"], sc["select"], sc["n"], sc["folds"]) == (0.9, 0.8, 100, None)
    assert h.protocol.fold_spread(h) is None and h.scored_metrics is h.metrics["test"]
    c = RunRecord.from_dict(cv_record("c", [0.8, 0.9, 1.0]))
    sc = c.protocol.score(c, "accuracy")
    assert sc["value"] == pytest.approx(0.9) and sc["select"] == sc["value"] and sc["folds"] == 3
    assert c.protocol.fold_spread(c)["n"] == 3 and c.scored_metrics is c.metrics["oof"]
    # runs of two protocols on the same images: McNemar on accuracy, neither's own test
    other = RunRecord.from_dict({**holdout_record("x", 0.8, 0.9), "protocol": "cv",
                                 "metrics": {"oof": h.metrics["test"]}, "cv": c.cv})
    mixed = compare(h, other, "balanced_accuracy")
    assert (mixed["test"], mixed["metric"]) == ("mcnemar", "accuracy")
