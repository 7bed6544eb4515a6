"""Reading final answers out of model text and grading them, per benchmark (TRACER §1 and §5).

Every format answers two questions: :meth:`AnswerFormat.extract` (what answer does this text give? None when
there is none) and :meth:`AnswerFormat.equivalent` (does it match the gold answer?). Neither ever raises on
model output: an unparseable or absurd answer is "no answer", which the rewards score as wrong.

Formats are looked up by name in a registry (:func:`get_answer_format`); users add their own with
:func:`register_answer_format`.
"""

from __future__ import annotations

import hashlib
import math
import random
import re
import threading
from abc import ABC, abstractmethod
from collections.abc import Sequence
from decimal import Decimal, InvalidOperation

from tracer_pl.errors import ConfigError

# ---------------------------------------------------------------------- text helpers

_BOX_COMMAND = re.compile(r"\\(?:boxed|fbox)\s*")
_FINAL_LINE = re.compile(r"(?:final\s+answer|the\s+answer\s+is|answer\s*:)\s*[:\-]?\s*(.+)", re.IGNORECASE)


def last_boxed(text: str) -> str | None:
    r"""Content of the last ``\\boxed{...}`` (or ``\\fbox{...}``) with balanced braces; None if there is none."""
    start = max(text.rfind("\\boxed"), text.rfind("\\fbox"))
    while start != -1:
        brace = text.find("{", start)
        if brace != -1 and _BOX_COMMAND.fullmatch(text[start:brace]):
            content = _balanced(text, brace)
            if content is not None:
                return content
        start = max(text.rfind("\\boxed", 0, start), text.rfind("\\fbox", 0, start))
    return None


def _balanced(text: str, open_index: int) -> str | None:
    depth = 0
    for i in range(open_index, len(text)):
        if text[i] == "{":
            depth += 1
        elif text[i] == "}":
            depth -= 1
            if depth == 0:
                return text[open_index + 1 : i]
    return None


def final_answer_line(text: str) -> str | None:
    """What follows the last "Final answer:" / "The answer is" / "Answer:" marker, up to the end of its line."""
    matches = list(_FINAL_LINE.finditer(text))
    if not matches:
        return None
    value = matches[-1].group(1).strip()
    return value or None


# ---------------------------------------------------------------------- numbers (GSM8K)

_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?(?:/\d+)?|-?\.\d+")
_MAX_DIGITS = 40  # longer numbers are not answers anyone means; refusing them keeps Decimal cheap


def normalize_number(text: str) -> str | None:
    r"""A canonical decimal string for the number in ``text`` (``"1,234.50"`` -> ``"1234.5"``), else None.

    Accepts commas as thousands separators, ``$`` and other units around it, a trailing period, a percent
    sign (``50%`` -> ``50``), simple fractions (``3/4`` -> ``0.75``) and surrounding ``\\boxed{}``. Returns None
    for text with no number, for more than one distinct number, and for numbers over 40 digits.
    """
    boxed = last_boxed(text)
    candidate = boxed if boxed is not None else text
    candidate = re.sub(r"\\(?:text|mathrm)\{[^{}]*\}|\\[,!;]|\\\$|[$€£]", " ", candidate)
    candidate = re.sub(r"\\d?frac\{(-?\d+)\}\{(\d+)\}", r"\1/\2", candidate)
    numbers = _NUMBER.findall(candidate.replace("\u2212", "-"))
    if len(numbers) != 1:
        return None
    return _canonical(numbers[0])


def _canonical(token: str) -> str | None:
    token = token.replace(",", "")
    if len(token) > _MAX_DIGITS:
        return None
    try:
        if "/" in token:
            numerator, denominator = token.split("/")
            if Decimal(denominator) == 0:
                return None
            value = Decimal(numerator) / Decimal(denominator)
        else:
            value = Decimal(token)
    except (InvalidOperation, ValueError):
        return None
    if not value.is_finite():
        return None
    value = value.normalize()
    text = format(value, "f")
    return "0" if text in ("-0", "0") else text


def last_number(text: str) -> str | None:
    """The canonical form of the last number in ``text``, or None."""
    numbers = _NUMBER.findall(text.replace("\u2212", "-"))
    for token in reversed(numbers):
        value = _canonical(token)
        if value is not None:
            return value
    return None


def gsm8k_gold(solution: str) -> str:
    """The gold number of a GSM8K ``answer`` field: the text after ``####``, normalised.

    Raises:
        ValueError: when there is no ``####`` or what follows it is not a single number.
    """
    if "####" not in solution:
        raise ValueError(f"expected '#### <number>' at the end of the solution, found no '####' in {solution[-60:]!r}")
    tail = solution.rsplit("####", 1)[1].strip()
    value = clean_number(tail)
    if value is None:
        raise ValueError(f"expected a number after '####', found {tail[:60]!r}")
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
    return _canonical(candidate.lstrip("+"))


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
        r"""Priority: the "Final answer:" line, then the last ``\\boxed{}``, then ``####``, then the last number."""
        if not text:
            return None
        line = final_answer_line(text)
        if line is not None:
            value = normalize_number(line) or last_number(line)
            if value is not None:
                return value
        boxed = last_boxed(text)
        if boxed is not None and (value := normalize_number(boxed)) is not None:
            return value
        if "####" in text and (value := last_number(text.rsplit("####", 1)[1])) is not None:
            return value
        return last_number(text)

    def equivalent(self, prediction: str, gold: str) -> bool:
        try:
            p, g = float(prediction), float(gold)
        except (TypeError, ValueError, OverflowError):
            return False
        if not (math.isfinite(p) and math.isfinite(g)):
            return False
        return abs(p - g) <= self.tolerance

    def parse_gold(self, raw: str) -> str:
        value = clean_number(str(raw)) if raw is not None else None
        if value is None:
            raise ValueError(f"expected a number as the gold answer (like 42, -3.5, 1,234), found {raw!r}")
        return value


_LATEX_NOISE = re.compile(r"\\left|\\right|\\!|\\,|\\;|\\ |\$|\s")


class MathFormat(AnswerFormat):
    """MATH-style LaTeX answers, graded with math-verify (gold first) after a cheap exact comparison."""

    name = "math500"
    answer_instruction = "End your solution with a last line of the form 'Final answer: \\boxed{<answer>}'."

    def extract(self, text: str) -> str | None:
        if not text:
            return None
        boxed = last_boxed(text)
        if boxed is not None and boxed.strip():
            return boxed.strip()
        line = final_answer_line(text)
        if line is not None:
            return line.strip().rstrip(".").strip("$ ") or None
        return None

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


def _math_verify(gold: str, prediction: str) -> bool:
    """math-verify, gold first; any failure inside it means "not equivalent".

    Its signal-based timeouts only work on the main thread, so off it they are switched off (``None``).
    """
    try:
        from math_verify import parse, verify

        main = threading.current_thread() is threading.main_thread()
        timeout = 5 if main else None
        gold_parsed = parse(_boxed_if_bare(gold), parsing_timeout=timeout)
        pred_parsed = parse(_boxed_if_bare(prediction), parsing_timeout=timeout)
        if not gold_parsed or not pred_parsed:
            return False
        return bool(verify(gold_parsed, pred_parsed, timeout_seconds=timeout))
    except Exception:  # noqa: BLE001 - model output must never crash grading
        return False


def _boxed_if_bare(answer: str) -> str:
    return answer if "\\boxed" in answer else f"\\boxed{{{answer}}}"


_LETTER_PATTERNS = [
    re.compile(r"(?:final\s+answer|the\s+answer\s+is|answer\s*:)\s*[:\-]?\s*\(?\**([A-D])\b", re.IGNORECASE),
    re.compile(r"\\boxed\{\s*\(?([A-D])\)?\s*\}"),
    re.compile(r"^\s*\(?([A-D])[).]?\s*$", re.MULTILINE),
    re.compile(r"\(([A-D])\)"),
]


class ChoiceFormat(AnswerFormat):
    """Multiple-choice answers A-D (GPQA-Diamond)."""

    name = "gpqa_diamond"
    answer_instruction = "End your solution with a last line of the form 'Final answer: <letter>' (A, B, C or D)."

    def extract(self, text: str) -> str | None:
        if not text:
            return None
        for pattern in _LETTER_PATTERNS:
            matches = pattern.findall(text)
            if matches:
                return matches[-1].upper()
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
