r"""Reading plain numbers out of answer text (GSM8K-style answers, TRACER §5).

A number may carry a minus sign, thousands commas (``1,234``), decimals, a simple fraction (``3/4``) or a
LaTeX one (``\\frac{3}{4}``); currency signs, ``\\text{}`` units and percent signs around it are ignored.
Numbers are returned in a canonical decimal form (``"1,234.50"`` -> ``"1234.5"``). Nothing here raises on
model text.
"""

from __future__ import annotations

import re
from decimal import Context, Decimal, InvalidOperation

from tracer_pl.grading.text import clean_text, ends_unfinished, first_sentence, last_boxed, without_parentheticals

_NUMBER = re.compile(r"-?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?:/\d+)?|-?\.\d+")
_MAX_DIGITS = 40  # longer numbers are not answers anyone means; refusing them keeps Decimal cheap
_LATEX_NOISE = re.compile(r"\\(?:text|mathrm|mbox)\{[^{}]*\}|\\[,!;: ]|\{,\}|\\\$|\\%|[$€£¥]")
_LATEX_FRACTION = re.compile(r"\\[dt]?frac\{(-?\d+)\}\{(\d+)\}")
_BELOW_ZERO = re.compile(r"\bbelow\s+(?:zero|0)\b", re.IGNORECASE)  # "12 degrees below zero" is -12


def _plain(text: str) -> str:
    text = _LATEX_NOISE.sub("", text.replace("{,}", ","))
    return _LATEX_FRACTION.sub(r"\1/\2", text)


def normalize_number(text: str) -> str | None:
    r"""A canonical decimal string for the one number in ``text`` (``"1,234.50"`` -> ``"1234.5"``), else None.

    Accepts thousands commas, ``$`` and other units around it, a trailing period, a percent sign
    (``50%`` -> ``50``), simple fractions (``3/4`` -> ``0.75``) and surrounding ``\\boxed{}``. Returns None
    for text with no number, for more than one number, and for numbers over 40 digits.
    """
    boxed = last_boxed(text)
    candidate = _plain(clean_text(boxed if boxed is not None else text))
    numbers = _NUMBER.findall(candidate)
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
    value = value.normalize(Context(prec=_MAX_DIGITS))  # every digit kept (the default context rounds to 28)
    text = format(value, "f")
    return "0" if text in ("-0", "0") else text


def last_number(text: str) -> str | None:
    """The canonical form of the last number in ``text``, or None.

    A text that stops at an operator or ``=`` was cut off before its result: it gives no number.
    """
    text = _plain(clean_text(text))
    if ends_unfinished(text):
        return None
    for token in reversed(_NUMBER.findall(text)):
        value = _canonical(token)
        if value is not None:
            return value
    return None


def stated_number(value: str) -> str | None:
    """The number a final-answer statement gives: "18 (9 eggs at $2 each)" -> 18, "5 + 3 = 8 apples" -> 8.

    Reads a box in ``value`` if there is one; otherwise the first sentence, ignoring parentheticals: the
    first number after its last ``=``. A hedge ("12, but it might be 13") reads as the stated 12, and
    "12 degrees below zero" as -12.
    """
    boxed = last_boxed(value)
    if boxed is not None:
        return normalize_number(boxed) or last_number(boxed)
    plain = _plain(clean_text(value))
    for part in (without_parentheticals(plain), plain):
        sentence = first_sentence(part).rsplit("=", 1)[-1]
        numbers = _NUMBER.findall(sentence)
        if numbers:
            number = _canonical(numbers[0])
            if number and _BELOW_ZERO.search(sentence) and not number.startswith("-") and number != "0":
                number = "-" + number
            return number
    return None


def gsm8k_gold(solution: str) -> str:
    """The gold number of a GSM8K ``answer`` field: the text after ``####``, normalised.

    Raises:
        ValueError: when there is no ``####`` or what follows it is not a single number.
    """
    if "####" not in solution:
        raise ValueError(f"expected '#### <number>' at the end of the solution, found no '####' in {solution[-60:]!r}")
    tail = solution.rsplit("####", 1)[1].strip()
    value = normalize_number(tail)
    if value is None:
        raise ValueError(f"expected a number after '####', found {tail[:60]!r}")
    return value
