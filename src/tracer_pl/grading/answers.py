"""Reading final answers out of model text and grading them, per benchmark (TRACER §1 and §5).

Every format answers two questions: :meth:`AnswerFormat.extract` (what answer does this text give? None when
there is none) and :meth:`AnswerFormat.equivalent` (does it match the gold answer?). Neither ever raises on
model output: an unparseable or absurd answer is "no answer", which the rewards score as wrong.

Formats are looked up by name in a registry (:func:`get_answer_format`); users add their own with
:func:`register_answer_format`.
"""

from __future__ import annotations

import hashlib
import random
import re
import threading
from abc import ABC, abstractmethod
from collections.abc import Sequence
from decimal import Decimal, InvalidOperation, localcontext

from tracer_pl.errors import ConfigError
from tracer_pl.grading.numbers import gsm8k_gold, last_number, normalize_number, stated_number
from tracer_pl.grading.text import (
    answer_region,
    clean_text,
    ends_unfinished,
    final_answer_line,
    last_boxed,
    marked_values,
    stated_expression,
)

__all__ = [  # the text and number helpers live in answer_text.py and numbers.py; they stay importable here
    "AnswerFormat",
    "ChoiceFormat",
    "ExactFormat",
    "MathFormat",
    "NumberFormat",
    "extract_answer",
    "final_answer_line",
    "format_choices",
    "get_answer_format",
    "gsm8k_gold",
    "is_equivalent",
    "last_boxed",
    "last_number",
    "normalize_number",
    "register_answer_format",
    "shuffle_choices",
    "stated_letter",
]

# ---------------------------------------------------------------------- formats


class AnswerFormat(ABC):
    """How a benchmark's answers are asked for, read and graded.

    Subclass it and :func:`register_answer_format` an instance to grade a new kind of answer.
    """

    name: str
    answer_instruction: str
    """One sentence the proposer's prompt ends with, saying how to give the final answer."""

    @abstractmethod
    def extract(self, text: str) -> str | None:
        """The final answer given by ``text``, or None. Must not raise."""

    @abstractmethod
    def equivalent(self, prediction: str, gold: str) -> bool:
        """Whether ``prediction`` (an output of :meth:`extract`) matches ``gold``. Must not raise."""

    def parse_gold(self, raw: str) -> str:
        """Validate and normalise a dataset's gold answer; raise ValueError saying what was expected."""
        if not isinstance(raw, str) or not raw.strip():
            raise ValueError(f"expected a non-empty gold answer string, found {raw!r}")
        return raw.strip()


class NumberFormat(AnswerFormat):
    """GSM8K-style numeric answers, equal within an absolute ``tolerance`` (cents still count: 18.01 != 18)."""

    name = "gsm8k"
    answer_instruction = "End your solution with a last line of the form 'Final answer: <number>'."

    def __init__(self, tolerance: float = 1e-3) -> None:
        self.tolerance = tolerance

    def extract(self, text: str) -> str | None:
        r"""The stated number, else the last box, else the last number.

        Priority: the last marker ("Final answer:", "The answer is", "Answer:", "####") that states a
        number (see :func:`~tracer_pl.grading.numbers.stated_number`), then the last ``\\boxed{}``, then the last
        number of the text. After a ``</think>``, only the text after it counts.
        """
        text = answer_region(clean_text(text))
        for value in marked_values(text):
            if (number := stated_number(value)) is not None:
                return number
        boxed = last_boxed(text)
        if boxed is not None and (number := normalize_number(boxed) or last_number(boxed)) is not None:
            return number
        return last_number(text)

    def equivalent(self, prediction: str, gold: str) -> bool:
        """Whether the two numbers differ by at most ``tolerance``, computed exactly in decimal.

        Floats would round numbers of more than 15 significant digits, so that ``12345678901234567891`` would
        equal ``12345678901234567890``; decimal arithmetic keeps every digit.
        """
        p, g = exact_number(prediction), exact_number(gold)
        if p is None or g is None:
            return False
        with localcontext() as context:
            context.prec = 2 * _EXACT_DIGITS  # the difference of two such numbers, without rounding
            return abs(p - g) <= Decimal(repr(float(self.tolerance)))

    def parse_gold(self, raw: str) -> str:
        value = clean_number(str(raw)) if raw is not None else None
        if value is None:
            raise ValueError(f"expected a number as the gold answer (like 42, -3.5, 1,234), found {raw!r}")
        return value


_EXACT_DIGITS = 1000
"""Numbers whose decimal exponent is beyond this are no answer (``1e999999999`` would cost time, not precision)."""


def exact_number(text: object) -> Decimal | None:
    """``text`` as an exact finite :class:`~decimal.Decimal` (``"1e20"``, ``" 0.00005 "``, ``"-3"``), else None."""
    try:
        value = Decimal(str(text).strip())
    except (InvalidOperation, ValueError, TypeError):
        return None
    if not value.is_finite() or abs(value.adjusted()) > _EXACT_DIGITS or len(value.as_tuple().digits) > _EXACT_DIGITS:
        return None
    return value


_CLEAN_NUMBER = re.compile(r"[-+]?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?|[-+]?\.\d+|-?\d+/\d+")


def clean_number(text: str) -> str | None:
    r"""The canonical form of ``text`` when all of it is one number, else None: the strict reading of a gold answer.

    Allowed around the number: spaces, a leading ``$``, a trailing period, ``\boxed{}``. Commas must group
    thousands (``1,234``). Unlike :func:`normalize_number`, a number inside other text is refused (``H2O``,
    ``Python 3``, ``1,2,3``, ``12,34``), so such a gold is reported as a bad row instead of becoming a wrong number.
    """
    boxed = last_boxed(text)
    candidate = (boxed if boxed is not None and text.strip().startswith("\\boxed") else text).strip()
    candidate = candidate.replace("\u2212", "-").removeprefix("$").strip().removesuffix(".")
    if not _CLEAN_NUMBER.fullmatch(candidate):
        return None
    return normalize_number(candidate.lstrip("+"))


_LATEX_NOISE = re.compile(r"\\left|\\right|\\!|\\,|\\;|\\ |\$|\s")


class MathFormat(AnswerFormat):
    """MATH-style LaTeX answers, graded with math-verify (gold first) after a cheap exact comparison."""

    name = "math500"
    answer_instruction = "End your solution with a last line of the form 'Final answer: \\boxed{<answer>}'."

    def extract(self, text: str) -> str | None:
        r"""The boxed answer, else the stated expression, else math-verify's final expression.

        Priority: the last non-empty ``\\boxed{}``, then the last marker that states an expression (see
        :func:`~tracer_pl.grading.text.stated_expression`), then math-verify's own extraction of the final
        expression of the text. After a ``</think>``, only the text after it counts.
        """
        text = answer_region(clean_text(text))
        boxed = last_boxed(text)
        if boxed is not None and boxed.strip():
            return boxed.strip()
        for value in marked_values(text):
            if (answer := stated_expression(value)) is not None:
                return answer
        return _final_expression(text)

    def equivalent(self, prediction: str, gold: str) -> bool:
        if prediction is None:
            return False
        if _squash(prediction) == _squash(gold):
            return True
        if _too_costly(prediction) or _too_costly(gold):
            return False  # sympy would try to build the number; off the main thread nothing would stop it
        return _math_verify(gold, prediction)


def _squash(latex: str) -> str:
    text = re.sub(r"\\text\{([^{}]*)\}", r"\1", latex)
    text = text.replace("\\dfrac", "\\frac").replace("\\tfrac", "\\frac")
    return _LATEX_NOISE.sub("", text).rstrip(".")


_HUGE_POWER = re.compile(r"\^\s*\{?\s*[-+(]?\s*\d{4,}|\^\s*\{[^{}]*\^|\^\s*\d+\s*\^|\d{3,}\s*!|\d\s*!\s*!")


def _too_costly(latex: str) -> bool:
    """Whether ``latex`` needs astronomically large integers to evaluate.

    Power towers, 4-digit exponents, n! with n >= 100 and double factorials count; in practice they are never
    equivalent to a different-looking gold answer.
    """
    return len(latex) > 2000 or _HUGE_POWER.search(latex) is not None


def _timeout() -> int | None:
    """math-verify's timeouts use signals, which only work on the main thread: off it they are switched off."""
    return 5 if threading.current_thread() is threading.main_thread() else None


_TAIL_CHARS = 1000  # the final expression is near the end; parsing a whole long solution costs seconds


def _final_expression(text: str) -> str | None:
    """The final expression math-verify's default extraction (LaTeX, then plain expressions) finds, or None."""
    tail = text[-_TAIL_CHARS:]
    if _too_costly(tail) or ends_unfinished(tail):  # cut off before its result: no answer
        return None
    try:
        from math_verify import parse

        found = parse(tail, parsing_timeout=_timeout())
    except Exception:  # noqa: BLE001 - model output must never crash extraction
        return None
    strings = [item for item in found if isinstance(item, str) and item.strip()]
    return strings[-1].strip() if strings else None


def _math_verify(gold: str, prediction: str) -> bool:
    """math-verify, gold first; any failure inside it means "not equivalent" (timeouts: see :func:`_timeout`)."""
    try:
        from math_verify import parse, verify

        timeout = _timeout()
        gold_parsed = parse(_boxed_if_bare(gold), parsing_timeout=timeout)
        pred_parsed = parse(_boxed_if_bare(prediction), parsing_timeout=timeout)
        if not gold_parsed or not pred_parsed:
            return False
        return bool(verify(gold_parsed, pred_parsed, timeout_seconds=timeout))
    except Exception:  # noqa: BLE001 - model output must never crash grading
        return False


def _boxed_if_bare(answer: str) -> str:
    return answer if "\\boxed" in answer else f"\\boxed{{{answer}}}"


_LETTER_STATEMENTS = [  # how a final-answer statement starts when it gives a letter
    re.compile(r"(?i:option|choice)?\s*\(([A-Da-d])\)"),  # "(B)", "option (c)"
    re.compile(r"(?i:option|choice)?\s*([A-D])(?![\w'])"),  # "B", "B) 4.2 eV", "B."
    re.compile(r"(?i:option|choice)?\s*([a-d])\s*(?:[.)]|$)"),  # "c", "c." (not the article in "a mixture")
]
_LETTER_PATTERNS = [  # without a marker, from the most to the least explicit; the last match of each counts
    re.compile(r"(?i:option|choice)\s+\(?([A-D])\)?\s+(?i:is\s+(?:the\s+)?(?:correct|right|best))"),
    re.compile(r"(?i:(?:correct|right|best)\s+(?:option|choice)\s+is)\s*:?\s*(\([A-Da-d]\)|[A-D]\b)"),
    re.compile(r"\\boxed\{\s*(?:\\text\{)?\s*\(?([A-D])\)?"),
    re.compile(r"^\s*\(?([A-D])[).]?\s*$", re.MULTILINE),  # a line holding only the letter
    re.compile(r"\(([A-D])\)"),
]


def stated_letter(value: str) -> str | None:
    r"""The letter A-D a final-answer statement starts with ("B) 4.2 eV", "(c)", "$\\boxed{D}$"), or None."""
    boxed = last_boxed(value)
    value = re.sub(r"\\(?:text|textbf|mathrm)\{([^{}]*)\}", r"\1", value if boxed is None else boxed)
    value = value.replace("$", "").replace("\\(", "").replace("\\)", "").strip()
    for pattern in _LETTER_STATEMENTS:
        if (match := pattern.match(value)) is not None:
            return match.group(1).upper()
    return None


class ChoiceFormat(AnswerFormat):
    """Multiple-choice answers A-D (GPQA-Diamond)."""

    name = "gpqa_diamond"
    answer_instruction = "End your solution with a last line of the form 'Final answer: <letter>' (A, B, C or D)."

    def extract(self, text: str) -> str | None:
        """The stated letter, else the most explicit letter found without a marker.

        Priority: the last marker that states a letter, then "option B is correct", a box, a line holding
        only a letter, the last "(B)". After a ``</think>``, only the text after it counts.
        """
        text = answer_region(clean_text(text))
        for value in marked_values(text):
            if (letter := stated_letter(value)) is not None:
                return letter
        for pattern in _LETTER_PATTERNS:
            matches = pattern.findall(text)
            if matches:
                return matches[-1].strip("()").upper()
        return None

    def equivalent(self, prediction: str, gold: str) -> bool:
        return prediction is not None and prediction.strip().upper() == gold.strip().upper()

    def parse_gold(self, raw: str) -> str:
        letter = str(raw).strip().upper()
        if letter not in ("A", "B", "C", "D"):
            raise ValueError(f"expected a gold letter A-D, found {raw!r}")
        return letter


class ExactFormat(AnswerFormat):
    """Non-numeric short answers compared as text (case and surrounding space ignored)."""

    name = "exact"
    answer_instruction = "End your solution with a last line of the form 'Final answer: <answer>'."

    def extract(self, text: str) -> str | None:
        line = final_answer_line(text)
        if line is None:
            lines = [x for x in text.strip().splitlines() if x.strip()]
            line = lines[-1] if lines else None
        return line.strip().strip(".").strip() or None if line else None

    def equivalent(self, prediction: str, gold: str) -> bool:
        number_p, number_g = normalize_number(prediction), clean_number(gold)  # "Python 3" is text, not 3
        if number_p is not None and number_g is not None:
            return NumberFormat().equivalent(number_p, number_g)
        return prediction.strip().casefold() == gold.strip().casefold()


def shuffle_choices(correct: str, incorrect: Sequence[str], seed: int | str) -> tuple[list[str], str]:
    """Order the options with a per-question seed; return them (A first) and the gold letter.

    The seed is hashed with SHA-256, so the order is the same in every process and Python version.
    """
    options = [correct, *incorrect]
    digest = hashlib.sha256(str(seed).encode()).digest()
    order = list(range(len(options)))
    random.Random(int.from_bytes(digest[:8], "big")).shuffle(order)
    shuffled = [options[i] for i in order]
    return shuffled, "ABCDEFGH"[order.index(0)]


def format_choices(question: str, choices: Sequence[str]) -> str:
    """The question followed by one ``A. option`` line per choice."""
    lines = [f"{letter}. {choice.strip()}" for letter, choice in zip("ABCDEFGH", choices)]
    return question.strip() + "\n\n" + "\n".join(lines)


# ---------------------------------------------------------------------- registry

_REGISTRY: dict[str, AnswerFormat] = {}


def register_answer_format(fmt: AnswerFormat, *, overwrite: bool = False) -> AnswerFormat:
    """Make ``fmt`` available under ``fmt.name``; refuses to replace a format unless ``overwrite``."""
    if not isinstance(fmt, AnswerFormat) or not isinstance(getattr(fmt, "name", None), str) or not fmt.name:
        raise TypeError(f"register_answer_format expects an AnswerFormat instance with a name, got {fmt!r}")
    if fmt.name in _REGISTRY and not overwrite:
        raise ValueError(f"an answer format named {fmt.name!r} is registered already; pass overwrite=True")
    _REGISTRY[fmt.name] = fmt
    return fmt


def get_answer_format(name: str) -> AnswerFormat:
    """The registered format ``name``; a ConfigError lists the known names otherwise."""
    try:
        return _REGISTRY[name]
    except KeyError:
        known = ", ".join(sorted(_REGISTRY))
        raise ConfigError(f"unknown answer format {name!r}; known formats: {known}") from None


def extract_answer(text: str | None, dataset: str) -> str | None:
    """The final answer in ``text`` under ``dataset``'s format, or None ("no answer"). Never raises on text."""
    fmt = get_answer_format(dataset)
    if not isinstance(text, str):
        return None
    try:
        return fmt.extract(text)
    except Exception:  # noqa: BLE001 - a user format's bug on odd text must not end a training run
        return None


def is_equivalent(prediction: str | None, gold: str, dataset: str) -> bool:
    """Whether ``prediction`` matches ``gold`` under ``dataset``'s format; False for no answer."""
    fmt = get_answer_format(dataset)
    if prediction is None:
        return False
    try:
        return bool(fmt.equivalent(prediction, gold))
    except Exception:  # noqa: BLE001
        return False


for _fmt in (NumberFormat(), MathFormat(), ChoiceFormat(), ExactFormat()):
    register_answer_format(_fmt)
