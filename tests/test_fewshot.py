"""Few-shot curves: k images per class drawn from all rows, C chosen among them only."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import make_folder
from report_helpers import make_store

from pipeline.errors import UsageError
from pipeline.heads import selection
from pipeline.reporting.fewshot import fewshot_section
from pipeline.store.hdf5 import FeatureStore, StoreContents, write_store
from pipeline.train import baselines
from pipeline.workflows import fewshot
from pipeline.workflows.fewshot import (
    choose_c,
    draw_rows,
    fewshot_curves,
    fit_draw,
    shots_allowed,
)


def blob_store(path, per_class=(20, 20, 20), dim=6, spread=1.0, seed=0, X=None):
    """A store of Gaussian blobs, rows class by class, with no image behind any row.

    Class means are 6 apart per axis; ``spread`` is the noise sd, so
    ``spread=0.5`` gives classes no head can confuse.  ``X`` replaces the
    features (same labels).  Returns ``(path, X, labels)``.
    """
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(len(per_class)), per_class)
    if X is None:
        means = 6.0 * np.eye(len(per_class), dim)
        X = (means[labels] + spread * rng.normal(size=(len(labels), dim))).astype(np.float32)
    rows = [{"path": f"c{c}/img_{i:04d}.png", "label": int(c), "split": i % 3,
             "sha256": f"{i:064x}", "size": 1, "mtime_ns": 1,
             "vectors": (lambda i=i: {"feat": X[i]})} for i, c in enumerate(labels)]
    classes = [f"c{c}" for c in range(len(per_class))]
    write_store(path, StoreContents(
        config={"backbone": "blobs", "classes": classes},
        attrs={"backbone": "blobs", "weights": "none", "dataset": "blobs",
               "data_root": str(path.parent / "no_images_here"), "split_seed": 0},
        classes=classes, rows=rows, skipped=[], taps={"feat": dim}))
    return path, X, labels


# ------------------------------------------------------------------ draws


def test_every_draw_holds_exactly_k_images_of_every_class():
    labels = np.repeat([0, 1, 2], [9, 30, 14])
    for k in (1, 2, 4):
        draws = draw_rows(labels, k, draws=5, seed=3)
        assert len(draws) == 5
        for rows in draws:
            assert len(np.unique(rows)) == len(rows) == 3 * k
            assert np.bincount(labels[rows], minlength=3).tolist() == [k, k, k]
    # Seeded, different from draw to draw, nested across k (so "not drawn at the
    # largest k" means "not drawn at any k").
    assert all(np.array_equal(a, b) for a, b in zip(draw_rows(labels, 2, 5, 3),
                                                    draw_rows(labels, 2, 5, 3)))
    assert len({tuple(r) for r in draw_rows(labels, 2, 5, 3)}) == 5
    for small, large in zip(draw_rows(labels, 2, 5, 3), draw_rows(labels, 4, 5, 3)):
        assert set(small) <= set(large)


def test_k_doubles_while_every_class_keeps_k_plus_one_images_outside_the_draw():
    assert shots_allowed(np.repeat([0, 1], [17, 40])) == [1, 2, 4, 8]   # 17 - 8 = 9 >= 9
    assert shots_allowed(np.repeat([0, 1], [16, 40])) == [1, 2, 4]      # 16 - 8 = 8 < 9
    assert shots_allowed(np.repeat([0, 1], [2, 40])) == []
    assert shots_allowed(np.repeat([0, 1], [17, 40]), shots=(3, 1, 9)) == [1, 3]
    with pytest.raises(UsageError, match="shots"):
        shots_allowed([0, 1, 1], shots=(0, 2))


def test_the_curve_stops_at_the_largest_k_the_data_allow(tmp_path):
    path, *_ = blob_store(tmp_path / "s.h5", per_class=(19, 25, 40))
    out = fewshot_curves(path, budget=60)
    assert out.shots == [1, 2, 4, 8] and out.smallest_class == 19
    assert [p.k for p in out.curves["feat"].points] == [1, 2, 4, 8]
    # Every point scores exactly the images its draw left out.
    assert [p.n_scored for p in out.curves["feat"].points] == [
        84 - 3 * k for k in (1, 2, 4, 8)]


def test_at_least_five_draws(tmp_path):
    path, *_ = blob_store(tmp_path / "s.h5")
    with pytest.raises(UsageError, match="at least 5"):
        fewshot_curves(path, draws=4)
    out = fewshot_curves(path, draws=6, shots=(1, 2), budget=60)
    assert out.draws == 6
    for p in out.curves["feat"].points:
        assert len(p.accuracies) == len(p.C) == 6
        assert p.low <= p.accuracy <= p.high
        assert p.accuracy == pytest.approx(np.mean(p.accuracies))
        assert p.sd == pytest.approx(np.std(p.accuracies, ddof=1))


# ------------------------------------------------------------------ what the head sees


def test_no_drawn_image_is_scored(monkeypatch):
    rng = np.random.default_rng(0)
    y = np.repeat([0, 1, 2], 12)
    X = (rng.normal(size=(len(y), 5)) + 3 * y[:, None]).astype(np.float32)
    rows = draw_rows(y, 4, 1, seed=1)[0]
    seen = []
    real = selection.make_head

    def spying_head(*args, **kwargs):
        model = real(*args, **kwargs)
        predict = model.predict
        model.predict = lambda Z: seen.append(np.asarray(Z)) or predict(Z)
        return model

    monkeypatch.setattr(selection, "make_head", spying_head)
    out = fit_draw(X, y, rows)
    scored = np.concatenate(seen)
    index = {row.tobytes(): i for i, row in enumerate(X)}
    scored_rows = sorted(index[row.astype(np.float32).tobytes()] for row in scored)
    assert scored_rows == sorted(set(range(len(y))) - set(rows.tolist()))
    assert out.n_scored == len(y) - len(rows) == 24


def test_the_chosen_c_depends_only_on_the_drawn_images():
    rng = np.random.default_rng(1)
    y = np.repeat([0, 1, 2], 20)
    X = rng.normal(size=(len(y), 8)) + 1.5 * y[:, None]
    rows = draw_rows(y, 8, 1, seed=0)[0]
    rest = np.setdiff1d(np.arange(len(y)), rows)
    X2, y2 = X.copy(), y.copy()
    X2[rest] = 50 * rng.normal(size=(len(rest), 8))       # other features
    y2[rest] = rng.permutation(y2[rest])                   # and other labels
    first, second = fit_draw(X, y, rows, seed=4), fit_draw(X2, y2, rows, seed=4)
    assert first.C == second.C == choose_c(X[rows], y[rows], seed=4)
    assert first.accuracy != second.accuracy               # the rest was scored, not used


def test_the_chosen_c_of_every_draw_ignores_the_rows_no_draw_took(tmp_path):
    # Draws depend on the labels only and are nested across k: rows outside every
    # draw at the largest k were never drawn.  Replacing their features must not
    # move any chosen C.
    path, X, labels = blob_store(tmp_path / "a.h5", per_class=(12, 15, 13), spread=3.0)
    drawn = np.unique(np.concatenate(draw_rows(labels, 4, 5, seed=0)))
    X_other = X.copy()
    never = np.setdiff1d(np.arange(len(labels)), drawn)
    X_other[never] = np.random.default_rng(9).normal(size=(len(never), X.shape[1])) * 40
    other, *_ = blob_store(tmp_path / "b.h5", per_class=(12, 15, 13), X=X_other)
    a, b = fewshot_curves(path, budget=60), fewshot_curves(other, budget=60)
    assert a.shots == b.shots == [1, 2, 4]
    assert [p.C for p in a.curves["feat"].points] == [p.C for p in b.curves["feat"].points]
    assert ([p.accuracy for p in a.curves["feat"].points]
            != [p.accuracy for p in b.curves["feat"].points])


def test_k_equal_one_uses_the_fixed_default_c(tmp_path):
    path, *_ = blob_store(tmp_path / "s.h5")
    out = fewshot_curves(path, shots=(1,), budget=60)
    assert out.curves["feat"].points[0].C == [fewshot.FEWSHOT_DEFAULT_C] * 5


@pytest.mark.parametrize("n_classes", [2, 4])
def test_the_inner_path_fits_what_scikit_learn_fits(n_classes):
    # The inner cross-validation's own L-BFGS path must give the predictions
    # LogisticRegression gives (binary: scikit-learn fits one binomial vector).
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(n_classes)
    y = np.repeat(np.arange(n_classes), 15)
    A = rng.normal(size=(len(y), 7)) + 0.8 * rng.normal(size=(n_classes, 7))[y]
    B = rng.normal(size=(200, 7))
    grid = [1e-3, 1e-2, 1e-1, 1.0, 10.0]
    mine = fewshot._logreg_path(A, y, B, grid)
    for c, pred in zip(grid, mine):
        ref = LogisticRegression(C=c, max_iter=3000).fit(A, y)
        assert np.mean(pred == ref.predict(B)) >= 0.99, c


def test_the_row_space_gives_the_same_model_on_wide_features():
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(2)
    y = np.repeat([0, 1, 2], 4)
    A, B = rng.normal(size=(12, 300)), rng.normal(size=(50, 300))
    A_small, B_small = fewshot._row_space(A, B)
    assert A_small.shape == (12, 12) and B_small.shape == (50, 12)
    wide = LogisticRegression(C=0.1, max_iter=3000, tol=1e-8).fit(A, y)
    narrow = LogisticRegression(C=0.1, max_iter=3000, tol=1e-8).fit(A_small, y)
    np.testing.assert_allclose(narrow.decision_function(B_small), wide.decision_function(B),
                               atol=1e-4)


# ------------------------------------------------------------------ curves


def test_well_separated_classes_are_near_perfect_from_two_images(tmp_path):
    path, *_ = blob_store(tmp_path / "s.h5", per_class=(20, 20, 20), dim=3, spread=0.5)
    out = fewshot_curves(path, budget=60)
    points = out.curves["feat"].points
    assert [p.k for p in points] == [1, 2, 4, 8]
    for p in points[1:]:
        assert p.accuracy >= 0.98, p
    assert out.note is None
    # No image behind these rows: the pixel curve says why it is missing.
    assert list(out.curves) == ["feat"]
    assert out.skipped == [f"pixels 32x32 (the image folder {tmp_path / 'no_images_here'} "
                              "is gone)"]


def test_the_budget_stops_curves_and_lists_what_is_left(tmp_path):
    path, *_ = blob_store(tmp_path / "s.h5")
    out = fewshot_curves(path, budget=0)
    assert out.curves == {} and "within the budget" in out.note
    assert "feat at k = 1, 2, 4, 8 (over the 0 s budget)" in out.skipped


def test_the_pixel_curve_is_fitted_on_the_decoded_images(tmp_path, monkeypatch):
    data = make_folder(tmp_path / "imgs", per_class=7)
    store = make_store(data, tmp_path / "features")
    decoded = []
    real = baselines.pixel_matrix

    def spying_pixel_matrix(root, paths, size):
        decoded.extend(str(p) for p in paths)
        return real(root, paths, size)

    monkeypatch.setattr(baselines, "pixel_matrix", spying_pixel_matrix)
    out = fewshot_curves(store, pixel_size=8, budget=60)
    assert sorted(decoded) == sorted(store.paths)
    assert list(out.curves) == ["layer1", "layer2", "pixels 8x8"]
    pixels = out.curves["pixels 8x8"]
    assert pixels.kind == "pixels" and pixels.dim == 3 * 8 * 8
    assert [p.k for p in pixels.points] == [1, 2]             # 7 images: 7 - 2 >= 3
    # Flat colours, one per class: raw pixels tell them apart from one image.
    assert all(p.accuracy == 1.0 for p in pixels.points)

    # An image gone: no pixel curve (it would be drawn from other rows), and why.
    (data / store.paths[0]).unlink()
    out = fewshot_curves(store, pixel_size=8, budget=60)
    assert "pixels 8x8" not in out.curves and "layer1" in out.curves
    assert any("1 of the store's images no longer decode" in s for s in out.skipped)


# ------------------------------------------------------------------ report section


def test_the_section_draws_a_figure_and_a_table(tmp_path):
    path, *_ = blob_store(tmp_path / "s.h5", per_class=(12, 15, 13))
    section = fewshot_section(fewshot_curves(path, budget=60).to_dict())
    assert section["figure"].startswith("data:image/svg+xml;base64,")
    assert section["columns"] == [1, 2, 4]
    row, = section["table"]
    assert row["name"] == "feat" and len(row["cells"]) == 3
    cell = row["cells"][-1]
    assert cell["half"] == pytest.approx((cell["high"] - cell["low"]) / 2)
    assert section["grid_text"] == "0.001, 0.01, 0.1, 1, 10"


def test_the_section_without_a_store_keeps_the_note():
    note = {"curves": {}, "skipped": [], "note": "No frozen-feature runs yet."}
    section = fewshot_section(note)
    assert section["figure"] is None and section["table"] == []
    assert section["note"] == "No frozen-feature runs yet." and section["draws"] == 0


def test_the_store_can_be_passed_open(tmp_path):
    path, *_ = blob_store(tmp_path / "s.h5")
    out = fewshot_curves(FeatureStore(path), shots=(1, 2), budget=60)
    assert out.store == str(path) and out.backbone == "blobs"
    assert out.n_images == 60 and out.n_classes == 3


def test_the_result_is_written_as_the_analysis_record_keeps_it(tmp_path):
    # the analysis record (and the report reading it) keep the JSON of schema 4: a point's
    # mean accuracy is "mean" there, ``accuracy`` (a run record's name) in Python
    import json

    path, *_ = blob_store(tmp_path / "s.h5")
    out = fewshot_curves(path, shots=(1, 2), budget=60)
    data = json.loads(json.dumps(out.to_dict()))
    assert list(data) == ["curves", "shots", "draws", "seed", "grid", "default_C", "max_folds",
                          "pixel_size", "n_images", "n_classes", "smallest_class", "backbone",
                          "store", "budget", "seconds", "n_jobs", "skipped", "note"]
    curve = data["curves"]["feat"]
    assert list(curve) == ["kind", "dim", "points"]
    point, first = curve["points"][0], out.curves["feat"].points[0]
    assert list(point) == ["k", "mean", "sd", "low", "high", "accuracies", "C", "n_scored",
                           "seconds"]
    assert point["mean"] == first.accuracy and point["C"] == first.C


def test_draws_in_processes_give_the_same_curves(tmp_path):
    path, *_ = blob_store(tmp_path / "s.h5", spread=3.0)
    alone = fewshot_curves(path, shots=(1, 2, 4), budget=60)
    pooled = fewshot_curves(path, shots=(1, 2, 4), budget=60, n_jobs=2)
    assert pooled.n_jobs == 2
    for a, b in zip(alone.curves["feat"].points, pooled.curves["feat"].points):
        assert (a.accuracies, a.C) == (b.accuracies, b.C)
