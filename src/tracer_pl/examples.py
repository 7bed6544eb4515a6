"""Roles beyond TRACER's two, as examples of a third seat (``configs/examples/third_role.yaml``).

A seat is one role class with a ``name`` of its own: the module gives it an adapter, a controller, a GSPO step
and metric keys, and ``dialogue.schedule`` gives it rounds. :class:`Verifier` is a second reviewer.
"""

from __future__ import annotations

from typing import Any

from tracer_pl.core.roles import WRONG, DialogueView, Reviewer


class Verifier(Reviewer):
    """A second reviewer that solves the problem again and compares, with a reward of its own.

    Its verdict moves the same vote as the reviewer's. Its reward is the reviewer's (+1 for a right verdict, -1
    for a wrong one, 0 when unreadable or nothing readable is pending), except that confirming a right answer
    earns only ``confirm_reward``: a verifier is there to catch errors. Values stay within [-1, 1], the range the
    controllers' regret bound assumes.

    Args:
        confirm_reward: The reward of RIGHT on a right pending answer, in [0, 1].
        **kwargs: :class:`~tracer_pl.core.roles.Role`'s arguments (``system_prompt``, ``reward_scale``, ...).
    """

    name = "verifier"
    default_system_prompt = "You are a verifier. You check a solution by solving the problem again yourself."

    def __init__(self, confirm_reward: float = 0.5, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if not 0 <= confirm_reward <= 1:
            raise ValueError(f"Verifier: confirm_reward must be in [0, 1], got {confirm_reward}")
        self.confirm_reward = confirm_reward

    def render(self, view: DialogueView) -> str:
        return (
            f"Problem:\n{view.problem.question}\n\n"
            f"Proposed solution:\n{view.pending_text}\n\n"
            "Solve the problem again yourself. Does your final answer equal the proposed one? Answer on the first "
            "line with exactly RIGHT or WRONG, then give your own final answer on the second line."
        )

    def reward(self, text: str, view: DialogueView) -> float:
        verdict_reward = super().reward(text, view)
        if verdict_reward > 0 and self.parse(text, view) != WRONG:  # a right RIGHT: a confirmation
            return self.confirm_reward
        return verdict_reward
