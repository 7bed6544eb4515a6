"""Scripted stand-ins for the model and the controllers, to drive the dialogue deterministically."""

from __future__ import annotations

from collections import deque

import torch

from tracer_pl.core.agent import Completion
from tracer_pl.core.controllers import Controller, ProposerController, ReviewerController
from tracer_pl.core.dialogue import DialogueConfig, run_dialogues
from tracer_pl.core.roles import Proposer, Reviewer
from tracer_pl.core.seats import Seat

PROMPT_TOKENS = 10


class ScriptedAgent:
    """Answers each request with the next scripted text of the role; records every call."""

    def __init__(self, **scripts: list[str]) -> None:
        self.scripts = {role: deque(texts) for role, texts in scripts.items()}
        self.calls: list[dict] = []

    def generate(self, role, prompts, num_samples=1, *, greedy=False):
        counts = [num_samples] * len(prompts) if isinstance(num_samples, int) else list(num_samples)
        self.calls.append({"role": role, "prompts": list(prompts), "num_samples": counts, "greedy": greedy})
        return [[self._complete(role) for _ in range(n)] for n in counts]

    def _complete(self, role):
        text = self.scripts[role].popleft()
        return Completion(text=text, prompt_tokens=PROMPT_TOKENS, completion_tokens=len(text))

    def exhausted(self) -> bool:
        return all(not q for q in self.scripts.values())


class _Scripted:
    """Plays scripted actions (with probabilities 1/2 each) and records the updates it receives."""

    def __init__(self, actions):
        self.script = deque(actions)
        self.updates = []
        self.states = []

    def act(self, state, *, training, protocol="sample", generator=None):
        self.states.append(state)
        return self.script.popleft(), torch.tensor([0.5, 0.5], dtype=torch.float64)

    def update(self, state, values, strategy):
        self.updates.append((state, tuple(values)))


class ScriptedProposerController(_Scripted, ProposerController):
    def __init__(self, actions):
        ProposerController.__init__(self)
        _Scripted.__init__(self, actions)


class ScriptedReviewerController(_Scripted, ReviewerController):
    def __init__(self, actions):
        ReviewerController.__init__(self)
        _Scripted.__init__(self, actions)


def play(problems, agent, proposer_actions, reviewer_actions, training=False, learn=None, group_size=4, **config):
    """TRACER's dialogue on ``problems`` with its two roles and scripted controllers playing the given actions.

    Returns:
        ``(result, proposer_controller, reviewer_controller)``; ``config`` holds ``DialogueConfig`` fields.
    """
    pc = ScriptedProposerController(proposer_actions)
    rc = ScriptedReviewerController(reviewer_actions)
    seats = [Seat(Proposer(), pc), Seat(Reviewer(), rc)]
    result = run_dialogues(problems, agent, seats, config=DialogueConfig(**config), training=training, learn=learn,
                           group_size=group_size)
    return result, pc, rc


__all__ = ["Controller", "ScriptedAgent", "ScriptedProposerController", "ScriptedReviewerController", "play"]
