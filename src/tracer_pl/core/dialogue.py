"""The proposer-reviewer dialogue for a batch of problems in lockstep (TRACER §1-§3).

:func:`run_dialogues` plays ``rounds`` rounds over any :class:`~tracer_pl.core.agent.Agent`. Odd rounds are
proposal rounds (round 1 forced: nothing is pending), even rounds review rounds. In every round the whole batch
decides first, then each role speaks for all its speaking problems in one ``generate`` call.

In training, a speaking role first samples ``group_size`` candidates per context, scores them with its reward
and hands the groups to ``learn`` (the GSPO step), then samples one fresh utterance from the updated policy.
Both actions of every free decision are valued -- the unchosen one by a single counterfactual sample that
never enters the dialogue -- and the controller is updated. In evaluation nothing is updated, controllers play
their average strategy and roles decode greedily by default.

Simplifications, stated once:

1. With more than one problem in a batch, all decisions of a round are drawn before any of that round's
   controller updates, and each update is measured against the strategy its action was drawn from. With a batch
   of one this is the paper's online protocol exactly.
2. Counterfactual samples are drawn in the same call as the fresh utterances, i.e. from the policy after
   this round's GSPO step, the policy whose utterances the real actions are valued on.
3. Without counterfactual values (the ablation), the chosen action's value is importance weighted by the
   probability it was chosen with and the unchosen action's value is 0 -- the unbiased bandit estimate.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

import torch

from tracer_pl.core.agent import Agent, Completion, Messages
from tracer_pl.core.controllers import Controller, ControllerState, EvalProtocol
from tracer_pl.core.gspo import ZERO_SIGNAL_STD, group_advantages
from tracer_pl.core.problem import Problem
from tracer_pl.core.roles import RIGHT, WRONG, DialogueView, Utterance, is_correct, replaces_pending
from tracer_pl.core.seats import Seat, turn_order
from tracer_pl.errors import require, require_whole_between


@dataclass
class DialogueConfig:
    """Settings of the dialogue protocol (the group size G of the GSPO step is ``GSPOConfig.group_size``).

    Args:
        rounds: Number of rounds R (odd: proposal, even: review; 1 to 99); with a ``schedule``, its length.
        schedule: The role name of every round, e.g. ``[proposer, reviewer, proposer, reviewer, proposer,
            verifier]``; None is TRACER's alternation of the first two seats (proposer in odd rounds, reviewer in
            even rounds). The first round must belong to a proposing seat; every seat must have a round.
        counterfactual: Value the unchosen action with one counterfactual sample (else importance weighting).
        eval_greedy: Decode greedily in evaluation.
        invalid_pending: A proposal round whose pending text has no readable answer (the ``invalid`` vote
            bucket): ``refresh`` forces a refresh and makes no proposer-controller update (the authors' choice);
            ``decide`` lets the proposer controller choose keep/refresh there and updates it (keep is valued -1).
        keep_valuation: How refresh is valued when a proposing seat keeps: ``counterfactual`` (TRACER §2: by one
            counterfactual proposal that never enters the dialogue) or ``as_keep`` (the released code: refresh
            gets keep's value, so a keep moves no regret and no proposal is sampled). A skipping reviewer is valued
            by a counterfactual review either way.
        unreadable_refresh: A refresh whose answer cannot be read, when a readable answer is pending:
            ``keeps_pending`` (TRACER §1: the pending answer stays and values the refresh) or ``replaces_pending``
            (the released code: it becomes pending with no answer, the final answer is none, the refresh is
            valued -1).
        order: With several problems per training step: ``lockstep`` plays them round by round together (one
            generation call per round for the whole batch); ``one_at_a_time`` finishes each problem's dialogue,
            its GSPO steps and controller updates included, before the next problem's candidates are drawn (the
            released code's order). Identical with one problem per step; evaluation is always lockstep (it
            updates nothing).
        num_agents: Agent bundles N (the released code's ``num_agents``, 2 to 16): round ``r`` belongs to agent
            ``(r - 1) mod N``, which proposes in odd rounds and reviews in even ones, each agent with its own
            adapter and controller per role it plays (:func:`~tracer_pl.core.seats.agent_bundles`). 2 is TRACER's
            proposer and reviewer; more than 2 needs no ``schedule`` and no ``extra_roles``.
        group_size: Deprecated: moved to ``--model.gspo.group_size``; ``TracerModule`` still reads it for one
            release, with a warning.
        min_reward_std: Deprecated: moved to ``--model.gspo.min_reward_std``, read as ``group_size`` is.
    """

    rounds: int = 5
    schedule: list[str] | None = None
    counterfactual: bool = True
    eval_greedy: bool = True
    invalid_pending: Literal["refresh", "decide"] = "refresh"
    keep_valuation: Literal["counterfactual", "as_keep"] = "counterfactual"
    unreadable_refresh: Literal["keeps_pending", "replaces_pending"] = "keeps_pending"
    order: Literal["lockstep", "one_at_a_time"] = "lockstep"
    num_agents: int = 2
    group_size: int | None = None
    min_reward_std: float | None = None

    def __post_init__(self) -> None:
        flag = "--model.dialogue."
        require_whole_between(self.rounds, flag + "rounds", 1, 99)
        require_whole_between(self.num_agents, flag + "num_agents", 2, 16)
        for name, allowed in [("invalid_pending", ("refresh", "decide")),
                              ("keep_valuation", ("counterfactual", "as_keep")),
                              ("unreadable_refresh", ("keeps_pending", "replaces_pending")),
                              ("order", ("lockstep", "one_at_a_time"))]:
            require(getattr(self, name) in allowed, flag + name, " or ".join(allowed), getattr(self, name))


@dataclass
class Turn:
    """One round of one problem.

    ``values`` holds the value of both actions when the decision was valued (training, free decision);
    ``text`` is the utterance that entered the dialogue (None when silent); ``counterfactual_text`` the sample
    drawn to value the unchosen speaking action; ``nonfinite_values`` marks a decision whose values were NaN or
    infinite (from a broken reward) and so did not update the controller. Token counts cover every completion
    generated for this problem in this round (candidates, fresh utterance, counterfactual).
    """

    round: int
    role: str
    action: str
    forced: bool
    state: ControllerState | None
    probabilities: list[float] | None = None
    values: dict[str, float] | None = None
    text: str | None = None
    parsed: str | None = None
    reward: float | None = None
    replaced_pending: bool = False
    nonfinite_values: bool = False
    counterfactual_text: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    calls: int = 0


@dataclass
class DialogueRecord:
    """The whole dialogue of one problem and its outcome."""

    problem: Problem
    turns: list[Turn] = field(default_factory=list)
    pending_text: str | None = None
    pending_answer: str | None = None
    pending_correct: bool = False
    review_text: str | None = None
    vote: int = 0
    first_answer: str | None = None
    first_correct: bool | None = None
    correct_after_round: list[bool] = field(default_factory=list)

    @property
    def has_pending(self) -> bool:
        return self.pending_text is not None

    @property
    def final_answer(self) -> str | None:
        return self.pending_answer

    @property
    def correct(self) -> bool:
        return self.pending_correct

    @property
    def prompt_tokens(self) -> int:
        return sum(t.prompt_tokens for t in self.turns)

    @property
    def completion_tokens(self) -> int:
        return sum(t.completion_tokens for t in self.turns)

    @property
    def tokens(self) -> int:
        """Prompt plus completion tokens over every generation call of this problem."""
        return self.prompt_tokens + self.completion_tokens

    @property
    def calls(self) -> int:
        """Completions generated for this problem."""
        return sum(t.calls for t in self.turns)

    def view(self, round_index: int, *, unreadable_replaces_pending: bool = False) -> DialogueView:
        """What a role sees of this dialogue at ``round_index`` (every utterance so far as its history)."""
        history = tuple(Utterance(t.round, t.role, "proposal" if t.action == "refresh" else "review", t.text)
                        for t in self.turns if t.text is not None)
        return DialogueView(problem=self.problem, pending_text=self.pending_text, pending_answer=self.pending_answer,
                            pending_correct=self.pending_correct, review_text=self.review_text, vote=self.vote,
                            round_index=round_index, history=history,
                            unreadable_replaces_pending=unreadable_replaces_pending)


@dataclass
class CandidateGroup:
    """The ``G`` candidates a role sampled for one context, with what a GSPO step needs."""

    role: str
    round: int
    problem_index: int
    prompt: Messages
    completions: list[Completion]
    rewards: torch.Tensor
    advantages: torch.Tensor | None

    @property
    def has_signal(self) -> bool:
        return self.advantages is not None


LearnFn = Callable[[list[CandidateGroup]], None]
"""A role's GSPO step, called with the round's candidate groups before the fresh utterances are sampled.

It is called in every round the role could speak in, with an empty list when nobody speaks."""


@dataclass
class DialogueResult:
    """Records of the batch and every candidate group sampled."""

    records: list[DialogueRecord]
    groups: list[CandidateGroup]


@dataclass(eq=False)
class _Decision:
    index: int
    action: int
    forced: bool
    state: ControllerState | None
    strategy: torch.Tensor | None


@dataclass
class Round:
    """A round in progress: its seat, the decision for every problem, the turns being written, the prompts."""

    index: int
    seat: Seat
    decisions: list[_Decision]
    turns: list[Turn]
    prompts: dict[int, Messages]


def play_round(dialogue: Dialogue, round_index: int, seat: Seat, learn: LearnFn | None = None) -> Round:
    """One round, in TRACER's order (§2-§3); the only place that order is written.

    1. ``decide``: the seat's controller chooses, per problem, whether it speaks (forced where there is no choice);
    2. in training, ``sample_candidates`` then ``learn``: G scored candidates per speaking context, and the seat's
       learning step (its GSPO update) on them -- called even when nobody speaks, so that under data parallelism
       every process joins every step;
    3. ``speak``: the fresh utterances from the (updated) policy, and the counterfactual samples;
    4. ``settle``: utterances applied, both actions of every free decision valued, the controller updated.

    Training (:class:`~tracer_pl.training.module.TracerModule`), evaluation and :func:`run_dialogues` all play
    their rounds through this function.
    """
    current = dialogue.decide(round_index, seat)
    if learn is not None and dialogue.training:
        learn(dialogue.sample_candidates(current))
    dialogue.speak(current)
    dialogue.settle(current)
    return current


def play(dialogue: Dialogue, learn: Mapping[str, LearnFn] | None = None,
         after_round: Callable[[], None] | None = None) -> DialogueResult:
    """Every round of ``dialogue`` with :func:`play_round`; return the records and candidate groups.

    Args:
        dialogue: The batch's dialogues.
        learn: The learning step of each trained role, by role name; seats not in it sample no candidates.
        after_round: Called after every round (data-parallel training synchronises the controllers there).
    """
    for round_index, seat in dialogue.schedule():
        play_round(dialogue, round_index, seat, (learn or {}).get(seat.role.name))
        if after_round is not None:
            after_round()
    return dialogue.result()


def run_dialogues(
    problems: Sequence[Problem],
    agent: Agent,
    seats: Sequence[Seat],
    *,
    config: DialogueConfig | None = None,
    training: bool = False,
    learn: Mapping[str, LearnFn] | None = None,
    eval_generator: torch.Generator | None = None,
    eval_protocol: EvalProtocol = "sample",
    group_size: int = 4,
    min_reward_std: float = ZERO_SIGNAL_STD,
) -> DialogueResult:
    """Play the dialogue for ``problems`` in lockstep (a :class:`Dialogue` played by :func:`play`).

    Args:
        problems: The batch.
        agent: Generates completions per role (the role's ``name`` selects the adapter).
        seats: The seats, TRACER's proposer and reviewer first (:class:`~tracer_pl.core.seats.Seat`: a role and
            its controller); ``config.schedule`` places any further ones.
        config: Protocol settings.
        training: Sample current strategies, value both actions and update controllers.
        learn: The learning step (GSPO) of each trained role, by role name; roles not in it (frozen roles) sample
            no candidate groups. Ignored in evaluation.
        eval_generator: RNG for sampling average strategies in evaluation.
        eval_protocol: How controllers act in evaluation: ``sample`` from or ``argmax`` of the average strategy.
        group_size: Candidates G per speaking context for the learning step (training only).
        min_reward_std: Candidate groups with a smaller reward std carry no signal (no advantages).
    """
    dialogue = Dialogue(problems, agent, seats, config=config, training=training, eval_generator=eval_generator,
                        eval_protocol=eval_protocol, group_size=group_size, min_reward_std=min_reward_std)
    return play(dialogue, learn)


class Dialogue:
    """The dialogues of a batch of problems, played round by round through four public phases.

    Each round: :meth:`decide` (the seat's controller chooses, per problem, whether it speaks), then in training
    :meth:`sample_candidates` (G candidates per speaking context, scored by the role: what a GSPO step trains
    on), :meth:`speak` (the fresh utterances, and the counterfactual samples that value the unchosen action) and
    :meth:`settle` (utterances applied, both actions valued, the controller updated). :func:`play_round` holds
    that order; training, evaluation and :func:`run_dialogues` all call it.

    Args:
        problems: The batch.
        agent: Generates completions per role.
        seats: The seats, TRACER's proposer and reviewer first; :func:`~tracer_pl.core.seats.turn_order` gives each
            round its seat (by default odd rounds to the first and even rounds to the second, TRACER §1).
        config: Protocol settings.
        training: Sample current strategies, value both actions and update controllers.
        eval_generator: RNG for sampling average strategies in evaluation.
        eval_protocol: How controllers act in evaluation.
        group_size: Candidates G per speaking context (``GSPOConfig.group_size``).
        min_reward_std: Candidate groups with a smaller reward std carry no signal (``GSPOConfig.min_reward_std``).
    """

    def __init__(self, problems: Sequence[Problem], agent: Agent, seats: Sequence[Seat], *,
                 config: DialogueConfig | None = None, training: bool = False,
                 eval_generator: torch.Generator | None = None, eval_protocol: EvalProtocol = "sample",
                 group_size: int = 4, min_reward_std: float = ZERO_SIGNAL_STD) -> None:
        self.config = config or DialogueConfig()
        self.group_size = group_size
        self.min_reward_std = min_reward_std
        self.agent = agent
        self.seats = list(seats)
        self.round_seats = turn_order(self.seats, self.config.schedule, self.config.rounds)  # round r-1 -> its seat
        self.proposal_rounds = frozenset(r for r, seat in enumerate(self.round_seats, start=1) if seat.proposes)
        self.training = training
        self.eval_generator = eval_generator
        self.eval_protocol = eval_protocol
        self.records = [DialogueRecord(problem=p) for p in problems]
        self.groups: list[CandidateGroup] = []

    def schedule(self) -> Iterator[tuple[int, Seat]]:
        """``(round, seat)`` for every round (see :func:`~tracer_pl.core.seats.turn_order`)."""
        yield from enumerate(self.round_seats, start=1)

    def result(self) -> DialogueResult:
        return DialogueResult(records=self.records, groups=self.groups)

    # ------------------------------------------------------------------ the four phases of a round
    def decide(self, round_index: int, seat: Seat) -> Round:
        """The controller's decision for every problem (forced where there is no choice), and the prompts."""
        decisions = [self._decide_one(seat, record, i, round_index) for i, record in enumerate(self.records)]
        turns = [
            Turn(round=round_index, role=seat.role.name, action=seat.controller.actions[d.action], forced=d.forced,
                 state=d.state, probabilities=None if d.strategy is None else d.strategy.tolist())
            for d in decisions
        ]
        prompts = {d.index: seat.role.messages(self._view(self.records[d.index], round_index)) for d in decisions}
        return Round(round_index, seat, decisions, turns, prompts)

    def sample_candidates(self, current: Round) -> list[CandidateGroup]:
        """G candidates per speaking context, scored with the role's reward; the groups a GSPO step trains on."""
        speakers = [d for d in current.decisions if d.action == 1]
        if not speakers:
            return []
        role, G = current.seat.role, self.group_size
        candidates = self.agent.generate(role.name, [current.prompts[d.index] for d in speakers], G, greedy=False)
        groups = []
        for d, completions in zip(speakers, candidates):
            view = self._view(self.records[d.index], current.index)
            rewards = torch.tensor(role.score([c.text for c in completions], view), dtype=torch.float32)
            groups.append(CandidateGroup(role=role.name, round=current.index, problem_index=d.index,
                                         prompt=current.prompts[d.index], completions=completions, rewards=rewards,
                                         advantages=group_advantages(rewards, self.min_reward_std)))
            _charge(current.turns[d.index], completions)
        self.groups.extend(groups)
        return groups

    def speak(self, current: Round) -> None:
        """The fresh utterance of every speaker, and one counterfactual sample per valued silent decision."""
        role = current.seat.role
        wanted = [d for d in current.decisions if d.action == 1 or self._counterfactual_wanted(current.seat, d)]
        if not wanted:
            return
        greedy = not self.training and self.config.eval_greedy
        outputs = self.agent.generate(role.name, [current.prompts[d.index] for d in wanted], 1, greedy=greedy)
        for d, (completion,) in zip(wanted, outputs):
            turn = current.turns[d.index]
            _charge(turn, [completion])
            if d.action == 1:
                view = self._view(self.records[d.index], current.index)
                turn.text = completion.text
                turn.parsed = role.parse(completion.text, view)
                turn.reward = role.reward(completion.text, view)
            else:
                turn.counterfactual_text = completion.text

    def settle(self, current: Round) -> None:
        """Apply the utterances, value both actions of each free decision on the view before it, update."""
        role, controller = current.seat.role, current.seat.controller
        apply = self._apply_proposal if current.seat.proposes else self._apply_review
        for d, turn in zip(current.decisions, current.turns):
            record = self.records[d.index]
            view = self._view(record, current.index)
            if d.action == 1:
                apply(record, turn)
            if self._values_wanted(controller, d):
                silent = role.silent_value(view)
                said = turn.text if d.action == 1 else turn.counterfactual_text
                if said is not None:
                    speaking = role.speaking_value(said, view)
                elif self._kept_without_counterfactual(current.seat):
                    speaking = silent  # refresh valued as keep: the keep moves no regret
                else:
                    speaking = 0.0  # not drawn: the importance-weighted ablation values only the chosen action
                self._value(controller, d, turn, (silent, speaking))
            record.turns.append(turn)
            record.correct_after_round.append(record.pending_correct)

    # ------------------------------------------------------------------ deciding
    def _decide_one(self, seat: Seat, record: DialogueRecord, index: int, round_index: int) -> _Decision:
        if self._forced(seat, record):  # forced actions are never valued
            return _Decision(index, 1 if seat.proposes else 0, True, None, None)
        controller = seat.controller
        state = controller.state(has_pending=True, pending_parseable=record.pending_answer is not None,
                                 vote=record.vote, round_index=round_index, rounds=self.config.rounds,
                                 proposal_rounds=self.proposal_rounds)
        action, strategy = controller.act(state, training=self.training, protocol=self.eval_protocol,
                                          generator=self.eval_generator)
        return _Decision(index, action, False, state, strategy)

    def _forced(self, seat: Seat, record: DialogueRecord) -> bool:
        """Nothing pending (round 1, or nothing to review), or an unreadable pending answer to be refreshed."""
        if not record.has_pending:
            return True
        return seat.proposes and record.pending_answer is None and self.config.invalid_pending == "refresh"

    def _values_wanted(self, controller: Controller, decision: _Decision) -> bool:
        return self.training and controller.learns and not decision.forced

    def _counterfactual_wanted(self, seat: Seat, decision: _Decision) -> bool:
        """A silent decision whose speaking action is valued by a counterfactual sample."""
        return (decision.action == 0 and self.config.counterfactual and self._values_wanted(seat.controller, decision)
                and not self._kept_without_counterfactual(seat))

    def _kept_without_counterfactual(self, seat: Seat) -> bool:
        return seat.proposes and self.config.keep_valuation == "as_keep"

    def _view(self, record: DialogueRecord, round_index: int) -> DialogueView:
        return record.view(round_index,
                           unreadable_replaces_pending=self.config.unreadable_refresh == "replaces_pending")

    # ------------------------------------------------------------------ applying utterances
    def _apply_proposal(self, record: DialogueRecord, turn: Turn) -> None:
        """A new proposal becomes pending (vote reset).

        Not when it is unparseable and a parseable one is pending, under ``unreadable_refresh: keeps_pending``.
        """
        answer = turn.parsed
        if not replaces_pending(answer, record.pending_answer,
                                self.config.unreadable_refresh == "replaces_pending"):
            return
        record.pending_text = turn.text
        record.pending_answer = answer
        record.pending_correct = is_correct(answer, record.problem)
        record.review_text = None
        record.vote = 0
        turn.replaced_pending = True
        if answer is not None and record.first_answer is None:
            record.first_answer = answer
            record.first_correct = record.pending_correct

    @staticmethod
    def _apply_review(record: DialogueRecord, turn: Turn) -> None:
        """RIGHT adds +1 to the vote, WRONG -1; an unparseable review changes nothing."""
        if turn.parsed == RIGHT:
            record.vote += 1
        elif turn.parsed == WRONG:
            record.vote -= 1
        else:
            return
        record.review_text = turn.text

    # ------------------------------------------------------------------ valuing
    def _value(self, controller: Controller, d: _Decision, turn: Turn, values: tuple[float, float]) -> None:
        if not all(math.isfinite(v) for v in values):  # a broken reward must not reach the regret tables
            turn.nonfinite_values = True
            return
        if not self.config.counterfactual:
            assert d.strategy is not None
            chosen = values[d.action] / float(d.strategy[d.action])
            values = (chosen, 0.0) if d.action == 0 else (0.0, chosen)
        turn.values = dict(zip(controller.actions, values))
        assert d.state is not None and d.strategy is not None
        controller.update(d.state, values, d.strategy)


def _charge(turn: Turn, completions: Sequence[Completion]) -> None:
    """Add the cost of ``completions`` to ``turn``."""
    turn.prompt_tokens += sum(c.prompt_tokens for c in completions)
    turn.completion_tokens += sum(c.completion_tokens for c in completions)
    turn.calls += len(completions)
