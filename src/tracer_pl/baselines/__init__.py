"""Inference baselines on the same harness as TRACER: chain of thought, majority vote and multi-agent debate.

Each is a plain function over an :class:`~tracer_pl.agent.Agent` and the proposer role, returning
:class:`~tracer_pl.dialogue.DialogueRecord` objects, so :mod:`tracer_pl.metrics` scores them exactly like TRACER's
dialogues (accuracy, tokens and calls per problem, ...).
"""

from tracer_pl.baselines.inference import budget_matched_samples, chain_of_thought, debate, majority_vote

__all__ = ["budget_matched_samples", "chain_of_thought", "debate", "majority_vote"]
