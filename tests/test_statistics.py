"""Wilson intervals and the exact McNemar test on inputs checkable by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest

from pipeline.runs.stats import mcnemar_exact, wilson_interval

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
