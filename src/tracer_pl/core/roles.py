"""Roles: what an agent is told, how its output is read, and how it is rewarded (TRACER §1 and §3).

A :class:`Role` bundles three overridable methods:

* :meth:`Role.render` -- the user message built from the dialogue (the prompt);
* :meth:`Role.parse` -- the part of the output the dialogue uses (an answer, a verdict);
* :meth:`Role.reward` -- the role-specific reward that GSPO trains on;

and the two action values its controller learns from (TRACER §2's table), :meth:`Role.silent_value` (keep /
skip) and :meth:`Role.speaking_value` (refresh / speak).

What each override reaches:

============================  ==============================  ==========================================
override                      GSPO (what the role says)       controller (when the role speaks)
============================  ==============================  ==========================================
``reward``                    yes                             reviewer: yes (``speaking_value`` calls it);
                                                              proposer: no (its values are outcomes)
``reward_scale``,             yes                             no
``extra_rewards``
``silent_value``,             no                              yes
``speaking_value``
``parse``                     yes (through ``reward``)        yes (through the values)
============================  ==============================  ==========================================

This is the authors' split: the reviewer's speak value is its (unscaled) review reward, while the proposer's
keep/refresh values are the correctness of the answer each action leaves pending.

To add a reward role, subclass :class:`Proposer` or :class:`Reviewer` and override one or two of them, then name
the class in YAML (``class_path: my_pkg.MyReviewer``). Rewards written for TRL (``(prompts, completions,
**kwargs) -> list[float | None]``) can be added to any role with ``extra_rewards``, and every role's own reward
is available in that signature through :meth:`Role.as_reward_function`.
"""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from tracer_pl.core.agent import Messages
from tracer_pl.core.controllers import signed_value
from tracer_pl.core.problem import Problem
from tracer_pl.grading.answers import extract_answer, get_answer_format, is_equivalent

TRLReward = Callable[..., list[float | None]]
"""A reward function with TRL's signature ``(prompts, completions, **kwargs) -> list[float | None]``."""

RIGHT, WRONG = "RIGHT", "WRONG"


@dataclass
class DialogueView:
    """What a speaking role sees of one dialogue.

    Attributes:
        problem: The problem being solved.
        pending_text: The current pending solution (None before the first proposal).
        pending_answer: Its parsed answer (None when nothing is pending or it is unparseable).
        pending_correct: Whether the pending answer matches the gold answer (False when there is none).
        review_text: The latest parseable review of the pending solution, if any.
        vote: The pending answer's vote.
        round_index: The current round, 1-based.
    """

    problem: Problem
    pending_text: str | None = None
    pending_answer: str | None = None
    pending_correct: bool = False
    review_text: str | None = None
    vote: int = 0
    round_index: int = 1


def replaces_pending(new_answer: str | None, pending_answer: str | None) -> bool:
    """Whether a new proposal becomes pending (TRACER §1).

    Always, unless its answer is unparseable and a parseable one is pending.
    """
    return new_answer is not None or pending_answer is None


def is_correct(answer: str | None, problem: Problem) -> bool:
    """Whether ``answer`` matches the problem's gold answer in its dataset's answer format."""
    return answer is not None and is_equivalent(answer, problem.gold, problem.dataset)


class Role(ABC):
    """Base class of a speaking role.

    Args:
        system_prompt: The system message; None keeps the class default.
        reward_scale: Multiplies the role's own reward.
        extra_rewards: TRL-style reward functions added to the role's reward (a None score counts as 0).
        extra_reward_weights: One weight per extra reward (default 1 each).
    """

    name: str = "role"
    """The seat's name: it selects the role's adapter, controller and metric keys (unique in a dialogue)."""
    default_system_prompt: str = ""
    proposes: bool = False
    """Whether the role's utterance becomes the pending answer (a proposing seat: keep/refresh) or judges it
    (a reviewing seat: skip/speak, its verdict moves the vote)."""

    def __init__(
        self,
        system_prompt: str | None = None,
        reward_scale: float = 1.0,
        extra_rewards: Sequence[TRLReward] | None = None,
        extra_reward_weights: Sequence[float] | None = None,
    ) -> None:
        self.system_prompt = self.default_system_prompt if system_prompt is None else system_prompt
        self.reward_scale = reward_scale
        self.extra_rewards = list(extra_rewards or [])
        self.extra_reward_weights = list(extra_reward_weights or [1.0] * len(self.extra_rewards))
        if len(self.extra_reward_weights) != len(self.extra_rewards):
            raise ValueError(
                f"{type(self).__name__}: extra_reward_weights has {len(self.extra_reward_weights)} entries for "
                f"{len(self.extra_rewards)} extra_rewards"
            )

    # ---------------------------------------------------------------- the three hooks
    @abstractmethod
    def render(self, view: DialogueView) -> str:
        """The user message for this role (override to change the prompt)."""

    @abstractmethod
    def parse(self, text: str, view: DialogueView) -> str | None:
        """What the dialogue reads from the output: an answer or a verdict; None when unparseable."""

    @abstractmethod
    def reward(self, text: str, view: DialogueView) -> float:
        """The role-specific reward of one completion (before scaling and extra rewards)."""

    # ---------------------------------------------------------------- controller action values (TRACER §2)
    def silent_value(self, view: DialogueView) -> float:
        """Value of the silent action (keep / skip): +1 if the pending answer is correct, else -1 (or unreadable)."""
        return signed_value(view.pending_correct)

    @abstractmethod
    def speaking_value(self, text: str, view: DialogueView) -> float:
        """Value of the speaking action (refresh / speak) when it says ``text`` (real or counterfactual)."""

    # ---------------------------------------------------------------- built on the hooks
    def messages(self, view: DialogueView) -> Messages:
        """The chat prompt: the system message (if any) and :meth:`render`."""
        prompt: Messages = [{"role": "system", "content": self.system_prompt}] if self.system_prompt else []
        return prompt + [{"role": "user", "content": self.render(view)}]

    def score(self, texts: Sequence[str], view: DialogueView) -> list[float]:
        """Total rewards of completions for the same context: scaled own reward plus weighted extra rewards."""
        scores = [self.reward_scale * self.reward(text, view) for text in texts]
        if not self.extra_rewards:
            return scores
        prompts = [self.messages(view)] * len(texts)
        kwargs = _trl_columns(view, len(texts))
        for weight, fn in zip(self.extra_reward_weights, self.extra_rewards):
            extra = fn(prompts=prompts, completions=list(texts), **kwargs)
            scores = [s + weight * (e or 0.0) for s, e in zip(scores, extra)]
        return scores

    def as_reward_function(self) -> TRLReward:
        """This role's reward with TRL's signature, for use in TRL trainers.

        The dataset columns arrive as keyword lists: ``gold`` (or ``answer``), ``dataset`` (default
        ``gsm8k``), and for reviewers ``pending_answer``. Completions may be strings or conversational message
        lists. A row with no gold answer scores None.
        """

        def reward_function(prompts: Sequence[Any], completions: Sequence[Any], **kwargs: Any) -> list[float | None]:
            golds = kwargs.get("gold", kwargs.get("answer"))
            out: list[float | None] = []
            for i, completion in enumerate(completions):
                gold = golds[i] if golds is not None else None
                if gold is None:
                    out.append(None)
                    continue
                view = _view_from_columns(kwargs, i, str(gold))
                out.append(self.reward_scale * self.reward(_completion_text(completion), view))
            return out

        reward_function.__name__ = f"{self.name}_reward"
        return reward_function


class Proposer(Role):
    """Writes a solution ending with a final-answer line; rewarded +1 if its answer is correct, else -1."""

    name = "proposer"
    default_system_prompt = "You are a careful problem solver. Reason step by step, briefly."
    proposes = True

    def render(self, view: DialogueView) -> str:
        instruction = get_answer_format(view.problem.dataset).answer_instruction
        parts = [f"Problem:\n{view.problem.question}"]
        if view.pending_text is not None:
            parts.append(f"Current proposed solution:\n{view.pending_text}")
            if view.review_text is not None:
                parts.append(f"Latest review of it:\n{view.review_text}")
            parts.append("Write an improved solution from scratch.")
        else:
            parts.append("Solve the problem.")
        parts.append(instruction)
        return "\n\n".join(parts)

    def parse(self, text: str, view: DialogueView) -> str | None:
        return extract_answer(text, view.problem.dataset)

    def reward(self, text: str, view: DialogueView) -> float:
        return 1.0 if is_correct(self.parse(text, view), view.problem) else -1.0

    def speaking_value(self, text: str, view: DialogueView) -> float:
        """Value of refreshing with ``text``: +1 if the answer pending after the refresh is correct, else -1.

        A refresh whose answer cannot be read does not replace a readable pending answer (TRACER §1), so it is
        valued by that answer, which stays.
        """
        answer = self.parse(text, view)
        if not replaces_pending(answer, view.pending_answer):
            return signed_value(view.pending_correct)
        return signed_value(is_correct(answer, view.problem))


class Reviewer(Role):
    """Judges the pending answer: first line ``RIGHT`` or ``WRONG``, second line one short reason.

    The verdict is read with :func:`parse_verdict`.

    Rewarded +1 when the verdict is right about the pending answer, -1 when wrong, 0 when the verdict is
    unparseable or nothing parseable is pending.
    """

    name = "reviewer"
    default_system_prompt = "You are a strict reviewer of solutions to problems."

    def render(self, view: DialogueView) -> str:
        return (
            f"Problem:\n{view.problem.question}\n\n"
            f"Proposed solution:\n{view.pending_text}\n\n"
            "Is the final answer of the proposed solution correct? Answer on the first line with exactly RIGHT "
            "or WRONG, then give one short reason on the second line."
        )

    def parse(self, text: str, view: DialogueView) -> str | None:
        return parse_verdict(text)

    def reward(self, text: str, view: DialogueView) -> float:
        verdict = self.parse(text, view)
        if verdict is None or view.pending_answer is None:
            return 0.0
        return 1.0 if (verdict == RIGHT) == view.pending_correct else -1.0

    def speaking_value(self, text: str, view: DialogueView) -> float:
        """Value of speaking with ``text``: the review's own :meth:`reward` (unscaled, no extra rewards)."""
        return self.reward(text, view)


_VERDICT = re.compile(r"^[\s*#>_`\"'(\[]*(right|wrong|correct|incorrect)\b", re.IGNORECASE)
# "The final answer of 7 is indeed correct.", "The proposed solution is not right."
_STATED_VERDICT = re.compile(
    r"\b(?:is|was|looks|seems)\s+(not\s+)?(?:indeed\s+|actually\s+|definitely\s+)?(right|wrong|correct|incorrect)\b",
    re.IGNORECASE,
)


def parse_verdict(text: str) -> str | None:
    """``RIGHT``/``WRONG`` from the first non-empty line, or ``None`` when it holds no verdict.

    The line may open with the verdict word (``RIGHT``, ``WRONG``, ``correct``, ``incorrect``, markdown emphasis
    allowed), as the prompt asks. Small models more often state it in a sentence, so the first
    ``is [not] [indeed] correct/incorrect/right/wrong`` of the line counts too; ``not`` flips it.
    """
    first = next((line for line in text.splitlines() if line.strip()), "")
    match = _VERDICT.match(first)
    if match is not None:
        return RIGHT if match.group(1).lower() in ("right", "correct") else WRONG
    stated = _STATED_VERDICT.search(first)
    if stated is None:
        return None
    positive = stated.group(2).lower() in ("right", "correct")
    return RIGHT if positive != bool(stated.group(1)) else WRONG


def _completion_text(completion: Any) -> str:
    """TRL passes plain strings, or message lists for conversational data (the last message is the output)."""
    if isinstance(completion, str):
        return completion
    if isinstance(completion, Sequence) and completion and isinstance(completion[-1], dict):
        return str(completion[-1].get("content", ""))
    return str(completion)


def _view_from_columns(columns: dict[str, Any], i: int, gold: str) -> DialogueView:
    def column(name: str, default: Any = None) -> Any:
        values = columns.get(name)
        return default if values is None else values[i]

    dataset = column("dataset", "gsm8k")
    problem = Problem(question=str(column("question", "")), gold=gold, dataset=dataset)
    pending = column("pending_answer")
    return DialogueView(problem=problem, pending_text=pending, pending_answer=pending,
                        pending_correct=is_correct(pending, problem))


def _trl_columns(view: DialogueView, n: int) -> dict[str, list[Any]]:
    """The keyword columns handed to extra TRL rewards for ``n`` completions of one context."""
    return {
        "question": [view.problem.question] * n,
        "gold": [view.problem.gold] * n,
        "answer": [view.problem.gold] * n,
        "dataset": [view.problem.dataset] * n,
        "pending_answer": [view.pending_answer] * n,
    }
