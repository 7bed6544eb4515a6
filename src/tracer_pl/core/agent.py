"""The interface the dialogue talks to: "generate n completions for these contexts as role X".

Anything implementing :class:`Agent` can drive :func:`tracer_pl.core.dialogue.run_dialogues`: the LoRA backbone in
training, a scripted fake in tests, or an API client.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    import torch

Message = dict[str, str]
"""One chat message, ``{"role": "system" | "user" | "assistant", "content": str}``."""

Messages = list[Message]
"""A whole chat prompt, rendered with the tokenizer's chat template by the agent (see :func:`text_prompt` for a
prompt given to the model as it is)."""

TEXT = "text"
"""The message role of a prompt that is plain text, given to the model without the chat template."""


def text_prompt(text: str) -> Messages:
    """A prompt the engines give to the model as it is, without the chat template (the released code's prompts)."""
    return [{"role": TEXT, "content": text}]


def plain_text(prompt: Messages) -> str | None:
    """The text of a :func:`text_prompt`, or None for a chat prompt."""
    if len(prompt) == 1 and prompt[0].get("role") == TEXT:
        return prompt[0].get("content", "")
    return None


@dataclass
class Completion:
    """One generated utterance.

    Attributes:
        text: The decoded completion, special tokens removed.
        prompt_tokens: Tokens of the prompt after the chat template (what was paid for the context).
        completion_tokens: Generated tokens, including the end-of-sequence token if one was produced.
        truncated: True when generation stopped at the token limit rather than at end-of-sequence.
        prompt_ids: The prompt's token ids after the chat template, a 1-D LongTensor without padding (engines
            that train set it; a scripted agent may leave it None).
        completion_ids: The generated token ids, a 1-D LongTensor ending with the stop token unless
            ``truncated``: what GSPO scores.
        sampling_logprobs: Per-token log-probabilities of ``completion_ids`` as reported by the engine that
            sampled them (a 1-D float tensor), when it reports them; used to measure how far they are from the
            training model's.
    """

    text: str
    prompt_tokens: int = 0
    completion_tokens: int = 0
    truncated: bool = False
    prompt_ids: torch.Tensor | None = None
    completion_ids: torch.Tensor | None = None
    sampling_logprobs: torch.Tensor | None = None


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


def sample_counts(num_samples: int | Sequence[int], num_prompts: int) -> list[int]:
    """``num_samples`` of :meth:`Agent.generate` as one count per prompt, checked.

    Raises:
        ValueError: A list of the wrong length, or a negative count.
    """
    counts = [num_samples] * num_prompts if isinstance(num_samples, int) else list(num_samples)
    if len(counts) != num_prompts:
        raise ValueError(f"num_samples has {len(counts)} entries for {num_prompts} prompts")
    if any(n < 0 for n in counts):
        raise ValueError(f"num_samples must be >= 0, got {counts}")
    return counts
