"""Property tests of answer reading: invariants for any text, searched by hypothesis."""

from hypothesis import event, given, settings
from hypothesis import strategies as st

from tracer_pl.grading.answers import extract_answer, get_answer_format, normalize_number


@settings(max_examples=100, deadline=None)
@given(text=st.text(max_size=300), dataset=st.sampled_from(["gsm8k", "math500", "gpqa_diamond", "exact"]))
def test_answer_formats_never_raise(text, dataset):
    # the formats themselves: extract_answer and is_equivalent catch every exception, which would hide a bug
    fmt = get_answer_format(dataset)
    answer = fmt.extract(text)
    assert answer is None or isinstance(answer, str)
    event("no answer" if answer is None else "an answer, graded")
    if answer is not None:
        gold = fmt.parse_gold({"gpqa_diamond": "B", "math500": "\\frac{1}{2}"}.get(dataset, "42"))
        assert isinstance(fmt.equivalent(answer, gold), bool)


@settings(max_examples=100, deadline=None)
@given(number=st.integers(min_value=-10**12, max_value=10**12), commas=st.booleans(), dollar=st.booleans())
def test_number_formats_round_trip(number, commas, dollar):
    text = f"{number:,}" if commas else str(number)
    text = ("$" if dollar else "") + text
    assert normalize_number(text) == str(number)
    assert extract_answer(f"Work...\nFinal answer: {text}.", "gsm8k") == str(number)
