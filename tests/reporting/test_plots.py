"""The report's plots: axis scales chosen from the data, the whole regret bound, coinciding lines kept apart."""

import math
from pathlib import Path

import matplotlib
import pytest

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from tracer_pl.reporting.controller_log import BOUND_FORMULA, bound_label  # noqa: E402
from tracer_pl.reporting.plots import (  # noqa: E402
    LOG_SPAN,
    accuracy_figure,
    axis_scale,
    regret_figure,
    speak_rate_figure,
    state_styles,
)
from tracer_pl.reporting.rows import Row  # noqa: E402

DOCS = Path(__file__).resolve().parents[2] / "docs"


@pytest.fixture
def figures():
    """Collects the figures a test draws and closes them after it."""
    drawn = []
    yield drawn.append
    for fig in drawn:
        plt.close(fig)


@pytest.mark.parametrize(("values", "scale"), [
    ([310, 467, 398], "linear"),  # a narrow range: 1.5x
    ([81, 770], "linear"),  # 9.5x, just under an order of magnitude
    ([1, LOG_SPAN], "linear"),  # exactly one order of magnitude
    ([74, 880], "log"),  # 11.9x
    ([1, 80], "log"),
    ([0.0, 0.0125, 4.0], "symlog"),  # zeros beside positive values spanning 320x
    ([0.0, 0.5, 1.0], "linear"),  # zeros beside a narrow range
    ([-0.1, 1, 100], "linear"),  # negative values: no log axis
    ([300, math.nan, math.inf], "linear"),  # only finite values count: one value
    ([], "linear"),
])
def test_axis_scale_follows_the_span_of_the_values(values, scale):
    assert axis_scale(values) == scale


def rows(*tokens):
    return [Row(f"m{i}", "arith", 64, 0.5, 0.4, 0.6, t, 1.0, 0.0, 0.0) for i, t in enumerate(tokens)]


def tick_labels(fig, ax):
    fig.canvas.draw()
    return [t.get_text() for t in ax.get_xticklabels(minor=False) + ax.get_xticklabels(minor=True) if t.get_text()]


def test_accuracy_against_tokens_is_linear_over_a_narrow_range(figures):
    fig = accuracy_figure(rows(310, 398, 467))
    figures(fig)
    ax = fig.axes[0]
    assert ax.get_xscale() == "linear"
    low, high = ax.get_xlim()
    assert low <= 310 and high >= 467


def test_accuracy_against_tokens_is_logarithmic_over_a_wide_range_with_plain_ticks(figures):
    fig = accuracy_figure(rows(74, 120, 880))
    figures(fig)
    ax = fig.axes[0]
    assert ax.get_xscale() == "log"
    labels = tick_labels(fig, ax)
    assert "100" in labels and not any("10^" in t or "times" in t or "e+" in t for t in labels)


def training_log(visits, batch=None, zero_state=False):
    rows = []
    for step, m in enumerate(visits):
        row = {"step": step, "controller/proposer/+0/last/visits": m, "controller/proposer/+0/last/avg_regret": 1 / m}
        if zero_state:
            row |= {"controller/proposer/-1/last/visits": m, "controller/proposer/-1/last/avg_regret": 0.0}
        if batch is not None:
            row["controller/regret_bound_batch"] = batch
        rows.append(row)
    return rows


def bound_line(ax):
    [line] = [line for line in ax.get_lines() if str(line.get_label()).startswith("bound")]
    return line


def test_the_regret_bound_is_drawn_whole_with_the_data(figures):
    fig = regret_figure(training_log([2 * k for k in range(1, 41)], batch=2.0, zero_state=True), "run")
    figures(fig)
    ax = fig.axes[0]
    bound = bound_line(ax)
    assert bound.get_label() == "bound 2·sqrt(2B/M), B=2"
    # drawn from M = 1, where it is largest: 2 * sqrt(2 * 2 / 1) = 4, inside the y-limits
    assert min(bound.get_xdata()) == 1 and max(bound.get_ydata()) == pytest.approx(4.0)
    low, high = ax.get_ylim()
    assert high >= 4.0
    # every regret shows: 1/80 to 1/2, and the state whose regret stays 0
    assert low < 0.0 < 1 / 80 and high > 1 / 2
    # they span 320x with zeros: log axes, a linear stretch at the foot of y for the zeros
    assert (ax.get_xscale(), ax.get_yscale()) == ("log", "symlog")


def test_a_short_run_gets_linear_visits_and_still_the_whole_bound(figures):
    fig = regret_figure(training_log([1, 2, 4]), "run")  # no batch logged: B = 1
    figures(fig)
    ax = fig.axes[0]
    assert ax.get_xscale() == "linear"
    assert bound_line(ax).get_label() == "bound 2·sqrt(2B/M), B=1"
    assert ax.get_ylim()[1] >= 2 * math.sqrt(2)


def test_a_run_without_a_bound_says_so_and_draws_none(figures):
    log = [row | {"controller/regret_unbounded": 1.0} for row in training_log([1, 2, 4])]
    fig = regret_figure(log, "run")
    figures(fig)
    ax = fig.axes[0]
    assert "no bound (importance-weighted values)" in [t.get_text() for t in ax.get_legend().get_texts()]
    assert not any(line.get_label().startswith("bound") for line in ax.get_lines())
    assert ax.get_ylim()[1] >= 1.0  # the highest regret, 1/1


def test_coinciding_speak_rates_stay_where_they_are_and_look_different(figures):
    steps = range(40)
    log = [{"step": s, **{f"controller/reviewer/{state}/avg_p_speak": 0.5 for state in ("a", "b", "c")}}
           for s in steps]
    fig = speak_rate_figure(log, "run")
    figures(fig)
    lines = fig.axes[0].get_lines()
    assert [line.get_label() for line in lines] == ["a", "b", "c"]
    for line in lines:  # not moved
        assert list(line.get_xdata()) == list(steps) and list(line.get_ydata()) == [0.5] * 40
    looks = {(line.get_marker(), line.get_linestyle()) for line in lines}
    assert len(looks) == 3
    widths = [line.get_linewidth() for line in lines]
    assert widths == sorted(widths, reverse=True) and widths[0] > widths[-1]  # the lower lines show around the upper
    marked = [set(range(start, 40, step)) for start, step in (line.get_markevery() for line in lines)]
    assert not marked[0] & marked[1] and not marked[1] & marked[2]  # markers on different steps


def test_state_styles_mark_every_point_of_short_series():
    assert [style["markevery"] for style in state_styles(3, points=6)] == [(0, 1)] * 3
    assert [style["markevery"] for style in state_styles(3, points=40)] == [(0, 4), (1, 4), (2, 4)]


def test_the_docs_state_the_formula_of_the_plots_label():
    text = (DOCS / "metrics.md").read_text()
    assert f"regret-matching bound {BOUND_FORMULA}" in text and "2·sqrt(2/M)" not in text
    assert BOUND_FORMULA in bound_label(1.0) and BOUND_FORMULA in bound_label(8.0)
