"""The turn-level controllers and their state (TRACER §2): one per seat of the dialogue.

* A **proposing seat's controller** (TRACER's proposer) acts in its rounds after the first: ``keep`` the pending
  answer or ``refresh`` it with a new proposal.
* A **reviewing seat's controller** (TRACER's reviewer) acts in its rounds: ``skip`` or ``speak`` (review the
  pending answer).

All are regret matchers over the state ``(vote bucket, time bucket)``; each part of the state can be switched
off for the paper's ablations, and a controller can be frozen (no updates) or fixed to one action (the
"always speak"/"always keep" protocols).
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch

from tracer_pl.core.regret import RegretMatcher
from tracer_pl.errors import require, require_whole_between
from tracer_pl.keys import average_speaking_rate, speaking_rate, state_key

ControllerState = tuple[str, ...]
"""A controller state: ``(vote_bucket, time_bucket)`` with the switched-off parts left out."""

Update = tuple[ControllerState, torch.Tensor, torch.Tensor]
"""A recorded regret update: ``(state, instantaneous regrets, strategy played)``."""

EvalProtocol = Literal["sample", "argmax"]
"""How the average strategy acts in evaluation: sample from it (the authors' main protocol) or take argmax."""

TieBreak = Literal["silent", "speaking"]
"""Which action ``argmax`` takes when both have the same average probability: ``silent`` (keep/skip, as the
authors' code does) or ``speaking`` (refresh/speak)."""


@dataclass(frozen=True)
class StateFeatures:
    """Which parts of the controller state are used.

    Args:
        vote: Include the vote bucket (``none``, ``invalid`` or the vote clipped to ``[-vote_clip, vote_clip]``).
        time: Include the time bucket (``last`` when this is the last proposal round that remains).
        vote_clip: Clip the vote to this magnitude (TRACER §2: 2); None keeps the whole vote, as the released
            code does (at R = 7 the vote then ranges over ``-3..+3``).
    """

    vote: bool = True
    time: bool = True
    vote_clip: int | None = 2


def vote_bucket(has_pending: bool, pending_parseable: bool, vote: int, clip: int | None = 2) -> str:
    """``none`` when nothing is pending, ``invalid`` when its answer is unparseable, else the vote.

    The vote is clipped to ``[-clip, clip]`` unless ``clip`` is None.
    """
    if not has_pending:
        return "none"
    if not pending_parseable:
        return "invalid"
    return f"{vote if clip is None else max(-clip, min(clip, vote)):+d}"


def is_proposal_round(round_index: int) -> bool:
    """Odd rounds (1, 3, 5, ...) are proposal rounds, even rounds review rounds."""
    return round_index % 2 == 1


def time_bucket(round_index: int, rounds: int, proposal_rounds: Collection[int] | None = None) -> str:
    """``last`` if at most one proposal round (this one included) remains in ``round_index..rounds``.

    ``proposal_rounds`` are the rounds of the dialogue's schedule that belong to a proposing seat; None means
    TRACER's alternation (the odd rounds).
    """
    proposes = is_proposal_round if proposal_rounds is None else proposal_rounds.__contains__
    remaining = sum(1 for r in range(round_index, rounds + 1) if proposes(r))
    return "last" if remaining <= 1 else "not_last"


def controller_state(
    features: StateFeatures, *, has_pending: bool, pending_parseable: bool, vote: int, round_index: int, rounds: int,
    proposal_rounds: Collection[int] | None = None,
) -> ControllerState:
    """The tabular state a controller sees at ``round_index`` of an ``rounds``-round dialogue."""
    parts: list[str] = []
    if features.vote:
        parts.append(vote_bucket(has_pending, pending_parseable, vote, features.vote_clip))
    if features.time:
        parts.append(time_bucket(round_index, rounds, proposal_rounds))
    return tuple(parts)


def state_label(state: ControllerState) -> str:
    """A state as text for logs: its parts joined by ``/`` (``+1/last``), or ``any`` when the state is empty."""
    return "/".join(state) or "any"


def argmax_action(strategy: torch.Tensor, tie_break: TieBreak = "silent") -> int:
    """The more probable of two actions; a tie goes to the silent action (0) or, with ``speaking``, to 1."""
    if strategy[1] == strategy[0]:
        return 1 if tie_break == "speaking" else 0
    return int(strategy[1] > strategy[0])


def signed_value(correct: bool) -> float:
    """Value of an answer-carrying action: +1 if the answer it leaves pending is correct, else -1."""
    return 1.0 if correct else -1.0


class Controller:
    """A binary turn-level controller: a regret matcher plus its state features, RNG and ablation switches.

    Args:
        actions: The two action names; index 0 is the silent action (``keep``/``skip``), 1 the speaking one.
        name: Name used in logs and checkpoints.
        plus: Use RM+ instead of plain regret matching.
        features: Which parts of the state to use.
        frozen: Never update (the strategy stays as loaded; a fresh one is uniform).
        fixed_action: Always take this action (a fixed protocol); implies no updates.
        seed: Seed of the controller's own RNG used to sample actions in training.
        tie_break: The action ``argmax`` takes on a tie of the average strategy (every state never visited in
            training is a tie): ``silent`` (index 0) or ``speaking`` (index 1).
    """

    actions: tuple[str, str] = ("silent", "speak")

    def __init__(
        self,
        name: str,
        *,
        plus: bool = False,
        features: StateFeatures = StateFeatures(),
        frozen: bool = False,
        fixed_action: str | None = None,
        seed: int = 0,
        tie_break: TieBreak = "silent",
    ) -> None:
        if fixed_action is not None and fixed_action not in self.actions:
            raise ValueError(f"{name} controller: fixed_action must be one of {self.actions}, got {fixed_action!r}")
        self.name = name
        self.features = features
        self.frozen = frozen
        self.fixed_action = fixed_action
        self.tie_break = tie_break
        self.matcher = RegretMatcher(num_actions=2, plus=plus)
        self.generator = torch.Generator().manual_seed(seed)
        self._deferred: list[Update] | None = None

    @property
    def learns(self) -> bool:
        """Whether decisions of this controller are valued and update its regrets."""
        return not self.frozen and self.fixed_action is None

    def state(self, *, has_pending: bool, pending_parseable: bool, vote: int, round_index: int, rounds: int,
              proposal_rounds: Collection[int] | None = None) -> ControllerState:
        """The state for a decision (see :func:`controller_state`)."""
        return controller_state(self.features, has_pending=has_pending, pending_parseable=pending_parseable,
                                vote=vote, round_index=round_index, rounds=rounds, proposal_rounds=proposal_rounds)

    def act(self, state: ControllerState, *, training: bool, protocol: EvalProtocol = "sample",
            generator: torch.Generator | None = None) -> tuple[int, torch.Tensor]:
        """Choose an action; return it with the strategy it was drawn from.

        Training samples the current strategy with the controller's own RNG; evaluation uses the average
        strategy, sampled with ``generator`` (``protocol="sample"``) or its argmax (a tie, which includes every
        state never visited in training, goes to :attr:`tie_break`).
        """
        if self.fixed_action is not None:
            action = self.actions.index(self.fixed_action)
            return action, torch.nn.functional.one_hot(torch.tensor(action), 2).double()
        if training:
            strategy = self.matcher.strategy(state)
            return int(torch.multinomial(strategy.float(), 1, generator=self.generator).item()), strategy
        strategy = self.matcher.average_strategy(state)
        if protocol == "argmax":
            return argmax_action(strategy, self.tie_break), strategy
        return int(torch.multinomial(strategy.float(), 1, generator=generator).item()), strategy

    def update(self, state: ControllerState, values: tuple[float, float], strategy: torch.Tensor) -> None:
        """One regret update with the values of (silent, speaking) action, against the strategy played.

        While :meth:`defer` is on, the update is only recorded; :meth:`flush` applies it.
        """
        if not self.learns:
            return
        if self._deferred is None:
            self.matcher.update(state, values, strategy=strategy)
        else:
            played = strategy.double()
            self._deferred.append((state, self.matcher.instant_regrets(values, played), played))

    def defer(self) -> None:
        """Record updates instead of applying them, until :meth:`flush` (data-parallel training)."""
        if self._deferred is None:
            self._deferred = []

    def flush(self, gather: Callable[[list[Update]], list[list[Update]]] | None = None) -> int:
        """Apply the recorded updates of every process, in process order; return how many were applied.

        Args:
            gather: Collects this process's recorded updates from every process (``all_gather_object``), so
                every process replays the same updates in the same order and the tables stay identical. None
                applies only the local ones.
        """
        if self._deferred is None:
            return 0
        local, self._deferred = self._deferred, []
        applied = 0
        for updates in gather(local) if gather is not None else [local]:
            for state, regrets, played in updates:
                self.matcher.apply(state, regrets, played)
                applied += 1
        return applied

    def state_dict(self) -> dict[str, Any]:
        """Regret tables, strategy sums, visits and the RNG state."""
        return {"matcher": self.matcher.state_dict(), "generator": self.generator.get_state()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`."""
        self.matcher.load_state_dict(state_dict["matcher"])
        self.generator.set_state(state_dict["generator"])


class ProposerController(Controller):
    """Decides in proposal rounds after the first: ``keep`` (0) the pending answer or ``refresh`` (1) it."""

    actions = ("keep", "refresh")

    def __init__(self, name: str = "proposer", **kwargs: Any) -> None:
        super().__init__(name, **kwargs)


class ReviewerController(Controller):
    """Decides in review rounds: ``skip`` (0) or ``speak`` (1)."""

    actions = ("skip", "speak")

    def __init__(self, name: str = "reviewer", **kwargs: Any) -> None:
        super().__init__(name, **kwargs)


def controller_table(controller: Controller) -> dict[str, float]:
    """Per visited state: visits, average regret and the speaking probability of both strategies.

    Keys are :func:`tracer_pl.keys.state_key` with quantities ``visits``, ``avg_regret`` (at most
    ``regret_bound(visits) / visits`` for values in [-1, 1]), ``avg_p_<speaking>`` (the average strategy,
    what evaluation plays) and ``p_<speaking>`` (the current strategy, what training plays).
    """
    matcher, speaking = controller.matcher, controller.actions[1]
    table: dict[str, float] = {}
    for state in matcher.states():
        label = state_label(state)
        table[state_key(controller.name, label, "visits")] = float(matcher.visits(state))
        table[state_key(controller.name, label, "avg_regret")] = matcher.average_regret(state)
        table[state_key(controller.name, label, average_speaking_rate(speaking))] = float(
            matcher.average_strategy(state)[1])
        table[state_key(controller.name, label, speaking_rate(speaking))] = float(matcher.strategy(state)[1])
    return table


SeatSpec = tuple[str, bool]
"""A seat as the controllers see it: ``(role name, proposes)``."""

TRACER_SEATS: tuple[SeatSpec, ...] = (("proposer", True), ("reviewer", False))
"""TRACER's two seats."""

ControllerMode = Literal["learned", "frozen", "always_refresh", "always_keep", "always_speak", "always_skip"]


@dataclass
class ControllerConfig:
    """Settings of the seats' controllers (the ablations of TRACER §4 are switches here).

    Args:
        variant: ``rm`` (regret matching, as in the paper) or ``rm+`` (RM+: clipped regrets, linear averaging).
        state_vote: Include the vote bucket in the state (``false``: the "no vote in state" ablation).
        state_time: Include the time bucket in the state (``false``: the "no time in state" ablation).
        proposer: ``learned``; ``frozen`` (never updated); or a fixed protocol ``always_refresh``/``always_keep``
            (``always_refresh`` is the "no proposer controller" ablation).
        reviewer: ``learned``; ``frozen``; or ``always_speak``/``always_skip`` (``always_skip`` is the "no
            reviewer" ablation).
        seats: The mode of every further seat's controller, by role name (``learned`` when not listed):
            ``learned``, ``frozen``, or ``always_<action>`` with the seat's actions (``keep``/``refresh`` for a
            proposing seat, ``skip``/``speak`` for a reviewing one).
        seed: Seed of the controllers' action-sampling RNGs: seat ``i`` uses ``seed + i`` (the proposer's
            ``seed``, the reviewer's ``seed + 1``).
        vote_clip: The vote bucket clips the vote to ``[-vote_clip, vote_clip]`` (TRACER §2: 2, the default);
            ``null`` keeps the whole vote, as the released code does (``-3..+3`` at R = 7). 0 to 99.
        argmax_tie: The action the ``argmax`` evaluation protocol takes when the average strategy is a tie --
            in every state never visited in training, and in every state of the frozen-controllers ablation:
            ``silent`` (keep/skip, the authors' choice) or ``speaking`` (refresh/speak).
    """

    variant: Literal["rm", "rm+"] = "rm"
    state_vote: bool = True
    state_time: bool = True
    proposer: Literal["learned", "frozen", "always_refresh", "always_keep"] = "learned"
    reviewer: Literal["learned", "frozen", "always_speak", "always_skip"] = "learned"
    seats: dict[str, ControllerMode] = field(default_factory=dict)
    seed: int = 42
    argmax_tie: TieBreak = "silent"
    vote_clip: int | None = 2

    def __post_init__(self) -> None:
        flag = "--model.controllers."
        if self.vote_clip is not None:
            require_whole_between(self.vote_clip, flag + "vote_clip", 0, 99)
        require(self.variant in ("rm", "rm+"), flag + "variant", "rm or rm+", self.variant)
        require(self.argmax_tie in ("silent", "speaking"), flag + "argmax_tie", "silent or speaking", self.argmax_tie)
        for name, allowed in (("proposer", ("learned", "frozen", "always_refresh", "always_keep")),
                              ("reviewer", ("learned", "frozen", "always_speak", "always_skip"))):
            require(getattr(self, name) in allowed, flag + name, " or ".join(allowed), getattr(self, name))
        require_whole_between(self.seed, flag + "seed", 0, 2**32 - 1)

    def build(self, seats: Sequence[SeatSpec] = TRACER_SEATS, *, bundles: bool = False) -> list[Controller]:
        """A fresh controller per seat, named after its role: the first two are TRACER's proposer and reviewer.

        With ``bundles`` (agent bundles, :func:`~tracer_pl.core.seats.agent_bundles`) every proposing seat takes
        the ``proposer`` mode and every reviewing seat the ``reviewer`` mode, unless ``seats`` names it.
        """
        features = StateFeatures(vote=self.state_vote, time=self.state_time, vote_clip=self.vote_clip)
        common = {"plus": self.variant == "rm+", "features": features, "tie_break": self.argmax_tie}
        controllers: list[Controller] = []
        for i, (name, proposes) in enumerate(seats):
            kind = ProposerController if proposes else ReviewerController
            mode = self.mode(i, name, proposes if bundles else None)
            if mode.startswith("always_") and mode.removeprefix("always_") not in kind.actions:
                raise ValueError(f"{name} controller: {mode!r} is not one of its actions {kind.actions}")
            controllers.append(kind(name, seed=self.seed + i, **common, **_mode(mode)))
        return controllers

    def mode(self, index: int, name: str, proposes: bool | None = None) -> str:
        """The mode of seat ``index``.

        ``seats[name]`` if given, else ``proposer``/``reviewer`` for the first two seats (for every proposing/
        reviewing seat when ``proposes`` is given: agent bundles), else ``learned``.
        """
        if name in self.seats:
            return self.seats[name]
        if proposes is not None:
            return self.proposer if proposes else self.reviewer
        return (self.proposer, self.reviewer)[index] if index < 2 else "learned"


def _mode(mode: str) -> dict[str, Any]:
    """``learned``/``frozen``/``always_<action>`` as Controller keyword arguments."""
    if mode.startswith("always_"):
        return {"fixed_action": mode.removeprefix("always_")}
    return {"frozen": mode == "frozen"}
