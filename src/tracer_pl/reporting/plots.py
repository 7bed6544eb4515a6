"""The report's plots: accuracy against tokens, regret against visits, speak rates over training (matplotlib)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

from tracer_pl.keys import average_speaking_rate
from tracer_pl.reporting.controller_log import bound_batch, bound_label, speaking_actions, state_series
from tracer_pl.reporting.rows import Row
from tracer_pl.reporting.statistics import average_regret_bound


def plot_accuracy_vs_tokens(rows: Sequence[Row], path: Path) -> None:
    """Accuracy (with its interval) against tokens per problem, one panel per dataset."""
    import matplotlib.pyplot as plt

    datasets = sorted({r.dataset for r in rows})
    fig, axes = plt.subplots(1, len(datasets), figsize=(10 * len(datasets), 5.5), squeeze=False)
    markers = "osD^vP*Xhp<>"
    for ax, dataset in zip(axes[0], datasets):
        mine = [r for r in rows if r.dataset == dataset]
        for r in mine:
            err = None
            if r.ci_low is not None and r.ci_high is not None:
                err = [[r.accuracy - r.ci_low], [r.ci_high - r.accuracy]]
            ax.errorbar(r.tokens_per_problem, r.accuracy, yerr=err, fmt=markers[mine.index(r) % len(markers)],
                        capsize=3, label=r.method)
        ax.set_xscale("log")
        ax.set_xlabel("tokens per problem (prompt + completion, every call)")
        ax.set_ylabel("accuracy (95% Wilson interval)")
        ax.set_title(dataset)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
    _save(fig, path)


def plot_regret(log: Sequence[dict[str, float]], title: str, path: Path) -> bool:
    """Average regret against visits per controller state, with the bound. False when nothing to plot."""
    import matplotlib.pyplot as plt

    series = state_series(log, "avg_regret")
    controllers = sorted({c for c, _ in series})
    if not controllers:
        return False
    batch = bound_batch(log)
    fig, axes = plt.subplots(1, len(controllers), figsize=(6 * len(controllers), 4.5), squeeze=False)
    for ax, controller in zip(axes[0], controllers):
        most_visits, highest = 1.0, 0.0
        for (c, state), points in sorted(series.items()):
            points = [(m, v) for _, m, v in points if m >= 1]
            if c != controller or not points:
                continue
            visits, values = zip(*points)
            most_visits, highest = max(most_visits, *visits), max(highest, *values)
            ax.plot(visits, values, marker=".", label=state)
        top = 1.3 * highest
        if not math.isinf(batch):
            grid = [1 + (most_visits - 1) * k / 200 for k in range(201)]
            ax.plot(grid, [average_regret_bound(m, batch) for m in grid], "k--", label=bound_label(batch))
            top = max(top, 1.3 * average_regret_bound(most_visits, batch))
        else:
            ax.plot([], [], " ", label=bound_label(batch))  # said in the legend, nothing to draw
        ax.set_xscale("log")
        ax.set_ylim(0, max(top, 0.1))
        ax.set_xlabel("visits M of the state")
        ax.set_ylabel("average regret")
        _label_panel(ax, f"{title}: {controller} controller")
    _save(fig, path)
    return True


def plot_speak_rates(log: Sequence[dict[str, float]], title: str, path: Path) -> bool:
    """Average-strategy speaking probability per state over training steps. False when nothing to plot."""
    import matplotlib.pyplot as plt

    actions = speaking_actions(log)  # the seats of the run, with their speaking actions
    series: dict[tuple[str, str], list[tuple[float, ...]]] = {}
    for action in set(actions.values()):
        series.update(state_series(log, average_speaking_rate(action)))
    controllers = sorted({c for c, _ in series})
    if not controllers:
        return False
    fig, axes = plt.subplots(1, len(controllers), figsize=(6 * len(controllers), 4.5), squeeze=False)
    for ax, controller in zip(axes[0], controllers):
        for (c, state), points in sorted(series.items()):
            if c == controller:
                ax.plot([p[0] for p in points], [p[2] for p in points], marker=".", label=state)
        action = actions[controller]
        ax.set_ylim(-0.02, 1.02)
        ax.set_xlabel("training step")
        ax.set_ylabel(f"average-strategy P({action})")
        _label_panel(ax, f"{title}: {controller} controller")
    _save(fig, path)
    return True


def _label_panel(ax, title: str) -> None:
    ax.set_title(title)
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)


def _save(fig, path: Path) -> None:
    import matplotlib.pyplot as plt

    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
