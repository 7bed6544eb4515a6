"""The interface the dialogue talks to: "generate n completions for these contexts as role X".

Anything implementing :class:`Agent` can drive :func:`tracer_pl.dialogue.run_dialogues`: the LoRA backbone in
training, a scripted fake in tests, or an API client.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

Message = dict[str, str]
"""One chat message, ``{"role": "system" | "user" | "assistant", "content": str}``."""

Messages = list[Message]
"""A whole chat prompt, rendered with the tokenizer's chat template by the agent."""


@dataclass
class Completion:
    """One generated utterance.

    Attributes:
        text: The decoded completion, special tokens removed.
        prompt_tokens: Tokens of the prompt after the chat template (what was paid for the context).
        completion_tokens: Generated tokens, including the end-of-sequence token if one was produced.
        truncated: True when generation stopped at the token limit rather than at end-of-sequence.
        payload: Agent-specific data needed to score the completion later (e.g. token ids for GSPO).
    """

    text: str
    prompt_tokens: int = 0
    completion_tokens: int = 0
    truncated: bool = False
    payload: Any = None


class Agent(Protocol):
    """Generates utterances for a role; the role selects the adapter (or persona) that speaks."""

    def generate(
        self,
        role: str,
        prompts: Sequence[Messages],
        num_samples: int | Sequence[int] = 1,
        *,
        greedy: bool = False,
    ) -> list[list[Completion]]:
        """Return ``num_samples[i]`` completions for ``prompts[i]``, in order, from one batched call.

        Args:
            role: Name of the speaking role (``"proposer"``, ``"reviewer"``, ...).
            prompts: One chat prompt per request.
            num_samples: Completions per prompt: one int for all, or one per prompt (0 is allowed).
            greedy: Decode greedily instead of sampling.
        """
        ...
