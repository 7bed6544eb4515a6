"""Controller series read from a run's training log (``metrics.csv`` rows as dictionaries of floats)."""

from __future__ import annotations

import math
from collections.abc import Sequence

from tracer_pl.keys import REGRET_BOUND_BATCH, REGRET_UNBOUNDED, parse_state_key, speaking_action, state_key

BOUND_FORMULA = "2·sqrt(2B/M)"
"""The bound on a state's average regret after M visits when up to B of them share one strategy."""


def state_series(log: Sequence[dict[str, float]], quantity: str) -> dict[tuple[str, str], list[tuple[float, ...]]]:
    """Per (controller, state): ``(step, visits, value)`` of ``controller/<c>/<state>/<quantity>`` over training."""
    series: dict[tuple[str, str], list[tuple[float, ...]]] = {}
    for row in log:
        for key, value in row.items():
            parsed = parse_state_key(key)
            if parsed is None or parsed.quantity != quantity:
                continue
            visits = row.get(state_key(parsed.seat, parsed.state, "visits"), float("nan"))
            series.setdefault((parsed.seat, parsed.state), []).append((row.get("step", len(series)), visits, value))
    return series


def speaking_actions(log: Sequence[dict[str, float]]) -> dict[str, str]:
    """Each controller's speaking action, read from its ``avg_p_<action>`` keys (``refresh``, ``speak``, ...)."""
    actions: dict[str, str] = {}
    for row in log:
        for key in row:
            parsed = parse_state_key(key)
            action = speaking_action(parsed.quantity) if parsed is not None else None
            if action is not None:
                actions.setdefault(parsed.seat, action)
    return actions


def bound_batch(log: Sequence[dict[str, float]]) -> float:
    """How many updates of a state may share one strategy in the run.

    The most problems per training step over all processes (``controller/regret_bound_batch``); ``inf`` when
    the run's values are unbounded (``controller/regret_unbounded``); 1 for runs that logged neither.
    """
    if any(row.get(REGRET_UNBOUNDED) for row in log):
        return math.inf
    return max((row[REGRET_BOUND_BATCH] for row in log if REGRET_BOUND_BATCH in row), default=1.0)


def bound_label(batch: float) -> str:
    """The bound's name in plots and tables: the formula 2·sqrt(2B/M) with the run's B, also when B = 1.

    B is :func:`bound_batch`; ``docs/metrics.md`` states the same formula.
    """
    if math.isinf(batch):
        return "no bound (importance-weighted values)"
    return f"bound {BOUND_FORMULA}, B={batch:g}"
