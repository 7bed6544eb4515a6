"""Baselines on the same harness as TRACER.

Inference: chain of thought, majority vote and multi-agent debate. Training: the rollouts of single-agent GSPO
and GRPO (the module runs their policy step).

Each is a plain function over an :class:`~tracer_pl.core.agent.Agent` and the proposer role, returning
:class:`~tracer_pl.core.dialogue.DialogueRecord` objects, so :mod:`tracer_pl.training.metrics` scores them
exactly like TRACER's dialogues (accuracy, tokens and calls per problem, ...).
"""

from tracer_pl.baselines.inference import budget_matched_samples, chain_of_thought, debate, majority_vote
from tracer_pl.baselines.training import single_agent_rollouts

__all__ = ["budget_matched_samples", "chain_of_thought", "debate", "majority_vote", "single_agent_rollouts"]
