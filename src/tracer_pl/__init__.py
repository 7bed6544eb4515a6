"""tracer_pl: TRACER multi-agent reinforcement learning for LLM reasoning, as PyTorch Lightning modules.

The pure parts (regret matching, controllers, GSPO, answers, roles, the dialogue) import neither Lightning nor
transformers; :class:`TracerModule` and :class:`ReasoningDataModule` are the Lightning layer on top.
"""

from tracer_pl import _graveyard
from tracer_pl.core.agent import Agent, Completion
from tracer_pl.core.controllers import ControllerConfig, ProposerController, ReviewerController, StateFeatures
from tracer_pl.core.dialogue import DialogueConfig, DialogueRecord, play, play_round, run_dialogues
from tracer_pl.core.gspo import ClipRange, GSPOConfig, PolicyLoss, group_advantages, grpo_loss, gspo_loss
from tracer_pl.core.problem import Problem
from tracer_pl.core.regret import RegretMatcher
from tracer_pl.core.roles import DialogueView, Proposer, Reviewer, Role
from tracer_pl.core.seats import Seat
from tracer_pl.errors import CheckpointError, ConfigError, DataError, ModelOutputError, PreemptedError, TracerError
from tracer_pl.grading.answers import AnswerFormat, extract_answer, is_equivalent, register_answer_format

__version__ = "0.2.0.dev0"

_graveyard.install()  # the module paths before 0.2 (tracer_pl.module, ...), for one release

__all__ = [
    "Agent",
    "AnswerFormat",
    "CheckpointError",
    "ClipRange",
    "Completion",
    "ConfigError",
    "ControllerConfig",
    "DataError",
    "DialogueConfig",
    "DialogueRecord",
    "DialogueView",
    "GSPOConfig",
    "ModelOutputError",
    "PolicyLoss",
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
    "grpo_loss",
    "gspo_loss",
    "is_equivalent",
    "play",
    "play_round",
    "register_answer_format",
    "run_dialogues",
]


def __getattr__(name: str):  # the Lightning layer loads lazily: importing the pure core stays fast
    if name == "TracerModule":
        from tracer_pl.training.module import TracerModule

        return TracerModule
    if name == "ReasoningDataModule":
        from tracer_pl.data import ReasoningDataModule

        return ReasoningDataModule
    raise AttributeError(f"module 'tracer_pl' has no attribute {name!r}")
