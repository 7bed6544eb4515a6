r"""Finding where a model's text states its final answer (the part of TRACER §1 that reads proposals).

Models mark a final answer in a handful of ways: a marker phrase ("Final answer:", "The answer is",
"Answer:", "####"), a ``\\boxed{}``, markdown bold, LaTeX math delimiters. The helpers here locate the
marked text; turning it into a number, a LaTeX expression or a letter is the answer formats' job.
Nothing here raises on any string.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

_BOX_START = re.compile(r"\\(?:boxed|fbox)\s*\{")
_FINAL_LINE = re.compile(
    r"(?:\bfinal\s+answer\b|\banswer\s+is\b|\banswer(?=\s*[:=])|^[ \t]*#+[ \t]*answer\b|####)"  # the marker
    r"(?:\s*(?:is\b|:|=))*"  # its separators, all optional: "The final answer is: 5", "Answer = 5"
    r"\s*(.+)",  # the value, up to the end of its line; a leading "-" is a minus sign, never a separator
    re.IGNORECASE | re.MULTILINE,
)
_DASH_MINUS = re.compile(r"(?<![\w.)])[\u2212\u2012\u2013](?=\s*\d)")  # "−5", "–5" (not "10–12")
_MATH_SPAN = re.compile(r"\$\$(.+?)\$\$|(?<!\\)\$(.+?)(?<!\\)\$|\\\((.+?)\\\)|\\\[(.+?)\\\]", re.DOTALL)
_SENTENCE_END = re.compile(r"(?<!\d)\.(?!\d)|\.\s|[;!?]\s|,\s*but\b|\n")  # not a decimal point
_TRAILING_UNIT = re.compile(r"(?<=\S)(?:\s|\\[ ,;!])*\\(?:text|mbox|mathrm)\{\s*[A-Za-z][A-Za-z .]*\}\s*$")
_UNICODE_ROOT = re.compile(r"√\s*(\d+|[A-Za-z])")
_MATH_WORDS = {"sqrt", "pi", "infty", "inf", "sin", "cos", "tan", "log", "ln", "exp"}  # words that are math
_PROSE = re.compile(r"[A-Za-z]{2,}[.,;:!?]*")
_NOT_AN_ANSWER = {"correct", "incorrect", "right", "wrong", "above", "below", "unknown"}  # "this answer is correct"


_UNFINISHED = re.compile(r"(?<![-=])[=+\-/×÷]\s*\$?\s*$")  # not "---" (a rule), not "*" (markdown italics)


def ends_unfinished(text: str) -> bool:
    """Whether ``text`` stops at an operator or ``=``: cut off before its result, so it states no answer."""
    return _UNFINISHED.search(text) is not None


def clean_text(text: str) -> str:
    """``text`` with markdown emphasis removed and Unicode minus signs (U+2212, dashes before digits) as ``-``."""
    text = _DASH_MINUS.sub("-", text.replace("\u2212", "-"))
    return text.replace("**", "").replace("__", "")


def last_boxed(text: str) -> str | None:
    r"""Content of the last ``\\boxed{...}`` (or ``\\fbox{...}``) with balanced braces; None if there is none."""
    closing = _matching_braces(text)
    for match in reversed(list(_BOX_START.finditer(text))):
        open_index = match.end() - 1
        if open_index in closing:
            return text[open_index + 1 : closing[open_index]]
    return None


def _matching_braces(text: str) -> dict[int, int]:
    """Index of each ``{`` that is closed -> index of its ``}``; one pass, so nested boxes stay linear."""
    closing, stack = {}, []
    for i, char in enumerate(text):
        if char == "{":
            stack.append(i)
        elif char == "}" and stack:
            closing[stack.pop()] = i
    return closing


def marked_values(text: str) -> Iterator[str]:
    r"""What follows each final-answer marker, up to the end of its line, the last marker first.

    Markers: "final answer", "... answer is", "answer:" / "answer =", a "### Answer" heading, "####"; separators
    after them (``is``, ``:``, ``=``) are dropped, and the value may start on the next line ("Final answer:\\n42").
    Callers take the first value they can read, so "Final answer: 18. I hope this answer is right." reads 18.
    """
    for match in reversed(list(_FINAL_LINE.finditer(text))):
        value = match.group(1)
        while (inner := _last_match(value)) is not None:  # "Final Answer: The final answer is 5"
            value = inner.group(1)
        if value.strip():
            yield value.strip()


def _last_match(value: str) -> re.Match[str] | None:
    matches = list(_FINAL_LINE.finditer(value))
    return matches[-1] if matches else None


def final_answer_line(text: str) -> str | None:
    """What follows the last final-answer marker (see :func:`marked_values`), or None."""
    return next(marked_values(clean_text(text)), None)


def first_math_span(text: str) -> str | None:
    r"""Content of the first ``$..$``, ``$$..$$``, ``\\(..\\)`` or ``\\[..\\]`` in ``text``, or None."""
    match = _MATH_SPAN.search(text)
    if match is None:
        return None
    return next(group for group in match.groups() if group is not None).strip()


def without_parentheticals(text: str) -> str:
    """``text`` with every innermost ``(...)`` group blanked: "160 (2 hours 40 minutes)" -> "160 "."""
    return re.sub(r"\([^()]*\)", " ", text)


def answer_region(text: str) -> str:
    """The part of ``text`` after a reasoning model's last ``</think>`` (all of it when there is none)."""
    _, sep, tail = text.rpartition("</think>")
    return tail if sep and tail.strip() else text


def first_sentence(text: str) -> str:
    """``text`` up to its first sentence end (not a decimal point), line break or ", but" (a hedge)."""
    return _SENTENCE_END.split(text, maxsplit=1)[0]


def stated_expression(value: str) -> str | None:
    r"""The LaTeX answer a final-answer statement gives, without the words around it, or None.

    "$\\frac{14}{3}$." -> ``\\frac{14}{3}``; "2000 calories" -> ``2000``; "$5\\text{ cm}$" -> ``5``;
    "30°" -> ``30^\\circ``. Reads a box first, then the first math span, then the leading math of the first
    sentence; a lone word (a name, ``even``, ``east``) stays an answer, unless it judges ("... is correct").
    """
    boxed = last_boxed(value)
    if boxed is not None:
        return boxed.strip() or None
    answer = first_math_span(value)
    if answer is None:
        sentence = first_sentence(value).replace("\\$", "").replace("$", "")  # LaTeX "\$18" or plain "$18.50"
        answer = _leading_math(sentence)
        word = sentence.strip()
        if not answer and re.fullmatch(r"[A-Za-z]+", word) and word.lower() not in _NOT_AN_ANSWER:
            answer = word
    answer = _UNICODE_ROOT.sub(r"\\sqrt{\1}", answer.replace("\\$", "").replace("°", "^\\circ"))
    answer = _TRAILING_UNIT.sub("", answer.replace("π", "\\pi"))
    return answer.strip().rstrip(".,;:").strip() or None


def _leading_math(sentence: str) -> str:
    kept = []
    for token in sentence.split():
        if _PROSE.fullmatch(token) and token.strip(".,;:!?").lower() not in _MATH_WORDS:
            break
        kept.append(token)
    return " ".join(kept)
