import pytest

from tracer_pl.grading.text import (
    answer_region,
    clean_text,
    ends_unfinished,
    first_math_span,
    first_sentence,
    last_boxed,
    marked_values,
    stated_expression,
    without_parentheticals,
)


@pytest.mark.parametrize(
    ("text", "unfinished"),
    [
        ("So 16 - 3 - 4 =", True),
        ("The product is $u_1u_2u_3 = $", True),
        ("5 +", True),
        ("The total is 5.", False),
        ("The total is *5*", False),  # markdown italics, not a multiplication
        ("Total: 5\n---", False),  # a markdown rule
    ],
)
def test_ends_unfinished(text, unfinished):
    assert ends_unfinished(text) is unfinished


def test_marked_values_last_marker_first_and_separators_dropped():
    text = "Answer: 3\nThe final answer is: -4\n#### 5\nSo the answer is = 6"
    assert list(marked_values(text)) == ["6", "5", "-4", "3"]
    assert list(marked_values("Final Answer: The final answer is 7. I hope it is correct.")) == [
        "7. I hope it is correct."
    ]  # the inner marker's value
    assert list(marked_values("Final answer:\n\n42")) == ["42"]  # the value on the next line
    assert list(marked_values("### Answer\nB. text")) == ["B. text"]
    assert list(marked_values("To answer this we add.")) == []  # "answer" alone is no marker


@pytest.mark.parametrize(
    "text, expected",
    [
        ("\u22125", "-5"),
        ("is \u20135 and pages 10\u201312", "is -5 and pages 10\u201312"),  # a dash after a digit is a range
        ("**Final answer: 4**", "Final answer: 4"),
    ],
)
def test_clean_text(text, expected):
    assert clean_text(text) == expected


def test_last_boxed_balances_braces_and_stays_linear():
    assert last_boxed("\\boxed{\\frac{1}{2}} then \\fbox {3}") == "3"
    assert last_boxed("\\boxed{1} \\boxed{2") == "1"  # the last one is not closed
    assert last_boxed("\\boxedx{1}") is None
    assert last_boxed("\\boxed{" * 20000) is None  # nested, never closed: one pass, not quadratic


def test_small_helpers():
    assert answer_region("<think>the answer is 3</think>\nIt is 4.") == "\nIt is 4."
    assert answer_region("<think>the answer is 3</think>  ") == "<think>the answer is 3</think>  "  # nothing after
    assert first_math_span("so $x$ and $y$") == "x"
    assert first_math_span("costs \\$5 or \\(\\frac{1}{2}\\)") == "\\frac{1}{2}"
    assert first_sentence("3.5 apples. Then 4") == "3.5 apples"
    assert first_sentence("12, but it might be 13") == "12"
    assert without_parentheticals("18 (9 eggs (at $2))") == "18 (9 eggs  )"  # innermost groups


@pytest.mark.parametrize(
    "value, expected",
    [
        ("$\\frac{14}{3}$.", "\\frac{14}{3}"),
        ("2000 calories", "2000"),
        ("$5\\text{ cm}$", "5"),
        ("30\u00b0", "30^\\circ"),
        ("\u221a51", "\\sqrt{51}"),
        ("(3, \u03c0/2).", "(3, \\pi/2)"),
        ("\\$18.50", "18.50"),
        ("sqrt(117) units", "sqrt(117)"),
        ("Evelyn.", "Evelyn"),
        ("odd", "odd"),  # MATH's word answers (even/odd, east, ellipse) are lower case
        ("east.", "east"),
        ("correct.", None),  # a judging word is not an answer ("I hope this answer is correct.")
        ("right", None),
    ],
)
def test_stated_expression(value, expected):
    assert stated_expression(value) == expected
