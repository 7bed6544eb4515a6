"""Rollouts of the single-agent training baselines (GSPO or GRPO on the proposer alone).

One ``generate`` call per batch samples ``group_size`` proposals for every problem; they are scored with the
proposer's reward and returned as candidate groups for the module's policy step. There is no dialogue, no
reviewer and no controller: each problem costs exactly one proposer call with ``group_size`` samples.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from tracer_pl.baselines.inference import settle, speaking_turn
from tracer_pl.core.agent import Agent
from tracer_pl.core.dialogue import CandidateGroup, DialogueRecord, DialogueResult
from tracer_pl.core.gspo import ZERO_SIGNAL_STD, group_advantages
from tracer_pl.core.problem import Problem
from tracer_pl.core.roles import DialogueView, Role


def single_agent_rollouts(problems: Sequence[Problem], agent: Agent, proposer: Role, *, group_size: int,
                          min_reward_std: float = ZERO_SIGNAL_STD) -> DialogueResult:
    """``group_size`` sampled proposals per problem, as candidate groups with group-normalised advantages.

    The record of a problem carries its first sample's answer (what one sampled call would answer), so training
    accuracy is that of a single sample; the reward statistics of the groups cover all samples.
    """
    views = [DialogueView(problem=p, round_index=1) for p in problems]
    prompts = [proposer.messages(view) for view in views]
    outputs = agent.generate(proposer.name, prompts, group_size, greedy=False)
    records, groups = [], []
    for index, (view, prompt, completions) in enumerate(zip(views, prompts, outputs)):
        texts = [c.text for c in completions]
        rewards = torch.tensor(proposer.score(texts, view), dtype=torch.float32)
        groups.append(CandidateGroup(role=proposer.name, round=1, problem_index=index, prompt=prompt,
                                     completions=completions, rewards=rewards,
                                     advantages=group_advantages(rewards, min_reward_std)))
        record = DialogueRecord(problem=view.problem)
        answer = proposer.parse(texts[0], view) if texts else None
        settle(record, [answer], winner=answer)
        record.turns.append(speaking_turn(1, proposer.name, completions, texts[0] if texts else ""))
        record.correct_after_round.append(record.pending_correct)
        records.append(record)
    return DialogueResult(records=records, groups=groups)
