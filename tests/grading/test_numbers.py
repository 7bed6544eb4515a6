import pytest

from tracer_pl.grading.numbers import last_number, normalize_number, stated_number


@pytest.mark.parametrize(
    "value, expected",
    [
        ("-10.", "-10"),
        ("18 (9 eggs at $2 each)", "18"),
        ("(-5)", "-5"),  # only a parenthetical: read inside it
        ("5 + 3 = 8 apples", "8"),
        ("12, but it might be 13", "12"),
        ("$1,234.50 in total", "1234.5"),
        ("3, 4 and 5", "3"),
        ("\\frac{3}{4} of a cup", "0.75"),
        ("$\\boxed{18}$ dollars (9 x 2)", "18"),
        ("12 degrees below zero", "-12"),
        ("-12 degrees, i.e. below zero", "-12"),  # already negative: not flipped again
        ("0 below zero", "0"),
        ("no number", None),
    ],
)
def test_stated_number(value, expected):
    assert stated_number(value) == expected


def test_last_number_and_cut_off_text():
    assert last_number("first 12, then 1,000,000.") == "1000000"
    assert last_number("So 16 - 3 - 4 =") is None  # stopped before the result
    assert last_number("So 16 - 3 -") is None
    assert last_number("answer 0.50") == "0.5"


def test_normalize_number_needs_exactly_one_number():
    assert normalize_number("1{,}234") == "1234"  # LaTeX thousands separator
    assert normalize_number("1\\,234") == "1234"
    assert normalize_number("-$5") == "-5"
    assert normalize_number("3,4") is None  # not a thousands group: two numbers
    assert normalize_number("5/0") is None
