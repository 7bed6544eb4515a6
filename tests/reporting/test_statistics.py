"""The report's statistics against published values, scipy's values and their definitions, with tight tolerances."""

import math
from fractions import Fraction

import pytest

from tracer_pl.reporting.statistics import (
    average_regret_bound,
    mcnemar_p,
    paired_difference_interval,
    regret_slope,
    wilson_interval,
)

Z = 1.959964  # the default z of wilson_interval and paired_difference_interval

# scipy.stats.binomtest(k, n).proportion_ci(method="wilson").low/.high (scipy 1.17.1). scipy's z for 95% is
# 1.959963984540054, ours 1.959964: the ends differ by up to 4e-9.
SCIPY_WILSON = [
    (8, 10, 0.4901624715366418, 0.9433178485456248),
    (0, 10, 0.0, 0.27753279986288926),
    (81, 263, 0.2552885198782742, 0.36620957698280004),
    (15, 148, 0.06238639953073629, 0.16048724172330803),
    (1, 29, 0.006113214292762667, 0.17175521879320282),
    (29, 29, 0.8830302015002592, 1.0),
    (101, 200, 0.43627000033527485, 0.5735415464009526),
    (132, 200, 0.5918849552683626, 0.7220845402909121),
]


@pytest.mark.parametrize(("successes", "n", "low", "high"), SCIPY_WILSON)
def test_wilson_interval_matches_scipy(successes, n, low, high):
    assert wilson_interval(successes, n) == pytest.approx((low, high), abs=5e-9)


@pytest.mark.parametrize(("successes", "n", "low", "high"), [
    (81, 263, 0.2553, 0.3662),  # the score method of Newcombe (1998), Statistics in Medicine 17:857
    (15, 148, 0.0624, 0.1605),
    (0, 20, 0.0, 0.1611),
    (1, 29, 0.0061, 0.1718),
    (8, 10, 0.4902, 0.9433),
])
def test_wilson_interval_matches_published_values(successes, n, low, high):
    assert wilson_interval(successes, n) == pytest.approx((low, high), abs=5e-5)


@pytest.mark.parametrize("n", [1, 2, 7, 64, 200, 1000])
def test_wilson_ends_are_the_proportions_z_standard_errors_away(n):
    # the definition: an end pi in (0, 1) solves (k/n - pi)^2 = z^2 pi (1 - pi) / n; at k = 0 (k = n) the lower
    # (upper) end is the root 0 (1)
    for k in range(n + 1):
        low, high = wilson_interval(k, n)
        for end in (low, high):
            if 0 < end < 1:
                assert (k / n - end) ** 2 == pytest.approx(Z * Z * end * (1 - end) / n, rel=1e-9, abs=1e-15)
        assert low <= k / n <= high
        assert (low == 0.0) == (k == 0) and (high == 1.0) == (k == n)  # exactly, as scipy's


def test_wilson_interval_refuses_no_trials():
    with pytest.raises(ValueError, match="n must be positive"):
        wilson_interval(0, 0)


def test_average_regret_bound():
    assert average_regret_bound(8) == pytest.approx(1.0)  # 2 * sqrt(2 / 8)
    assert average_regret_bound(200) == pytest.approx(0.2)
    assert average_regret_bound(8, batch=4) == pytest.approx(2.0)  # 2 * sqrt(2 * 4 / 8)
    assert math.isinf(average_regret_bound(8, batch=math.inf))


def test_regret_slope_of_power_laws():
    assert regret_slope([(m, 3 * m ** -0.5) for m in (1, 4, 16, 64)]) == pytest.approx(-0.5)
    assert regret_slope([(m, m ** -1.0) for m in (2, 8, 32)]) == pytest.approx(-1.0)
    assert regret_slope([(1, 0.5), (4, 0.0), (16, 0.0)]) is None  # zeros are unusable: fewer than 3 points
    assert regret_slope([(4, 0.5), (4, 0.4), (4, 0.3)]) is None  # one visit count: no slope


def test_mcnemar_exact_p_values():
    assert mcnemar_p(10, 2) == pytest.approx(2 * (1 + 12 + 66) / 4096)  # 2 * P(X <= 2), X ~ Bin(12, 1/2)
    assert mcnemar_p(2, 10) == mcnemar_p(10, 2)
    assert mcnemar_p(5, 5) == 1.0 and mcnemar_p(0, 0) == 1.0


@pytest.mark.parametrize(("b", "c", "p"), [
    # scipy.stats.binomtest(b, b + c, 0.5).pvalue (scipy 1.17.1), two-sided
    (10, 2, 0.03857421875),
    (4, 2, 0.6875),
    (0, 7, 0.015625),
    (3, 0, 0.25),
    (31, 17, 0.05946337525377034),
    (100, 70, 0.025844387581341693),
    (300, 260, 0.0992558700573967),
])
def test_mcnemar_matches_scipy(b, c, p):
    assert mcnemar_p(b, c) == pytest.approx(p, rel=1e-13)


def exact_two_sided(b, n):
    """The two-sided exact binomial test by its definition, in fractions: the total probability under
    Binomial(n, 1/2) of the outcomes no more likely than ``b``."""
    probability = [Fraction(math.comb(n, k), 2**n) for k in range(n + 1)]
    return sum(p for p in probability if p <= probability[b])


@pytest.mark.parametrize("n", [1, 2, 3, 10, 25, 60])
def test_mcnemar_is_the_exact_binomial_test_of_the_discordant_pairs(n):
    for b in range(n + 1):
        assert mcnemar_p(b, n - b) == pytest.approx(float(exact_two_sided(b, n)), rel=1e-15)


def test_bonett_price_interval_by_hand():
    # b = 4, c = 2 of n = 10: (4+1)/12 - (2+1)/12 = 1/6, se = sqrt((8/12 - 1/36) / 12)
    half = Z * math.sqrt((8 / 12 - 1 / 36) / 12)
    assert paired_difference_interval(4, 2, 10) == pytest.approx((1 / 6 - half, 1 / 6 + half))
    # no discordant pair still leaves uncertainty: +-1.96 * sqrt((2/12) / 12)
    assert paired_difference_interval(0, 0, 10) == pytest.approx((-0.230984, 0.230984), abs=1e-6)
    with pytest.raises(ValueError, match="b \\+ c <= n"):
        paired_difference_interval(8, 5, 10)
