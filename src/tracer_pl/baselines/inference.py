"""Chain of thought, self-consistency (majority vote) and multi-agent debate (Du et al., 2023).

All three batch every problem of a call into one ``generate`` per round, like the dialogue does.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from tracer_pl.core.agent import Agent, Completion
from tracer_pl.core.dialogue import DialogueRecord, Turn
from tracer_pl.core.problem import Problem
from tracer_pl.core.roles import DialogueView, Role, is_correct
from tracer_pl.grading.answers import is_equivalent


def chain_of_thought(problems: Sequence[Problem], agent: Agent, proposer: Role, *, greedy: bool = True
                     ) -> list[DialogueRecord]:
    """One proposer call per problem; its answer is final."""
    return majority_vote(problems, agent, proposer, samples=1, greedy=greedy)


def majority_vote(problems: Sequence[Problem], agent: Agent, proposer: Role, *, samples: int, greedy: bool = False
                  ) -> list[DialogueRecord]:
    """``samples`` proposals per problem; the most frequent parseable answer wins (self-consistency).

    Answers are grouped by the dataset's equivalence (``0.5`` and ``1/2`` vote together); ties go to the answer
    seen first. The first sample's answer counts as the "first answer" of the behaviour metrics.
    """
    if samples < 1:
        raise ValueError(f"samples must be at least 1, got {samples}")
    records = [DialogueRecord(problem=p) for p in problems]
    prompts = [proposer.messages(DialogueView(problem=p)) for p in problems]
    outputs = agent.generate(proposer.name, prompts, samples, greedy=greedy)
    for record, completions in zip(records, outputs):
        answers = [proposer.parse(c.text, record.view(1)) for c in completions]
        record.turns.append(speaking_turn(1, proposer.name, completions, " | ".join(c.text for c in completions)))
        settle(record, answers, winner=_plurality(answers, record.problem))
        record.correct_after_round.append(record.pending_correct)
    return records


def debate(problems: Sequence[Problem], agent: Agent, proposer: Role, *, agents: int = 3, rounds: int = 2,
           greedy: bool = False) -> list[DialogueRecord]:
    """Multi-agent debate: ``agents`` solvers answer, then see the others' solutions and answer again.

    Round 1 prompts each agent with the problem alone; every later round shows an agent the other agents'
    latest solutions as the pending solution. The final answer is the majority of the last round's answers.
    """
    if agents < 1 or rounds < 1:
        raise ValueError(f"agents and rounds must be at least 1, got agents={agents}, rounds={rounds}")
    records = [DialogueRecord(problem=p) for p in problems]
    latest: list[list[str]] = [[] for _ in problems]
    for round_index in range(1, rounds + 1):
        prompts = [
            proposer.messages(_debate_view(record.problem, latest[i], a, round_index))
            for i, record in enumerate(records) for a in range(agents)
        ]
        flat = [c[0] for c in agent.generate(proposer.name, prompts, 1, greedy=greedy)]
        for i, record in enumerate(records):
            mine = flat[i * agents : (i + 1) * agents]
            latest[i] = [c.text for c in mine]
            answers = [proposer.parse(c.text, record.view(round_index)) for c in mine]
            record.turns.append(speaking_turn(round_index, proposer.name, mine, "\n---\n".join(latest[i])))
            settle(record, answers, winner=_plurality(answers, record.problem))
            record.correct_after_round.append(record.pending_correct)
    return records


def budget_matched_samples(tokens_per_problem: float, tokens_per_sample: float) -> int:
    """How many majority-vote samples fit the token budget of another method (at least one)."""
    if tokens_per_sample <= 0:
        raise ValueError(f"tokens_per_sample must be positive, got {tokens_per_sample}")
    return max(1, math.floor(tokens_per_problem / tokens_per_sample))


def _debate_view(problem: Problem, others_latest: list[str], agent_index: int, round_index: int) -> DialogueView:
    if round_index == 1 or not others_latest:
        return DialogueView(problem=problem, round_index=round_index)
    others = [text for j, text in enumerate(others_latest) if j != agent_index] or others_latest
    shown = "\n\n".join(f"Solution from agent {j + 1}:\n{text}" for j, text in enumerate(others))
    return DialogueView(problem=problem, pending_text=shown, round_index=round_index)


def _plurality(answers: Sequence[str | None], problem: Problem) -> str | None:
    """The most frequent parseable answer under the dataset's equivalence; ties to the earliest."""
    groups: list[tuple[str, int]] = []
    for answer in answers:
        if answer is None:
            continue
        for k, (representative, count) in enumerate(groups):
            if is_equivalent(answer, representative, problem.dataset):
                groups[k] = (representative, count + 1)
                break
        else:
            groups.append((answer, 1))
    return max(groups, key=lambda g: g[1])[0] if groups else None


def settle(record: DialogueRecord, answers: Sequence[str | None], winner: str | None) -> None:
    """Make ``winner`` the record's answer; the first parseable of ``answers`` is its first answer (once)."""
    if record.first_answer is None:
        first = next((a for a in answers if a is not None), None)
        if first is not None:
            record.first_answer, record.first_correct = first, is_correct(first, record.problem)
    record.pending_answer = winner
    record.pending_correct = is_correct(winner, record.problem)


def speaking_turn(round_index: int, role: str, completions: Sequence[Completion], text: str) -> Turn:
    """A forced speaking turn charged with the cost of ``completions``."""
    return Turn(round=round_index, role=role, action="speak", forced=True, state=None, text=text,
                prompt_tokens=sum(c.prompt_tokens for c in completions),
                completion_tokens=sum(c.completion_tokens for c in completions), calls=len(completions))
