"""Wilson intervals and the exact McNemar test on inputs checkable by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from pipeline.runs.stats import (
    corrected_interval,
    corrected_std,
    corrected_ttest,
    mcnemar_exact,
    t_interval,
    wilson_interval,
)

Z = 1.959964


def paired(b: int, c: int, both: int = 3, neither: int = 2):
    """Correctness arrays with ``b`` images only A got right and ``c`` only B got right."""
    a = [True] * b + [False] * c + [True] * both + [False] * neither
    bb = [False] * b + [True] * c + [True] * both + [False] * neither
    return np.array(a), np.array(bb)


@pytest.mark.parametrize("b, c, p", [
    (0, 5, 2 * 0.5 ** 5),                       # 0.0625: all five disagreements one way
    (1, 9, 2 * (1 + 10) / 2 ** 10),             # 0.021484375
    (2, 8, 2 * (1 + 10 + 45) / 2 ** 10),        # 0.109375
    (3, 3, 1.0),                                # an even split is no evidence at all
    (0, 0, 1.0),                                # no disagreements
    (0, 1, 1.0),                                # one disagreement: two-sided p = 2 * 0.5 = 1
])
def test_mcnemar_exact_matches_the_binomial_by_hand(b, c, p):
    res = mcnemar_exact(*paired(b, c))
    assert (res["a_only"], res["b_only"]) == (b, c)
    assert res["p_value"] == pytest.approx(p, rel=1e-9)


def test_mcnemar_is_symmetric_and_ignores_agreement():
    a, b = paired(1, 9, both=50, neither=20)
    assert mcnemar_exact(a, b)["p_value"] == pytest.approx(mcnemar_exact(b, a)["p_value"])
    assert mcnemar_exact(a, b)["p_value"] == pytest.approx(mcnemar_exact(*paired(1, 9))["p_value"])


def test_mcnemar_rejects_unpaired_arrays():
    with pytest.raises(ValueError, match="shape"):
        mcnemar_exact([True, False], [True])


def test_wilson_interval_known_values():
    # 5/10: centre 0.5, half-width z*sqrt(0.025 + z^2/400) / (1 + z^2/10) = 0.2634
    lo, hi = wilson_interval(5, 10)
    assert (lo, hi) == pytest.approx((0.2366, 0.7634), abs=1e-4)
    # 0/10: the lower end is 0 and the upper end is z^2 / (n + z^2) = 0.2775
    assert wilson_interval(0, 10) == pytest.approx((0.0, Z * Z / (10 + Z * Z)))
    # 10/10 mirrors it
    assert wilson_interval(10, 10) == pytest.approx((10 / (10 + Z * Z), 1.0))
    # 81/263, a textbook example (Newcombe 1998 style): 0.2553 to 0.3662
    assert wilson_interval(81, 263) == pytest.approx((0.2553, 0.3662), abs=1e-4)


def test_wilson_interval_narrows_with_n_and_contains_the_estimate():
    widths = []
    for n in (20, 200, 2000):
        lo, hi = wilson_interval(int(0.9 * n), n)
        assert lo < 0.9 < hi
        widths.append(hi - lo)
    assert widths[0] > widths[1] > widths[2]
    assert math.isclose(widths[1] / widths[2], math.sqrt(10), rel_tol=0.1)


def test_wilson_interval_with_no_images_is_uninformative():
    assert wilson_interval(0, 0) == (0.0, 1.0)


# --- Nadeau-Bengio corrected resampled t statistics -------------------------------------------

T3 = 3.182446   # t_{3, 0.975} from a t table
T2 = 4.302653   # t_{2, 0.975}


def test_t_interval_on_a_tiny_list():
    # [1, 2, 3]: mean 2, sd 1, sem 1/sqrt(3); half-width t_{2,.975} / sqrt(3) = 2.484138
    lo, hi = t_interval([1, 2, 3])
    assert (lo, hi) == pytest.approx((2 - T2 / math.sqrt(3), 2 + T2 / math.sqrt(3)), abs=1e-5)
    assert (lo, hi) == pytest.approx((-0.484138, 4.484138), abs=1e-5)
    # the textbook interval, as scipy writes it
    assert (lo, hi) == pytest.approx(stats.t.interval(0.95, 2, loc=2, scale=1 / math.sqrt(3)))
    assert t_interval([0.7]) == (0.7, 0.7)
    assert t_interval([0.4, 0.4, 0.4]) == pytest.approx((0.4, 0.4))


def test_corrected_std_and_interval_by_hand():
    scores = [0.8, 0.9, 0.7, 0.8]
    # mean 0.8; squared deviations 0 + 0.01 + 0.01 + 0 = 0.02; var (ddof=1) = 0.02 / 3
    # factor 1/J + n_test/n_train = 1/4 + 25/75 = 7/12; corrected var = 0.02/3 * 7/12 = 0.14/36
    sd = math.sqrt(0.14 / 36)                                    # 0.0623610
    assert corrected_std(scores, 75, 25) == pytest.approx(sd, rel=1e-12)
    assert sd == pytest.approx(0.0623610, abs=1e-7)
    # plain sd of the mean would be sqrt(0.02/3 / 4) = 0.0408248: the correction widens it
    assert sd / math.sqrt(0.02 / 3 / 4) == pytest.approx(math.sqrt(7 / 3))
    mean, lo, hi = corrected_interval(scores, 75, 25)
    assert mean == pytest.approx(0.8)
    assert (lo, hi) == pytest.approx((0.8 - T3 * sd, 0.8 + T3 * sd), abs=1e-6)
    assert (lo, hi) == pytest.approx((0.601540, 0.998460), abs=1e-5)


def test_corrected_interval_clamps_to_the_unit_interval_and_handles_one_fold():
    # [1, 1, 0.9, 1]: mean 0.975, var = (3 * 0.025^2 + 0.075^2) / 3 = 0.0025
    sd = math.sqrt(0.0025 * 7 / 12)
    mean, lo, hi = corrected_interval([1.0, 1.0, 0.9, 1.0], 75, 25)
    assert (mean, lo, hi) == pytest.approx((0.975, 0.975 - T3 * sd, 1.0), abs=1e-6)
    assert corrected_interval([0.7], 75, 25) == (0.7, 0.7, 0.7)
    assert math.isnan(corrected_std([0.7], 75, 25))
    # zero variance: the interval collapses on the mean
    assert corrected_interval([0.9] * 4, 75, 25) == pytest.approx((0.9, 0.9, 0.9))


def test_corrected_ttest_by_hand():
    d = [0.02, 0.04, 0.0, 0.02]
    # mean 0.02; var (ddof=1) = (0 + 0.0004 + 0.0004 + 0) / 3 = 0.0008/3
    # uncorrected t = 0.02 / sqrt(0.0008/3 / 4) = sqrt(6); corrected divides var/J = var/4 by
    # 1/J + n_test/n_train = 7/12 instead: t = sqrt(6) * sqrt((1/4) / (7/12)) = sqrt(18/7)
    t = math.sqrt(18 / 7)                                        # 1.603567
    res = corrected_ttest(d, 75, 25)
    assert res["t"] == pytest.approx(t, rel=1e-9)
    assert res["t"] == pytest.approx(1.603567, abs=1e-6)
    assert (res["df"], res["n_folds"], res["mean"]) == (3, 4, pytest.approx(0.02))
    assert res["p_value"] == pytest.approx(2 * stats.t.sf(t, 3), rel=1e-9)
    assert res["p_one_sided"] == pytest.approx(stats.t.sf(t, 3), rel=1e-9)
    # the other way round: same two-sided p, the right tail becomes the left
    rev = corrected_ttest([-x for x in d], 75, 25)
    assert rev["t"] == pytest.approx(-t) and rev["p_value"] == pytest.approx(res["p_value"])
    assert rev["p_one_sided"] == pytest.approx(1 - res["p_one_sided"])


def test_corrected_ttest_without_the_correction_is_the_plain_paired_ttest():
    # n_test / n_train = 0 leaves var / J: scipy's one-sample t-test on the differences
    d = [0.03, -0.01, 0.05, 0.02, 0.00, 0.04]
    res = corrected_ttest(d, 1, 0)
    ref = stats.ttest_1samp(d, 0.0)
    assert (res["t"], res["p_value"]) == pytest.approx((ref.statistic, ref.pvalue), rel=1e-9)


def test_corrected_ttest_zero_variance_cases():
    same = corrected_ttest([0.0] * 5, 75, 25)
    assert (same["t"], same["p_value"], same["p_one_sided"]) == (0.0, 1.0, 0.5)
    up = corrected_ttest([0.01] * 5, 75, 25)
    assert (up["t"], up["p_value"], up["p_one_sided"]) == (math.inf, 0.0, 0.0)
    down = corrected_ttest([-0.01] * 5, 75, 25)
    assert (down["t"], down["p_value"], down["p_one_sided"]) == (-math.inf, 0.0, 1.0)
    # one fold: nothing to estimate a variance from, unless nothing differs at all
    assert corrected_ttest([0.0], 75, 25)["p_value"] == 1.0
    assert math.isnan(corrected_ttest([0.05], 75, 25)["p_value"])


# scikit-learn's gallery example "Statistical comparison of models using grid search"
# (scikit-learn/scikit-learn, examples/model_selection/plot_grid_search_stats.py): its two
# functions (copied; docstrings dropped, `t` spelled `stats.t`) and its data, search and folds
# as written.

def _example_corrected_std(differences, n_train, n_test):
    # kr = k times r, r times repeated k-fold crossvalidation,
    # kr equals the number of times the model was evaluated
    kr = len(differences)
    corrected_var = np.var(differences, ddof=1) * (1 / kr + n_test / n_train)
    corrected_std = np.sqrt(corrected_var)
    return corrected_std


def _example_compute_corrected_ttest(differences, df, n_train, n_test):
    mean = np.mean(differences)
    std = _example_corrected_std(differences, n_train, n_test)
    t_stat = mean / std
    p_val = stats.t.sf(np.abs(t_stat), df)  # right-tailed t-test
    return t_stat, p_val


@pytest.fixture(scope="module")
def grid_search_example():
    """The example's ``differences`` (best minus second-best model, 100 folds), n_train, n_test."""
    from sklearn.datasets import make_moons
    from sklearn.model_selection import GridSearchCV, RepeatedStratifiedKFold
    from sklearn.svm import SVC

    X, y = make_moons(noise=0.352, random_state=1, n_samples=100)
    param_grid = [
        {"kernel": ["linear"]},
        {"kernel": ["poly"], "degree": [2, 3]},
        {"kernel": ["rbf"]},
    ]
    svc = SVC(random_state=0)
    cv = RepeatedStratifiedKFold(n_splits=10, n_repeats=10, random_state=0)
    search = GridSearchCV(estimator=svc, param_grid=param_grid, scoring="roc_auc", cv=cv)
    search.fit(X, y)
    # the example sorts cv_results_ by rank_test_score (pandas) and takes the split*_test_score
    # columns; the same without pandas
    res = search.cv_results_
    order = np.argsort(res["rank_test_score"], kind="stable")
    splits = np.array([res[f"split{i}_test_score"] for i in range(cv.get_n_splits())]).T
    assert [res["params"][i]["kernel"] for i in order[:2]] == ["rbf", "linear"]
    differences = splits[order[0]] - splits[order[1]]
    train, test = next(cv.split(X, y))
    return differences, len(train), len(test)


def test_corrected_statistics_match_the_scikit_learn_example(grid_search_example):
    differences, n_train, n_test = grid_search_example
    assert (differences.shape, n_train, n_test) == ((100,), 90, 10)
    assert corrected_std(differences, n_train, n_test) == pytest.approx(
        _example_corrected_std(differences, n_train, n_test), rel=1e-12)

    t_ex, p_ex = _example_compute_corrected_ttest(differences, 99, n_train, n_test)
    res = corrected_ttest(differences, n_train, n_test)
    assert (res["df"], res["n_folds"]) == (99, 100)
    assert res["t"] == pytest.approx(t_ex, rel=1e-12)
    assert res["t"] > 0                     # so the example's sf(|t|) is our right tail
    assert res["p_one_sided"] == pytest.approx(p_ex, rel=1e-12)
    assert res["p_value"] == pytest.approx(2 * p_ex, rel=1e-12)

    # The example states its posterior's credible intervals (a t_{99} around the mean with
    # scale corrected_std): 50% from 0.000977 to 0.019023, 95% from -0.016445 to 0.036445.
    # Those are corrected_interval's mean ± t_{99} * corrected_std (the 95% low end clamped).
    assert corrected_interval(differences, n_train, n_test, confidence=0.5) == pytest.approx(
        (0.01, 0.000977, 0.019023), abs=1e-6)
    mean, lo, hi = corrected_interval(differences, n_train, n_test)
    assert (mean, lo, hi) == pytest.approx((0.01, 0.0, 0.036445), abs=1e-6)
    assert 2 * mean - hi == pytest.approx(-0.016445, abs=1e-6)
    # It prints "Corrected t-value" and "Corrected p-value" to 3 decimals; its stated 95%
    # half-width 0.026445 = t_{99,.975} * sd gives sd, hence t = 0.01 / sd and p = sf(t, 99):
    sd = 0.026445 / stats.t.ppf(0.975, 99)
    assert round(res["t"], 3) == round(0.01 / sd, 3) == 0.750
    assert round(res["p_one_sided"], 3) == round(stats.t.sf(0.01 / sd, 99), 3) == 0.227
