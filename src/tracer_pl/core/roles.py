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

An extra reward is called as TRL's ``GRPOTrainer`` calls it, once per GSPO group (the ``G`` completions of one
context), in one of TRL's two forms:

* ``standard``: ``prompts`` and ``completions`` are strings (the prompt is the role's user message,
  :meth:`Role.render`; the chat template belongs to the engine);
* ``conversational``: ``prompts`` are the chat messages (:meth:`Role.messages`) and every completion is
  ``[{"role": "assistant", "content": text}]``, as TRL passes them for chat datasets (``trl.rewards``'
  functions read ``completion[0]["content"]``).

``extra_reward_format="auto"`` (the default) picks the form per function from the annotation of its
``completions`` parameter: one that names ``dict`` or messages (TRL's ``list[list[dict[str, str]]]``) gets the
conversational form, any other or none the standard form. The problem's columns come as keyword lists of the
same length (see :data:`TRL_COLUMNS`), ``solution`` among them, so ``trl.rewards.accuracy_reward`` and
``trl.rewards.think_format_reward`` work unchanged.
"""

from __future__ import annotations

import inspect
import re
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from tracer_pl.core.agent import Messages, text_prompt
from tracer_pl.core.controllers import signed_value
from tracer_pl.core.problem import Problem
from tracer_pl.errors import ConfigError, require_between
from tracer_pl.grading.answers import extract_answer, get_answer_format, is_equivalent
from tracer_pl.grading.text import last_boxed

TRLReward = Callable[..., list[float | None]]
"""A reward function with TRL's signature ``(prompts, completions, **kwargs) -> list[float | None]``."""

PromptStyle = Literal["chat", "plain"]
"""How a role's prompt is built: chat messages through the chat template (TRACER §1), or the released code's
plain text (:meth:`Role.render_plain`)."""

RewardFormat = Literal["auto", "standard", "conversational"]
"""How extra rewards receive prompts and completions: TRL's standard (strings) or conversational (messages) form,
or ``auto``: chosen per function from its ``completions`` annotation."""

TRL_COLUMNS = ("question", "gold", "solution", "answer", "dataset", "uid", "pending_answer", "pending_text",
               "review_text")
"""The keyword columns an extra reward receives, one entry per completion: the problem's ``question``; its gold
answer as ``gold``, ``solution`` (the name TRL's accuracy rewards read) and ``answer``; ``dataset`` (its answer
format); ``uid``; and the dialogue's ``pending_answer``, ``pending_text`` and ``review_text`` (None before any)."""

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
        history: Every utterance that entered the dialogue before this round, oldest first.
        unreadable_replaces_pending: A proposal without a readable answer replaces the pending one
            (``dialogue.unreadable_refresh: replaces_pending``); by default it does not (TRACER §1).
    """

    problem: Problem
    pending_text: str | None = None
    pending_answer: str | None = None
    pending_correct: bool = False
    review_text: str | None = None
    vote: int = 0
    round_index: int = 1
    history: tuple[Utterance, ...] = ()
    unreadable_replaces_pending: bool = False


@dataclass(frozen=True)
class Utterance:
    """One utterance that entered a dialogue: its round, its seat's name, ``proposal`` or ``review``, its text."""

    round: int
    seat: str
    kind: str
    text: str


def replaces_pending(new_answer: str | None, pending_answer: str | None, unreadable_replaces: bool = False) -> bool:
    """Whether a new proposal becomes pending.

    TRACER §1: always, unless its answer is unparseable and a parseable one is pending. With
    ``unreadable_replaces`` (``dialogue.unreadable_refresh: replaces_pending``, the released code) always.
    """
    return unreadable_replaces or new_answer is not None or pending_answer is None


def is_correct(answer: str | None, problem: Problem) -> bool:
    """Whether ``answer`` matches the problem's gold answer in its dataset's answer format."""
    return answer is not None and is_equivalent(answer, problem.gold, problem.dataset)


class Role(ABC):
    """Base class of a speaking role.

    Args:
        system_prompt: The system message; None keeps the class default.
        reward_scale: Multiplies the role's own reward.
        extra_rewards: TRL-style reward functions added to the role's reward (a None score counts as 0), e.g.
            ``trl.rewards.accuracy_reward``; in YAML, their import paths.
        extra_reward_weights: One weight per extra reward (default 1 each).
        extra_reward_format: How the extra rewards get prompts and completions: ``standard`` (strings),
            ``conversational`` (chat messages, as TRL passes them for chat datasets), or ``auto`` (per function,
            from the annotation of its ``completions`` parameter; see the module docstring).
        prompt_style: ``chat`` (TRACER §1: a system prompt and :meth:`render` through the chat template) or
            ``plain`` (the released code: :meth:`render_plain`, raw text with the question, the pending
            solution and the last ``history_turns`` utterances, given to the model without the chat template).
        history_turns: The utterances a ``plain`` prompt shows (the released code: 4).
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
        extra_reward_format: RewardFormat = "auto",
        prompt_style: PromptStyle = "chat",
        history_turns: int = 4,
    ) -> None:
        if prompt_style not in ("chat", "plain"):
            raise ValueError(f"{type(self).__name__}: prompt_style must be chat or plain, got {prompt_style!r}")
        require_between(history_turns, f"{type(self).__name__}: history_turns", 0, 99)
        self.prompt_style = prompt_style
        self.history_turns = history_turns
        self.system_prompt = self.default_system_prompt if system_prompt is None else system_prompt
        self.reward_scale = reward_scale
        self.extra_rewards = list(extra_rewards or [])
        self.extra_reward_weights = list(extra_reward_weights or [1.0] * len(self.extra_rewards))
        if len(self.extra_reward_weights) != len(self.extra_rewards):
            raise ValueError(
                f"{type(self).__name__}: extra_reward_weights has {len(self.extra_reward_weights)} entries for "
                f"{len(self.extra_rewards)} extra_rewards"
            )
        if extra_reward_format not in ("auto", "standard", "conversational"):
            raise ValueError(f"{type(self).__name__}: extra_reward_format must be auto, standard or conversational, "
                             f"got {extra_reward_format!r}")
        not_callable = [fn for fn in self.extra_rewards if not callable(fn)]
        if not_callable:
            raise ValueError(f"{type(self).__name__}: extra_rewards must be functions (in YAML, their import paths "
                             f"such as trl.rewards.accuracy_reward), got {not_callable[0]!r}")
        self.extra_reward_format = extra_reward_format

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
        """The prompt: the system message (if any) and :meth:`render` as chat messages.

        With ``prompt_style: plain``, the text of :meth:`render_plain` (no chat template, no system message).
        """
        if self.prompt_style == "plain":
            return text_prompt(self.render_plain(view))
        prompt: Messages = [{"role": "system", "content": self.system_prompt}] if self.system_prompt else []
        return prompt + [{"role": "user", "content": self.render(view)}]

    def utterances_in_prompt(self) -> int:
        """The most earlier utterances a prompt of this role shows.

        The pending solution and the latest review, or with ``prompt_style: plain`` the pending solution and
        ``history_turns`` utterances.
        """
        return 1 + (self.history_turns if self.prompt_style == "plain" else 1)

    def prompt_text(self, view: DialogueView) -> str:
        """The prompt as one string: :meth:`render`, or :meth:`render_plain` with ``prompt_style: plain``."""
        return self.render_plain(view) if self.prompt_style == "plain" else self.render(view)

    # ---------------------------------------------------------------- the released code's plain prompt
    plain_cue: str = "Answer:"
    """The last line of a plain prompt, after which the model writes."""

    def plain_instruction(self, view: DialogueView) -> str:
        """The task, first in a plain prompt (override per role)."""
        return self.system_prompt

    def render_plain(self, view: DialogueView) -> str:
        """The released code's prompt layout, as plain text.

        The task, the dataset, the question, the pending solution, the last ``history_turns`` utterances of the
        dialogue (each with its round, seat and kind) and a cue line.
        """
        parts = [self.plain_instruction(view), f"Dataset: {view.problem.dataset}",
                 f"Question:\n{view.problem.question}"]
        if view.pending_text is not None:
            parts.append(f"Pending solution:\n{view.pending_text}")
        recent = view.history[-self.history_turns:] if self.history_turns else ()
        if recent:
            turns = "\n\n".join(f"(round {u.round}, {u.seat}, {u.kind})\n{u.text}" for u in recent)
            parts.append(f"Recent turns:\n{turns}")
        parts.append(self.plain_cue)
        return "\n\n".join(parts) + "\n"

    def score(self, texts: Sequence[str], view: DialogueView, *,
              completion_ids: Sequence[Sequence[int]] | None = None) -> list[float]:
        """Total rewards of completions for the same context: scaled own reward plus weighted extra rewards.

        Args:
            texts: The completions.
            view: Their common context.
            completion_ids: Their token ids, handed to extra rewards as TRL's ``completion_ids`` when given.

        Raises:
            ConfigError: An extra reward fails on the form it was given (the message names the form to try), or
                does not return one score per completion.
        """
        scores = [self.reward_scale * self.reward(text, view) for text in texts]
        if not self.extra_rewards:
            return scores
        columns = trl_columns(view, len(texts))
        if completion_ids is not None:
            columns["completion_ids"] = [list(ids) for ids in completion_ids]
        for weight, fn in zip(self.extra_reward_weights, self.extra_rewards):
            form = self.reward_form(fn)
            if form == "conversational":
                prompts: list[Any] = [self.messages(view)] * len(texts)
                completions: list[Any] = [[{"role": "assistant", "content": text}] for text in texts]
            else:
                prompts, completions = [self.prompt_text(view)] * len(texts), list(texts)
            extra = self._call_extra(fn, form, prompts, completions, columns)
            scores = [s + weight * (0.0 if e is None else float(e)) for s, e in zip(scores, extra)]
        return scores

    def reward_form(self, fn: TRLReward) -> str:
        """``standard`` or ``conversational``: the form in which ``fn`` gets prompts and completions."""
        if self.extra_reward_format != "auto":
            return self.extra_reward_format
        return completions_form(fn)

    def _call_extra(self, fn: TRLReward, form: str, prompts: list[Any], completions: list[Any],
                    columns: dict[str, list[Any]]) -> list[Any]:
        name = _function_name(fn)
        try:
            extra = fn(prompts=prompts, completions=completions, **columns)
        except (TypeError, KeyError, IndexError, AttributeError) as error:
            other = "standard" if form == "conversational" else "conversational"
            given = "chat messages" if form == "conversational" else "strings"
            reason = " ".join(str(error).split())
            raise ConfigError(
                f"{self.name}: extra reward {name} failed on completions given as {given} ({type(error).__name__}: "
                f"{reason}); if it expects the {other} form, set extra_reward_format: {other} on the role"
            ) from error
        extra = list(extra) if extra is not None else []
        if len(extra) != len(completions):
            raise ConfigError(f"{self.name}: extra reward {name} returned {len(extra)} scores for "
                              f"{len(completions)} completions; expected one score (or None) per completion")
        return extra

    def as_reward_function(self) -> TRLReward:
        r"""This role's reward with TRL's signature, for use in TRL trainers.

        The dataset columns arrive as keyword lists. The gold answer is read from ``gold``, else ``answer``,
        else ``solution`` (a worked solution's last ``\boxed{...}``, or the whole text when it has none). The
        answer format is the ``dataset`` column; without one, a gold that is a number is graded as ``gsm8k``
        and any other as ``math500`` (math-verify). Reviewers read ``pending_answer``. Completions may be
        strings or conversational message lists. A row with no gold answer, or one its format refuses, scores
        None (TRL skips it).
        """

        def reward_function(prompts: Sequence[Any], completions: Sequence[Any], **kwargs: Any) -> list[float | None]:
            out: list[float | None] = []
            for i, completion in enumerate(completions):
                view = _view_from_columns(kwargs, i)
                if view is None:
                    out.append(None)
                    continue
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

    plain_cue = "Solution:"

    def plain_instruction(self, view: DialogueView) -> str:
        instruction = get_answer_format(view.problem.dataset).answer_instruction
        return f"Solve the question, reasoning briefly step by step. {instruction}"

    def parse(self, text: str, view: DialogueView) -> str | None:
        return extract_answer(text, view.problem.dataset)

    def reward(self, text: str, view: DialogueView) -> float:
        return 1.0 if is_correct(self.parse(text, view), view.problem) else -1.0

    def speaking_value(self, text: str, view: DialogueView) -> float:
        """Value of refreshing with ``text``: +1 if the answer pending after the refresh is correct, else -1.

        A refresh whose answer cannot be read does not replace a readable pending answer (TRACER §1), so it is
        valued by that answer, which stays; where it does replace it (``view.unreadable_replaces_pending``, the
        released code) it leaves no answer pending and is valued -1.
        """
        answer = self.parse(text, view)
        if not replaces_pending(answer, view.pending_answer, view.unreadable_replaces_pending):
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

    plain_cue = "Review:"

    def plain_instruction(self, view: DialogueView) -> str:
        return ("Judge whether the final answer of the pending solution is correct. Write RIGHT or WRONG on the "
                "first line and one short reason on the second.")

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


def completions_form(fn: TRLReward) -> str:
    """TRL's form a reward function expects, read from the annotation of its ``completions`` parameter.

    ``conversational`` when the annotation names ``dict`` or messages (``list[list[dict[str, str]]]``, as
    ``trl.rewards`` declares it), ``standard`` otherwise, also without an annotation or a readable signature.
    """
    try:
        parameter = inspect.signature(fn).parameters.get("completions")
    except (TypeError, ValueError):
        return "standard"
    if parameter is None or parameter.annotation is inspect.Parameter.empty:
        return "standard"
    annotation = parameter.annotation
    text = annotation if isinstance(annotation, str) else repr(annotation)
    return "conversational" if re.search(r"dict|message", text, re.IGNORECASE) else "standard"


def trl_columns(view: DialogueView, n: int) -> dict[str, list[Any]]:
    """The keyword columns (:data:`TRL_COLUMNS`) handed to extra rewards for ``n`` completions of one context."""
    problem = view.problem
    values = {"question": problem.question, "gold": problem.gold, "solution": problem.gold, "answer": problem.gold,
              "dataset": problem.dataset, "uid": problem.uid, "pending_answer": view.pending_answer,
              "pending_text": view.pending_text, "review_text": view.review_text}
    return {name: [values[name]] * n for name in TRL_COLUMNS}


def _function_name(fn: Any) -> str:
    return str(getattr(fn, "__name__", None) or type(fn).__name__)


def _completion_text(completion: Any) -> str:
    """TRL passes plain strings, or message lists for conversational data (the last message is the output)."""
    if isinstance(completion, str):
        return completion
    if isinstance(completion, Sequence) and completion and isinstance(completion[-1], dict):
        return str(completion[-1].get("content") or "")
    return str(completion)


def _gold_and_format(columns: dict[str, Any], i: int) -> tuple[str, str] | None:
    """The row's gold answer and answer format, or None when it has no usable gold."""

    def column(name: str) -> Any:
        values = columns.get(name)
        return None if values is None else values[i]

    raw = next((column(name) for name in ("gold", "answer") if column(name) is not None), None)
    if raw is None and column("solution") is not None:
        solution = str(column("solution"))
        boxed = last_boxed(solution)
        raw = solution if boxed is None else boxed
    if raw is None or not str(raw).strip():
        return None
    raw = str(raw).strip()
    dataset = column("dataset")
    if dataset is None:
        try:
            return get_answer_format("gsm8k").parse_gold(raw), "gsm8k"
        except ValueError:
            return raw, "math500"
    answer_format = get_answer_format(dataset)  # an unknown format is an error, not a skipped row
    try:
        return answer_format.parse_gold(raw), dataset
    except ValueError:
        return None


def _view_from_columns(columns: dict[str, Any], i: int) -> DialogueView | None:
    found = _gold_and_format(columns, i)
    if found is None:
        return None
    gold, dataset = found
    question = columns.get("question")
    problem = Problem(question=str(question[i] if question is not None else ""), gold=gold, dataset=dataset)
    pending_values = columns.get("pending_answer")
    pending = None if pending_values is None else pending_values[i]
    return DialogueView(problem=problem, pending_text=pending, pending_answer=pending,
                        pending_correct=is_correct(pending, problem))
