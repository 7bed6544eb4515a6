"""Limits checked before the model runs: sane bounds on the settings, and prompts that fit the model's context.

A setting far outside what anyone trains with (``group_size=10000``, ``max_new_tokens=10**6``) would otherwise
fail late, with an out-of-memory error after loading the model; a question longer than the context would be cut
silently with only a generic transformers notice. Both are refused here with a message that says what to change.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from tracer_pl.errors import ConfigError, DataError
from tracer_pl.problem import Problem
from tracer_pl.roles import DialogueView, Role

BOUNDS = {  # flag: (lowest, highest) accepted; one line per bounded setting
    "model.dialogue.rounds": (1, 99),
    "model.dialogue.group_size": (1, 256),
    "model.backbone.max_new_tokens": (1, 32_768),
    "model.backbone.lora_r": (1, 1024),
    "model.gspo.steps_per_group": (1, 64),
    "model.gspo.weight_decay": (0.0, 1.0),
    "model.evaluation.samples": (1, 1024),
    "model.evaluation.debate_agents": (1, 64),
    "model.evaluation.debate_rounds": (1, 64),
}

def check_bounds(hparams: dict[str, Any]) -> None:
    """Refuse a setting outside :data:`BOUNDS`, naming its flag (``hparams`` as saved by ``TracerModule``)."""
    for flag, (low, high) in BOUNDS.items():
        value: Any = hparams
        for part in flag.split(".")[1:]:
            value = value.get(part) if isinstance(value, dict) else None
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value <= high:
            raise ConfigError(f"--{flag} must be between {low} and {high}, got {value!r}")


def prompt_budget(problem: Problem, roles: Sequence[Role], render: Any, count_tokens: Any,
                  max_new_tokens: int) -> int:
    """The most tokens any turn about ``problem`` can need: its longest prompt plus the completion.

    A prompt holds the question, at most one pending solution and one review (each at most ``max_new_tokens``
    tokens), so the bound is the rendered prompt with one-letter ones, plus ``2 * max_new_tokens`` for them, plus
    ``max_new_tokens`` for the completion.
    """
    view = DialogueView(problem=problem, pending_text="x", pending_answer="x", review_text="x", round_index=2)
    longest = max(count_tokens(render(role.messages(view))) for role in roles)
    return longest + 3 * max_new_tokens


def check_prompts(problems: Sequence[Problem], roles: Sequence[Role], render: Any, count_tokens: Any,
                  max_new_tokens: int, context: int | None) -> None:
    """Refuse a problem whose dialogue cannot fit in ``context`` tokens (None: the model states no limit)."""
    if context is None:
        return
    for problem in problems:
        needed = prompt_budget(problem, roles, render, count_tokens, max_new_tokens)
        if needed > context:
            raise DataError(
                f"{problem.uid}: a turn of this problem can need {needed} tokens (the prompt with a pending solution "
                f"and a review, plus 3 x --model.backbone.max_new_tokens {max_new_tokens}), more than the model's "
                f"context of {context}; shorten or drop the question, or lower --model.backbone.max_new_tokens"
            )
