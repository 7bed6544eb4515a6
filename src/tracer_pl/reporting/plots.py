"""The report's plots: accuracy against tokens, regret against visits, speak rates over training (matplotlib).

Each ``*_figure`` function draws a figure from the numbers and returns it (``None`` when there is nothing to
draw); each ``plot_*`` function saves one as a PNG. Three choices keep the plots readable:

* an axis is logarithmic only where its values span more than an order of magnitude (:func:`axis_scale`), and
  its ticks then read as plain numbers (100, 200, not 10^2, 2×10^2);
* the regret bound is drawn whole, from its largest value at M = 1, on the same axes as every state's regret
  (bound and regrets usually span decades, so the y-axis is then logarithmic, with a short linear stretch at its
  foot for regrets of exactly 0);
* states whose lines coincide stay visible (:func:`state_styles`): each has its own hollow marker and dash
  pattern, the states drawn first have wider lines, and on long series the markers of different states fall on
  different steps. No point is moved.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from tracer_pl.keys import average_speaking_rate
from tracer_pl.reporting.controller_log import bound_batch, bound_label, speaking_actions, state_series
from tracer_pl.reporting.rows import Row
from tracer_pl.reporting.statistics import average_regret_bound

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

LOG_SPAN = 10.0
"""An axis is logarithmic when its largest value exceeds its smallest more than this many times."""

MARKERS = "osD^vP*Xhp<>"
LINE_STYLES = ("-", "--", "-.", ":")


def axis_scale(values: Iterable[float]) -> str:
    """How to draw an axis holding ``values``: ``"linear"``, ``"log"`` or ``"symlog"``.

    ``"log"`` when the finite values are positive and span more than :data:`LOG_SPAN` (largest over smallest);
    ``"symlog"`` when, besides such positive values, some are exactly 0 (a log axis above the smallest positive
    value's decade, a short linear stretch down to 0 below it); ``"linear"`` otherwise, also with negative
    values. Over a narrow range (say 310 to 467 tokens) a log axis draws nearly the picture of a linear one but
    labels it with few, awkward ticks; over several orders of magnitude a linear axis crowds the small values.
    """
    finite = [v for v in values if math.isfinite(v)]
    positive = [v for v in finite if v > 0]
    if not positive or min(finite) < 0 or max(positive) / min(positive) <= LOG_SPAN:
        return "linear"
    return "symlog" if len(positive) < len(finite) else "log"


def state_styles(count: int, points: int = 1) -> list[dict[str, object]]:
    """Keyword arguments of ``Axes.plot`` for ``count`` states of ``points`` points each, drawn in this order.

    Every state gets its own hollow marker and dash pattern, and the first drawn get the widest lines and the
    largest markers, so that a line lying exactly on an earlier one leaves that one showing around it. Series
    longer than about a dozen points get a marker every few points only, each state's on different points, so
    that coinciding states show their markers side by side.
    """
    step = max(1, math.ceil(points / 12))
    styles = []
    for index in range(count):
        under = (count - 1 - index) / (count - 1) if count > 1 else 0.0  # 1 for the first drawn, 0 for the last
        styles.append({"marker": MARKERS[index % len(MARKERS)], "linestyle": LINE_STYLES[index % len(LINE_STYLES)],
                       "linewidth": 1.0 + 2.0 * under, "markersize": 4.0 + 4.0 * under, "fillstyle": "none",
                       "markeredgewidth": 1.2, "markevery": (index % step, step)})
    return styles


def accuracy_figure(rows: Sequence[Row]) -> Figure | None:
    """Accuracy (with its interval) against tokens per problem, one panel per dataset; ``None`` without rows."""
    import matplotlib.pyplot as plt

    datasets = sorted({r.dataset for r in rows})
    if not datasets:
        return None
    fig, axes = plt.subplots(1, len(datasets), figsize=(10 * len(datasets), 5.5), squeeze=False)
    for ax, dataset in zip(axes[0], datasets):
        mine = [r for r in rows if r.dataset == dataset]
        for index, r in enumerate(mine):
            err = None
            if r.ci_low is not None and r.ci_high is not None:
                err = [[r.accuracy - r.ci_low], [r.ci_high - r.accuracy]]
            ax.errorbar(r.tokens_per_problem, r.accuracy, yerr=err, fmt=MARKERS[index % len(MARKERS)],
                        capsize=3, label=r.method)
        _scale(ax, "x", [r.tokens_per_problem for r in mine])
        ax.set_xlabel("tokens per problem (prompt + completion, every call)")
        ax.set_ylabel("accuracy (95% Wilson interval)")
        ax.set_title(dataset)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
    return fig


def regret_figure(log: Sequence[dict[str, float]], title: str) -> Figure | None:
    """Average regret against visits per controller state, with the whole bound; ``None`` when nothing to plot.

    The bound 2·sqrt(2B/M) is drawn from M = 1, where it is largest (2·sqrt(2B)), and the y-axis reaches it.
    Bound and regret usually span several decades, so both axes are then logarithmic, states whose average
    regret is exactly 0 lying on a short linear stretch at the foot of the y-axis (:func:`axis_scale`). Runs
    without a bound (importance-weighted values) say so in the legend.
    """
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    series = state_series(log, "avg_regret")
    controllers = sorted({c for c, _ in series})
    if not controllers:
        return None
    batch = bound_batch(log)
    fig, axes = plt.subplots(1, len(controllers), figsize=(6 * len(controllers), 5), squeeze=False)
    for ax, controller in zip(axes[0], controllers):
        states = {state: [(m, v) for _, m, v in points if m >= 1 and math.isfinite(v)]
                  for (c, state), points in sorted(series.items()) if c == controller}
        states = {state: points for state, points in states.items() if points}
        most_visits = max([1.0] + [m for points in states.values() for m, _ in points])
        drawn = [v for points in states.values() for _, v in points]
        longest = max([0] + [len(points) for points in states.values()])
        for (state, points), style in zip(states.items(), state_styles(len(states), longest)):
            ax.plot(*zip(*points), label=state, **style)
        if not math.isinf(batch):
            grid = _grid(1.0, most_visits, axis_scale([1.0, most_visits]))
            bound = [average_regret_bound(m, batch) for m in grid]  # largest at M = 1
            ax.plot(grid, bound, "k--", linewidth=1.5, label=bound_label(batch))
            drawn += bound
        else:
            ax.plot([], [], " ", label=bound_label(batch))  # said in the legend, nothing to draw
        _scale(ax, "x", [1.0, most_visits])
        _scale(ax, "y", drawn or [0.0])
        ax.set_xlabel("visits M of the state")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # visits are whole numbers
        ax.set_ylabel("average regret")
        _label_panel(ax, f"{title}: {controller} controller")
    return fig


def speak_rate_figure(log: Sequence[dict[str, float]], title: str) -> Figure | None:
    """Average-strategy speaking probability per state over training steps; ``None`` when nothing to plot."""
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    actions = speaking_actions(log)  # the seats of the run, with their speaking actions
    series: dict[tuple[str, str], list[tuple[float, ...]]] = {}
    for action in set(actions.values()):
        series.update(state_series(log, average_speaking_rate(action)))
    controllers = sorted({c for c, _ in series})
    if not controllers:
        return None
    fig, axes = plt.subplots(1, len(controllers), figsize=(6 * len(controllers), 4.5), squeeze=False)
    for ax, controller in zip(axes[0], controllers):
        mine = [(state, points) for (c, state), points in sorted(series.items()) if c == controller]
        longest = max(len(points) for _, points in mine)
        for (state, points), style in zip(mine, state_styles(len(mine), longest)):
            ax.plot([p[0] for p in points], [p[2] for p in points], label=state, **style)
        ax.set_ylim(-0.03, 1.03)
        ax.set_xlabel("training step")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel(f"average-strategy P({actions[controller]})")
        _label_panel(ax, f"{title}: {controller} controller")
    return fig


def plot_accuracy_vs_tokens(rows: Sequence[Row], path: Path) -> None:
    """Save :func:`accuracy_figure` to ``path`` (nothing without rows)."""
    _save(accuracy_figure(rows), path)


def plot_regret(log: Sequence[dict[str, float]], title: str, path: Path) -> bool:
    """Save :func:`regret_figure` to ``path``. False when there was nothing to plot."""
    return _save(regret_figure(log, title), path)


def plot_speak_rates(log: Sequence[dict[str, float]], title: str, path: Path) -> bool:
    """Save :func:`speak_rate_figure` to ``path``. False when there was nothing to plot."""
    return _save(speak_rate_figure(log, title), path)


def _grid(low: float, high: float, scale: str, points: int = 200) -> list[float]:
    """``points + 1`` values from ``low`` to ``high``, evenly spaced on an axis of ``scale``."""
    if scale == "log":
        return [low * (high / low) ** (k / points) for k in range(points + 1)]
    return [low + (high - low) * k / points for k in range(points + 1)]


def _scale(ax: Axes, which: str, values: Sequence[float]) -> None:
    """Scale the ``which`` (``"x"`` or ``"y"``) axis of ``ax`` for ``values`` by :func:`axis_scale`.

    A y-axis reaches from just under 0 (or under the smallest value on a log axis) to just over the largest
    value, so that every value shows whole and none lies on the frame. Log ticks are labelled as plain numbers.
    """
    scale = axis_scale(values)
    finite = [v for v in values if math.isfinite(v)]
    if scale == "linear":
        if which == "y":
            low, high = min(0.0, *finite), max(0.1, *finite)
            ax.set_ylim(low - 0.03 * (high - low), high + 0.05 * (high - low))
        return
    positive = [v for v in finite if v > 0]
    if scale == "symlog":  # zeros below a log axis: linear up to the smallest positive value's decade
        linthresh = 10 ** math.floor(math.log10(min(positive)))
        getattr(ax, f"set_{which}scale")("symlog", linthresh=linthresh, linscale=0.5)
        low = -0.3 * linthresh  # the zeros just above the frame, not on it
    else:
        getattr(ax, f"set_{which}scale")("log")
        low = min(positive) / 1.3
    axis = ax.xaxis if which == "x" else ax.yaxis
    axis.set_major_formatter(_plain_log_formatter()(labelOnlyBase=False))
    axis.set_minor_formatter(_plain_log_formatter()(labelOnlyBase=False, minor_thresholds=(2, 0.5)))
    if which == "y":
        ax.set_ylim(low, 1.3 * max(positive))


@functools.cache
def _plain_log_formatter() -> type:
    """The log tick formatter of matplotlib (it picks which ticks to label), writing 0.01 and 200, not 1e-02."""
    from matplotlib.ticker import LogFormatter

    class PlainLogFormatter(LogFormatter):
        def _num_to_string(self, x: float, vmin: float, vmax: float) -> str:
            return f"{x:g}"

    return PlainLogFormatter


def _label_panel(ax: Axes, title: str) -> None:
    ax.set_title(title)
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)


def _save(fig: Figure | None, path: Path) -> bool:
    """Write ``fig`` as a PNG and close it; False when there is no figure."""
    if fig is None:
        return False
    import matplotlib.pyplot as plt

    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True
