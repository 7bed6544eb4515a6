"""Statistics of the reports: binomial and paired intervals, McNemar's test, regret bounds and slopes.

Pure functions of numbers (no files, no plotting), each checked in the tests against values worked out by hand.

The Wilson interval and the exact McNemar test are written out here, not taken from ``scipy.stats.binomtest``
(``proportion_ci(method="wilson")``, and the two-sided exact test of the discordant pairs against p = 1/2):
scipy is not a dependency of tracer_pl, and for these two closed forms of a few lines each it would add over
100 MB to every install. The tests compare both with values computed by scipy (written into the tests, so they
run without it): they agree to 4e-9 (Wilson; ``z`` is 1.959964 here, 1.95996398... in scipy) and to 1e-14
relative (McNemar, summed here in integers).
"""

from __future__ import annotations

import math
from collections.abc import Sequence


def wilson_interval(successes: float, n: int, z: float = 1.959964) -> tuple[float, float]:
    """The Wilson score interval of a binomial proportion (95% for the default ``z``).

    Its ends are the proportions ``pi`` at which ``successes / n`` lies ``z`` standard errors
    ``sqrt(pi * (1 - pi) / n)`` away: the roots of a quadratic in ``pi``, written out below. With no success the
    lower end is exactly 0, with no failure the upper end exactly 1 (the formula leaves rounding errors there).
    """
    if n <= 0:
        raise ValueError(f"n must be positive, got {n}")
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    low = 0.0 if successes <= 0 else max(0.0, centre - half)
    high = 1.0 if successes >= n else min(1.0, centre + half)
    return low, high


def average_regret_bound(visits: int, batch: float = 1) -> float:
    """The bound on the average regret after ``visits`` updates with values in [-1, 1], ``batch`` per strategy.

    ``2*sqrt(2*batch/visits)`` (:func:`tracer_pl.core.regret.regret_bound` divided by ``visits``); infinite for
    ``batch = inf`` (a run whose values are unbounded).
    """
    return 2 * math.sqrt(2 * batch / visits)


def regret_slope(points: Sequence[tuple[float, float]]) -> float | None:
    """Least-squares slope of log(average regret) against log(visits), over points with both positive.

    Regret matching's average regret falls at least like M^-1/2, so a slope of about -0.5 or steeper is the
    expected shape. None with fewer than three usable points or a single visit count.
    """
    usable = [(math.log(m), math.log(r)) for m, r in points if m >= 1 and r > 0]
    if len(usable) < 3:
        return None
    mean_x = sum(x for x, _ in usable) / len(usable)
    mean_y = sum(y for _, y in usable) / len(usable)
    spread = sum((x - mean_x) ** 2 for x, _ in usable)
    if spread == 0:
        return None
    return sum((x - mean_x) * (y - mean_y) for x, y in usable) / spread


def mcnemar_p(b: int, c: int) -> float:
    """Exact two-sided McNemar p-value of ``b`` and ``c`` discordant pairs.

    That is 2·P(X <= min(b, c)) for X ~ Binomial(b + c, 1/2), capped at 1: the two-sided exact binomial test
    of ``b`` successes in ``b + c`` trials against p = 1/2. The sum is taken in integers and divided once, so the
    p-value is the exact one rounded to a float.
    """
    n = b + c
    if n == 0:
        return 1.0
    return min(1.0, 2 * sum(math.comb(n, k) for k in range(min(b, c) + 1)) / 2**n)


def paired_difference_interval(b: int, c: int, n: int, z: float = 1.959964) -> tuple[float, float]:
    """Bonett-Price adjusted Wald interval (95% for the default ``z``) of a paired difference of proportions.

    ``b`` pairs where only the method is right, ``c`` where only the reference is, ``n`` pairs in all. Adding one
    to each discordant count and two to ``n`` keeps the coverage near nominal with few discordant pairs, where the
    plain Wald interval is too narrow (Bonett & Price, 2012).
    """
    if n <= 0 or b < 0 or c < 0 or b + c > n:
        raise ValueError(f"need 0 <= b, c and b + c <= n > 0, got b={b}, c={c}, n={n}")
    p_b, p_c = (b + 1) / (n + 2), (c + 1) / (n + 2)
    centre = p_b - p_c
    half = z * math.sqrt(max(p_b + p_c - centre**2, 0.0) / (n + 2))
    return max(-1.0, centre - half), min(1.0, centre + half)
