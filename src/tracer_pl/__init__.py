"""tracer_pl: TRACER multi-agent reinforcement learning for LLM reasoning, as PyTorch Lightning modules.

The pure parts (regret matching, controllers, GSPO, answers, roles, the dialogue) import neither Lightning nor
transformers; :class:`TracerModule` and :class:`ReasoningDataModule` are the Lightning layer on top.
"""

from tracer_pl.agent import Agent, Completion
from tracer_pl.answers import AnswerFormat, extract_answer, is_equivalent, register_answer_format
from tracer_pl.controllers import ControllerConfig, ProposerController, ReviewerController, StateFeatures
from tracer_pl.dialogue import DialogueConfig, DialogueRecord, run_dialogues
from tracer_pl.errors import CheckpointError, ConfigError, DataError, ModelOutputError, PreemptedError, TracerError
from tracer_pl.gspo import GSPOConfig, group_advantages, gspo_loss
from tracer_pl.problem import Problem
from tracer_pl.regret import RegretMatcher
from tracer_pl.roles import DialogueView, Proposer, Reviewer, Role
from tracer_pl.seats import Seat

__version__ = "0.1.0.dev0"

__all__ = [
    "Agent",
    "AnswerFormat",
    "CheckpointError",
    "Completion",
    "ConfigError",
    "ControllerConfig",
    "DataError",
    "DialogueConfig",
    "DialogueRecord",
    "DialogueView",
    "GSPOConfig",
    "ModelOutputError",
    "PreemptedError",
    "Problem",
    "Proposer",
    "ProposerController",
    "RegretMatcher",
    "Reviewer",
    "ReviewerController",
    "Role",
    "Seat",
    "StateFeatures",
    "TracerError",
    "extract_answer",
    "group_advantages",
    "gspo_loss",
    "is_equivalent",
    "register_answer_format",
    "run_dialogues",
]


def __getattr__(name: str):  # the Lightning layer loads lazily: importing the pure core stays fast
    if name == "TracerModule":
        from tracer_pl.module import TracerModule

        return TracerModule
    if name == "ReasoningDataModule":
        from tracer_pl.data import ReasoningDataModule

        return ReasoningDataModule
    raise AttributeError(f"module 'tracer_pl' has no attribute {name!r}")
