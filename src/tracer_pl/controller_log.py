"""Controller series read from a run's training log (``metrics.csv`` rows as dictionaries of floats)."""

from __future__ import annotations

import math
from collections.abc import Sequence


def state_series(log: Sequence[dict[str, float]], quantity: str) -> dict[tuple[str, str], list[tuple[float, ...]]]:
    """Per (controller, state): ``(step, visits, value)`` of ``controller/<c>/<state>/<quantity>`` over training."""
    series: dict[tuple[str, str], list[tuple[float, ...]]] = {}
    for row in log:
        for key, value in row.items():
            parts = key.split("/")
            if len(parts) < 4 or parts[0] != "controller" or parts[-1] != quantity:
                continue
            controller, state = parts[1], "/".join(parts[2:-1])
            visits = row.get(f"controller/{controller}/{state}/visits", float("nan"))
            series.setdefault((controller, state), []).append((row.get("step", len(series)), visits, value))
    return series


def bound_batch(log: Sequence[dict[str, float]]) -> float:
    """How many updates of a state may share one strategy in the run.

    The most problems per training step over all processes (``controller/regret_bound_batch``); ``inf`` when
    the run's values are unbounded (``controller/regret_unbounded``); 1 for runs that logged neither.
    """
    if any(row.get("controller/regret_unbounded") for row in log):
        return math.inf
    return max((row["controller/regret_bound_batch"] for row in log if "controller/regret_bound_batch" in row),
               default=1.0)


def bound_label(batch: float) -> str:
    """The bound's name in plots and tables."""
    if math.isinf(batch):
        return "no bound (importance-weighted values)"
    return "bound 2·sqrt(2/M)" if batch == 1 else f"bound 2·sqrt(2B/M), B={batch:g}"
