"""Tabular regret matching over a small discrete state (TRACER §2, the controller-regret layer).

A :class:`RegretMatcher` keeps, for every state it has visited, the cumulative regret of each action and the
sum of the strategies it played. The current strategy plays actions in proportion to their positive
cumulative regret; the *average* strategy (strategy sum normalised) is what converges to a coarse correlated
equilibrium and is used for evaluation.

With values in ``[-1, 1]`` and two actions the cumulative external regret after ``M`` visits of a state is at
most ``2 * sqrt(2 * M)`` (:func:`regret_bound`), so the average regret falls like ``1 / sqrt(M)``.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Sequence
from typing import Any

import torch

State = Hashable


def regret_matching(cumulative_regret: torch.Tensor) -> torch.Tensor:
    """Strategy proportional to the positive part of ``cumulative_regret``; uniform when none is positive.

    Args:
        cumulative_regret: 1-D float tensor, one entry per action.

    Returns:
        A 1-D float64 tensor of probabilities summing to 1.
    """
    positive = cumulative_regret.double().clamp(min=0.0)
    total = positive.sum()
    if total <= 0.0:
        return torch.full_like(positive, 1.0 / positive.numel())
    return positive / total


def regret_bound(visits: int, num_actions: int = 2, value_range: float = 2.0, batch: int = 1) -> float:
    """Blackwell bound on the cumulative external regret of regret matching after ``visits`` updates.

    Every instantaneous regret lies in ``[-value_range, value_range]``, so the squared norm of the positive
    regret vector grows by at most ``num_actions * value_range**2`` per visit, which bounds the largest
    cumulative regret by ``value_range * sqrt(num_actions * visits)``: ``2 * sqrt(2 * M)`` for values in
    ``[-1, 1]`` and two actions, the bound TRACER quotes. It holds for RM+ as well.

    When up to ``batch`` updates in a row are measured against one stale strategy (a batch of problems whose
    decisions are all drawn before any update), the cross term no longer vanishes inside a run of updates: a
    run of ``k`` updates grows the squared norm by at most ``k**2 * num_actions * value_range**2``, and with
    ``k <= batch`` the bound becomes ``value_range * sqrt(num_actions * batch * visits)``.
    """
    return value_range * math.sqrt(num_actions * batch * visits)


class RegretMatcher:
    """Regret matching (or RM+ with ``plus=True``) for every hashable state.

    Args:
        num_actions: Number of actions; the controllers use 2.
        plus: Use RM+ (cumulative regret clipped at 0 after every update, strategy sum weighted by the visit
            number, i.e. linear averaging).

    The update at a visit of state ``s`` with action values ``v`` and the strategy ``pi`` the action was drawn
    from (the current strategy unless given) is::

        re(a)             = v(a) - sum_a' pi(a') v(a')
        Re(s, a)         += re(a)                 # RM+: Re(s, a) = max(Re(s, a) + re(a), 0)
        strategy_sum(s)  += pi                    # RM+: += m * pi at the m-th visit
    """

    def __init__(self, num_actions: int = 2, plus: bool = False) -> None:
        if num_actions < 2:
            raise ValueError(f"num_actions must be at least 2, got {num_actions}")
        self.num_actions = num_actions
        self.plus = plus
        self._regret: dict[State, torch.Tensor] = {}
        self._strategy_sum: dict[State, torch.Tensor] = {}
        self._visits: dict[State, int] = {}
        self._unclipped: dict[State, torch.Tensor] = {}  # sum of regret increments; differs from _regret in RM+

    # ------------------------------------------------------------------ reading
    def states(self) -> list[State]:
        """States updated at least once, in first-visit order."""
        return list(self._visits)

    def cumulative_regret(self, state: State) -> torch.Tensor:
        """Cumulative regret ``Re(s, .)`` (zeros for an unvisited state)."""
        return self._regret.get(state, self._zeros()).clone()

    def strategy_sum(self, state: State) -> torch.Tensor:
        """Accumulated strategies of ``state`` (linearly weighted under RM+)."""
        return self._strategy_sum.get(state, self._zeros()).clone()

    def visits(self, state: State) -> int:
        """Number of updates of ``state``."""
        return self._visits.get(state, 0)

    def strategy(self, state: State) -> torch.Tensor:
        """Current strategy ``pi(.|s)``: regret matching on the cumulative regret."""
        return regret_matching(self._regret.get(state, self._zeros()))

    def average_strategy(self, state: State) -> torch.Tensor:
        """Average strategy; the current strategy when ``state`` was never updated."""
        total = self._strategy_sum.get(state, self._zeros())
        if total.sum() <= 0.0:
            return self.strategy(state)
        return total / total.sum()

    def average_regret(self, state: State) -> float:
        """Average external regret ``max(0, max_a R(s, a)) / visits`` of the played strategies (0 if unvisited).

        ``R(s, a)`` here is the true regret against always playing ``a`` -- the sum of the unclipped regret
        increments -- also under RM+, whose stored cumulative regret is clipped.
        """
        visits = self.visits(state)
        if not visits:
            return 0.0
        return max(0.0, float(self._unclipped[state].max())) / visits

    def update(self, state: State, values: Sequence[float] | torch.Tensor, strategy: torch.Tensor | None = None
               ) -> torch.Tensor:
        """One regret-matching update of ``state`` with the values of every action.

        Args:
            state: Any hashable state.
            values: One value per action (finite floats).
            strategy: The strategy the acting action was drawn from. Defaults to the current strategy; pass the
                strategy seen at decision time when several decisions share a state before their updates
                (lockstep batches), so every update is measured against the strategy that was really played.

        Returns:
            The instantaneous regrets ``re`` (float64).
        """
        played = self.strategy(state) if strategy is None else strategy.double()
        regrets = self.instant_regrets(values, played)
        self.apply(state, regrets, played)
        return regrets

    def instant_regrets(self, values: Sequence[float] | torch.Tensor, played: torch.Tensor) -> torch.Tensor:
        """``v(a) - sum_b played(b) v(b)`` for every action ``a`` (float64); checks shape and finiteness."""
        v = torch.as_tensor(values, dtype=torch.float64).flatten()
        if v.numel() != self.num_actions:
            raise ValueError(f"expected {self.num_actions} action values, got {v.numel()}")
        if not torch.isfinite(v).all():
            raise ValueError(f"action values must be finite, got {v.tolist()}")
        return v - (played.double() * v).sum()

    def apply(self, state: State, regrets: torch.Tensor, played: torch.Tensor) -> None:
        """Add precomputed regret and strategy increments (used to replay increments gathered from DDP ranks)."""
        visit = self._visits.get(state, 0) + 1
        cumulative = self._regret.get(state, self._zeros()) + regrets.double()
        self._regret[state] = cumulative.clamp(min=0.0) if self.plus else cumulative
        weight = float(visit) if self.plus else 1.0
        self._strategy_sum[state] = self._strategy_sum.get(state, self._zeros()) + weight * played.double()
        self._visits[state] = visit
        self._unclipped[state] = self._unclipped.get(state, self._zeros()) + regrets.double()

    # ------------------------------------------------------------------ persistence
    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue exactly: regrets, strategy sums, visits (states kept as keys)."""
        return {
            "num_actions": self.num_actions,
            "plus": self.plus,
            "states": [
                {
                    "state": state,
                    "regret": self._regret[state].tolist(),
                    "unclipped_regret": self._unclipped[state].tolist(),
                    "strategy_sum": self._strategy_sum[state].tolist(),
                    "visits": self._visits[state],
                }
                for state in self._visits
            ],
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned; the variant and action count must match."""
        if state_dict["num_actions"] != self.num_actions or bool(state_dict["plus"]) != self.plus:
            raise ValueError(
                f"checkpoint holds a RegretMatcher(num_actions={state_dict['num_actions']}, "
                f"plus={state_dict['plus']}); this one is (num_actions={self.num_actions}, plus={self.plus})"
            )
        self._regret, self._strategy_sum, self._visits, self._unclipped = {}, {}, {}, {}
        for entry in state_dict["states"]:
            state = _as_state(entry["state"])
            self._regret[state] = torch.tensor(entry["regret"], dtype=torch.float64)
            self._unclipped[state] = torch.tensor(entry["unclipped_regret"], dtype=torch.float64)
            self._strategy_sum[state] = torch.tensor(entry["strategy_sum"], dtype=torch.float64)
            self._visits[state] = int(entry["visits"])

    def _zeros(self) -> torch.Tensor:
        return torch.zeros(self.num_actions, dtype=torch.float64)


def _as_state(value: Any) -> State:
    """Lists come back from YAML/JSON checkpoints for tuple states: make them hashable again."""
    if isinstance(value, list):
        return tuple(_as_state(v) for v in value)
    return value
