"""Numeric golds graded exactly: JSON numbers read as written, and numbers of many digits compared digit by digit.

Every expected grade is derived here with Python's integers and fractions (exact), independently of the grader.
"""

from decimal import Decimal
from fractions import Fraction

import pytest

from tracer_pl.data.sources import load_problems
from tracer_pl.grading.answers import is_equivalent

TOLERANCE = Fraction(1, 1000)  # the numeric format's documented absolute tolerance


def exactly_within_tolerance(prediction: str, gold: str) -> bool:
    """The grade by definition: |p - g| <= 1/1000, in exact rational arithmetic."""
    return abs(Fraction(prediction) - Fraction(gold)) <= TOLERANCE


@pytest.mark.parametrize("prediction, gold", [
    ("12345678901234567891", "12345678901234567890"),  # differ in the 20th digit: a float sees one number
    ("12345678901234567890", "12345678901234567890"),
    ("100000000000000000001", "100000000000000000000"),
    ("9007199254740993", "9007199254740992"),  # 2**53 + 1: the first integer a float cannot hold
    ("0.00005", "0.00005"),
    ("1000000.0005", "1000000"),  # within the tolerance, also for large numbers
    ("1000000.0011", "1000000"),
    ("18.01", "18"),
    ("-7", "7"),
    ("123456789012345678901234567890.5", "123456789012345678901234567890.5"),
    ("123456789012345678901234567890.5", "123456789012345678901234567891.5"),
])
@pytest.mark.parametrize("answer_format", ["gsm8k", "exact"])
def test_numbers_are_graded_exactly_whatever_their_length(prediction, gold, answer_format):
    assert is_equivalent(prediction, gold, answer_format) == exactly_within_tolerance(prediction, gold)


@pytest.mark.parametrize("literal, written", [
    ("0.00005", "0.00005"),
    ("1e20", "100000000000000000000"),
    ("1E+20", "100000000000000000000"),
    ("2.5e-3", "0.0025"),
    ("12345678901234567890", "12345678901234567890"),
    ("123456789012345678.25", "123456789012345678.25"),
    ("-0.000001", "-0.000001"),
])
def test_json_number_golds_are_read_as_the_number_written(tmp_path, literal, written):
    path = tmp_path / "numbers.jsonl"
    path.write_text(f'{{"question": "q", "gold": {literal}}}\n')
    (problem,) = load_problems(str(path))
    assert problem.dataset == "gsm8k"
    assert Fraction(problem.gold) == Fraction(written)  # the very number in the file, not a float near it
    assert is_equivalent(written, problem.gold, problem.dataset)  # the right answer, written out, is right
    wrong = format(Decimal(written) + 1, "f")  # off by one, exactly
    assert Fraction(wrong) - Fraction(written) == 1 and not is_equivalent(wrong, problem.gold, problem.dataset)

def test_a_json_file_holds_its_numbers_exactly_too(tmp_path):
    path = tmp_path / "golds.json"
    path.write_text('{"data": [{"question": "a", "gold": 0.00005}, {"question": "b", "gold": 1e20}, '
                    '{"question": "c", "gold": 12345678901234567890.5}]}')
    assert [Fraction(p.gold) for p in load_problems(str(path))] == [
        Fraction(5, 100000), Fraction(10**20), Fraction(24691357802469135781, 2)]


def test_a_float_that_may_not_be_what_the_file_says_is_a_bad_row_not_a_wrong_gold(tmp_path):
    """Parquet keeps numbers as binary floats: past 15 significant digits the float may not be what was meant."""
    import datasets

    from tracer_pl.data.sources import BadRows

    path = tmp_path / "golds.parquet"
    datasets.Dataset.from_list([{"question": "a", "gold": 0.00005}, {"question": "b", "gold": 0.1 + 0.2},
                                {"question": "c", "gold": 2.5e20}]).to_parquet(str(path))
    bad = BadRows()
    problems = list(load_problems(str(path), on_bad_row="skip", bad_rows=bad))
    assert [Fraction(p.gold) for p in problems] == [Fraction(5, 100000), Fraction(25 * 10**19)]
    assert len(bad) == 1 and "golds.parquet row 2: field 'gold' is the floating-point number 0.30000000000000004" in (
        bad.reasons[0])


def test_register_answer_format_refuses_what_is_not_a_format():
    from tracer_pl.grading.answers import register_answer_format

    for wrong in ("gsm8k", None, 3):  # an AttributeError before
        with pytest.raises(TypeError, match="register_answer_format expects an AnswerFormat instance"):
            register_answer_format(wrong)
    assert is_equivalent(5, "5", "gsm8k") and not is_equivalent("5", None, "gsm8k")  # numbers as such, no gold
