"""What to label next: the uncertainty scores, the k-center diversity step and
``predict --rank`` on a real fitted toy run (the toy backbone of conftest)."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from conftest import assert_clean, make_folder

from pipeline.heads.ranking import kcenter_greedy, kmeans_picks, rank_for_labelling, uncertainty

#: Four rows whose order differs by score: (margin, entropy, least-confident) by hand.
PROBA = np.array([[0.9, 0.05, 0.05],    # sure:          0.15, 0.394, 0.1
                  [0.5, 0.5, 0.0],      # a tie of two:  1.0,  0.693, 0.5
                  [0.4, 0.3, 0.3],      # spread:        0.9,  1.089, 0.6
                  [0.6, 0.2, 0.2]])     #                0.6,  0.950, 0.4


@pytest.mark.parametrize("score, values, order", [
    ("margin", [0.15, 1.0, 0.9, 0.6], [1, 2, 3, 0]),
    ("entropy", [0.3944, 0.6931, 1.0889, 0.9503], [2, 3, 1, 0]),
    ("least-confident", [0.1, 0.5, 0.6, 0.4], [2, 1, 3, 0]),
])
def test_uncertainty_scores_order_a_hand_made_matrix(score, values, order):
    got = uncertainty(PROBA, score)
    np.testing.assert_allclose(got, values, atol=1e-4)
    ranked = rank_for_labelling(PROBA, 4, score, diversity="none")
    assert ranked.order.tolist() == order


def _clusters(n_clusters=4, per=5, seed=0):
    """``per`` points around each of ``n_clusters`` orthogonal directions (cluster c holds
    rows c*per .. c*per + per - 1), scaled at random: only their direction counts."""
    rng = np.random.default_rng(seed)
    centres = np.eye(n_clusters)
    x = np.repeat(centres, per, axis=0) + 0.05 * rng.standard_normal((n_clusters * per,
                                                                      n_clusters))
    return x * rng.uniform(0.5, 3.0, size=(len(x), 1)), per


def test_kcenter_picks_one_per_planted_cluster_before_a_second_in_any():
    x, per = _clusters()
    picks = kcenter_greedy(x, 8)
    clusters = picks // per
    assert sorted(clusters[:4].tolist()) == [0, 1, 2, 3]
    assert len(set(picks.tolist())) == 8


def test_kmeans_picks_one_per_planted_cluster_most_uncertain_first():
    x, per = _clusters()
    weights = np.linspace(0.1, 1.0, len(x))          # cluster 3 the most uncertain
    picks = kmeans_picks(x, 4, weights)
    assert sorted((picks // per).tolist()) == [0, 1, 2, 3]
    assert (picks // per).tolist() == [3, 2, 1, 0]


@pytest.mark.parametrize("diversity", ["kmeans", "kcenter"])
def test_diversity_spreads_the_most_uncertain_and_uncertainty_alone_does_not(diversity):
    x, per = _clusters()
    proba = np.tile([0.98, 0.02], (len(x), 1))
    proba[:per] = [0.5, 0.5]               # cluster 0 is the most uncertain, all of it
    proba[per:2 * per] = [0.7, 0.3]
    proba[2 * per:3 * per] = [0.8, 0.2]
    plain = rank_for_labelling(proba, 4, "margin", x, diversity="none")
    assert set((plain.order // per).tolist()) == {0}
    spread = rank_for_labelling(proba, 4, "margin", x, diversity=diversity)
    assert sorted((spread.order // per).tolist()) == [0, 1, 2, 3]
    assert spread.order[0] // per == 0     # the first pick is the most uncertain


def test_diversity_keeps_away_from_labelled_vectors():
    x, per = _clusters()
    labelled = np.array([[1.0, 0, 0, 0], [0, 2.0, 0, 0]])   # clusters 0 and 1 are known
    picks = kcenter_greedy(x, 2, labelled=labelled)
    assert sorted((picks // per).tolist()) == [2, 3]
    proba = np.full((len(x), 2), 0.5)
    ranked = rank_for_labelling(proba, 2, "margin", x, labelled=labelled, diversity="kcenter")
    assert sorted((ranked.order // per).tolist()) == [2, 3]


@pytest.fixture
def toy_run(run, tmp_path):
    """A logreg head on the toy backbone's layer2, fitted on 3 classes x 8 images:
    ``(run id, runs folder, image folder)``."""
    folder = make_folder(tmp_path / "toy", per_class=8)
    res = run("extract", "--data", folder, "--backbone", "toy", "--layer", "layer2",
              "--batch-size", 8, "--workers", 0, "--out", tmp_path / "f", "--no-progress")
    assert res.exit_code == 0, res.output
    res = run("fit", "--features", tmp_path / "f" / "toy_toy_avg.h5", "--layer", "layer2",
              "--clf", "logreg", "--protocol", "holdout", "--runs", tmp_path / "runs")
    assert res.exit_code == 0, res.output
    record = json.loads(next((tmp_path / "runs").glob("*.json")).read_text())
    return record["run_id"], tmp_path / "runs", folder


def test_predict_rank_writes_the_list_and_refuses_bad_options(run, toy_run, tmp_path, caplog):
    import logging

    import pipeline as wb
    from pipeline.models import load_model

    run_id, runs, folder = toy_run
    out = tmp_path / "next.csv"
    res = run("predict", "--model", run_id, folder, "--runs", runs, "--rank", "margin",
              "--rank-top", 5, "--rank-out", out)
    assert res.exit_code == 0, res.output
    assert "label next (5, least sure by margin first)" in res.output
    with open(out, newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert list(rows[0]) == ["rank", "path", "label", "probability", "uncertainty"]
    assert [int(r["rank"]) for r in rows] == [1, 2, 3, 4, 5]
    assert len({r["path"] for r in rows}) == 5
    assert all(0.0 <= float(r["uncertainty"]) <= 1.0 for r in rows)
    # the frozen head's diversity vectors are its features; its store is the labelled set
    model = load_model(run_id, runs)
    assert model.labelled_vectors(runs).shape == (24, 3)
    _proba, vectors, space, _errors = model.proba_and_vectors(sorted(folder.rglob("*.png")))
    assert vectors.shape == (24, 3) and space == "layer2 features"
    with caplog.at_level(logging.INFO, logger="pipeline.workflows.ranking"):
        res = run("predict", "--model", run_id, folder, "--runs", runs, "--rank", "margin",
                  "--rank-top", 3, "--diversity", "kcenter")
    assert res.exit_code == 0, res.output
    assert "diversity kcenter on layer2 features, away from 24 labelled" in caplog.text

    # the API: uncertainty alone lists the most uncertain images, in order
    preds = wb.predict(run_id, folder, runs_dir=runs, rank="entropy", rank_top=3,
                       diversity="none")
    by_score = sorted(preds, key=lambda p: -p.uncertainty)
    assert [p.rank for p in by_score[:3]] == [1, 2, 3]
    assert {p.rank for p in by_score[3:]} == {0}

    assert_clean(run("predict", "--model", run_id, folder, "--runs", runs, "--rank",
                     "margin", "--rank-out", out), "--rank-out", "--overwrite")
    res = run("predict", "--model", run_id, folder, "--runs", runs, "--rank", "margin",
              "--rank-top", 0)
    assert res.exit_code == 2 and "--rank-top 0 must be a whole number >= 1" in res.output
    res = run("predict", "--model", run_id, folder, "--runs", runs, "--rank-out",
              tmp_path / "other.csv")
    assert res.exit_code == 2 and "pass --rank margin too" in res.output
    assert "Traceback" not in res.output


def test_predict_rank_spreads_a_baseline_on_its_probabilities(run, toy_run, tmp_path):
    """A kind without features of its own (the pixel baseline) ranks on its probabilities."""
    from pipeline.models import load_model

    _run_id, runs, folder = toy_run
    res = run("baseline", "--features", tmp_path / "f" / "toy_toy_avg.h5", "--kind", "pixels",
              "--protocol", "holdout", "--runs", tmp_path / "pixels")
    assert res.exit_code == 0, res.output
    record = json.loads(next((tmp_path / "pixels").glob("*.json")).read_text())
    model = load_model(record["run_id"], tmp_path / "pixels")
    files = sorted(folder.rglob("*.png"))
    proba, vectors, space, _errors = model.proba_and_vectors(files)
    assert space == "probabilities" and np.array_equal(vectors, proba)
    assert model.labelled_vectors(tmp_path / "pixels") is None
    res = run("predict", "--model", record["run_id"], folder, "--runs", tmp_path / "pixels",
              "--rank", "least-confident", "--rank-top", 4)
    assert res.exit_code == 0, res.output
    assert "label next (4, least sure by least-confident first)" in res.output
