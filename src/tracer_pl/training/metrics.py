"""Per-problem outcome metrics of finished dialogues, and the per-problem records written next to them.

Behaviour metrics (TRACER §4), each a fraction of *all* evaluated problems:

* ``first_parseable`` -- some proposal gave a parseable answer;
* ``correction`` -- the first parseable answer was wrong and the final answer is right;
* ``preservation`` -- the first parseable answer was right and the final answer is right;
* ``accuracy_round<r>`` -- the pending answer after round ``r`` is right.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import asdict
from typing import Any

import torch

from tracer_pl.core.controllers import Controller, state_label
from tracer_pl.core.dialogue import CandidateGroup, DialogueConfig, DialogueRecord
from tracer_pl.keys import REGRET_BOUND_BATCH, REGRET_UNBOUNDED, eval_state_key, seat_key, speaking_rate


def problem_metrics(record: DialogueRecord) -> dict[str, float]:
    """The metrics of one problem as 0/1 values (costs as counts); averaging them gives the set's metrics."""
    first = record.first_correct
    metrics = {
        "accuracy": float(record.correct),
        "first_parseable": float(first is not None),
        "correction": float(first is False and record.correct),
        "preservation": float(first is True and record.correct),
        "tokens_per_problem": float(record.tokens),
        "calls_per_problem": float(record.calls),
    }
    for round_index, correct in enumerate(record.correct_after_round, start=1):
        metrics[f"accuracy_round{round_index}"] = float(correct)
    return metrics


def mean_metrics(records: Sequence[DialogueRecord]) -> dict[str, float]:
    """Averages of :func:`problem_metrics` over ``records``."""
    rows = [problem_metrics(r) for r in records]
    return {key: sum(row[key] for row in rows) / len(rows) for key in rows[0]} if rows else {}


def record_json(record: DialogueRecord) -> dict[str, Any]:
    """One problem as a JSON-ready dict: question, gold, every turn, the final answer and the costs."""
    return {
        "uid": record.problem.uid,
        "dataset": record.problem.dataset,
        "question": record.problem.question,
        "gold": record.problem.gold,
        "final_answer": record.final_answer,
        "correct": record.correct,
        "first_answer": record.first_answer,
        "prompt_tokens": record.prompt_tokens,
        "completion_tokens": record.completion_tokens,
        "calls": record.calls,
        "turns": [{**asdict(t), "state": list(t.state) if t.state is not None else None} for t in record.turns],
    }


# ---------------------------------------------------------------------- training and controller metrics
def group_metrics(groups: Sequence[CandidateGroup], roles: Sequence[str]) -> dict[str, float]:
    """TRL-style reward statistics per role over this step's candidate groups."""
    metrics: dict[str, float] = {}
    for role in roles:
        mine = [g for g in groups if g.role == role]
        if not mine:
            continue
        rewards = torch.stack([g.rewards for g in mine]).double()
        lengths = [c.completion_tokens for g in mine for c in g.completions]
        metrics[seat_key("train", role, "reward")] = float(rewards.mean())
        metrics[seat_key("train", role, "reward_std")] = float(rewards.std(dim=1, unbiased=False).mean())
        metrics[seat_key("train", role, "frac_reward_zero_std")] = sum(not g.has_signal for g in mine) / len(mine)
        metrics[seat_key("train", role, "completions/mean_length")] = sum(lengths) / len(lengths)
    return metrics


def free_turns(records: Sequence[Any], controllers: Sequence[Controller]) -> Iterator[tuple[Controller, Any]]:
    """Each turn a controller decided (not forced), with that controller: the one named after the turn's seat."""
    by_seat = {controller.name: controller for controller in controllers}
    for record in records:
        for turn in record.turns:
            if turn.forced:
                continue
            if turn.role not in by_seat:
                raise ValueError(f"a decision of the seat {turn.role!r} has no controller of that name among "
                                 f"{sorted(by_seat)}")
            yield by_seat[turn.role], turn


def decision_metrics(records: Sequence[Any], controllers: Sequence[Controller]) -> dict[str, float]:
    """Rate of the speaking action (refresh/speak) among free decisions, per controller."""
    counts: dict[str, list[int]] = {}
    for controller, turn in free_turns(records, controllers):
        speaking = controller.actions[1]
        seen = counts.setdefault(seat_key("controller", controller.name, speaking_rate(speaking)), [0, 0])
        seen[0] += turn.action == speaking
        seen[1] += 1
    return {key: spoke / total for key, (spoke, total) in counts.items()}


def state_decisions(records: Sequence[Any], controllers: Sequence[Controller]) -> dict[str, list[float]]:
    """Free decisions as 0/1 speaking indicators, keyed ``<controller>/p_<speaking action>/<state label>``.

    Averaging each list gives the speak (or refresh) rate of the controller in that state.
    """
    decisions: dict[str, list[float]] = {}
    for controller, turn in free_turns(records, controllers):
        if turn.state is None:
            continue
        speaking = controller.actions[1]
        key = eval_state_key(controller.name, speaking, state_label(turn.state))
        decisions.setdefault(key, []).append(float(turn.action == speaking))
    return decisions


def regret_bound_terms(decisions_per_round: int, dialogue: DialogueConfig) -> dict[str, float]:
    """What ``tracer-pl report`` needs to draw the regret bound that holds for this run.

    A round draws the decisions of all ``B`` problems of the batch (of every process) before updating, so up to
    ``B`` updates of a state use one strategy (``B = 1`` per process with ``dialogue.order: one_at_a_time``); the
    bound on cumulative regret then grows to ``2*sqrt(2*B*M)``
    (:func:`tracer_pl.core.regret.regret_bound`). Importance-weighted values (no counterfactual) are not bounded by 1,
    and neither is the regret: ``controller/regret_unbounded`` says so.
    """
    if not dialogue.counterfactual:
        return {REGRET_UNBOUNDED: 1.0}
    return {REGRET_BOUND_BATCH: float(decisions_per_round)}


def worst_average_regret(controller: Controller) -> float:
    """The largest average external regret over the controller's visited states (0 before any visit)."""
    matcher = controller.matcher
    return max((matcher.average_regret(s) for s in matcher.states()), default=0.0)
