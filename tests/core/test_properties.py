"""Property tests: invariants that must hold for any input, searched by hypothesis."""

import math

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from tracer_pl.answers import extract_answer, get_answer_format, normalize_number
from tracer_pl.gspo import group_advantages, gspo_loss
from tracer_pl.regret import RegretMatcher, regret_bound

values = st.floats(min_value=-1.0, max_value=1.0, allow_nan=False)
sequences = st.lists(st.tuples(values, values), min_size=1, max_size=200)


@settings(max_examples=60, deadline=None)
@given(sequence=sequences, plus=st.booleans())
def test_strategies_are_distributions_and_regret_is_bounded(sequence, plus):
    m = RegretMatcher(plus=plus)
    for v in sequence:
        m.update("s", v)
        for pi in (m.strategy("s"), m.average_strategy("s")):
            assert (pi >= 0).all() and math.isclose(float(pi.sum()), 1.0, abs_tol=1e-12)
    assert m.average_regret("s") * m.visits("s") <= regret_bound(m.visits("s")) + 1e-9


@settings(max_examples=30, deadline=None)
@given(length=st.integers(1, 400), plus=st.booleans(), flip=st.booleans())
def test_regret_bound_against_an_adaptive_adversary(length, plus, flip):
    m = RegretMatcher(plus=plus)
    for _ in range(length):
        pi = m.strategy("s")
        favoured = int(pi[1] > pi[0]) ^ flip  # pay the action the strategy neglects, or the one it favours
        m.update("s", [1.0, -1.0] if favoured == 1 else [-1.0, 1.0])
    assert m.average_regret("s") * length <= regret_bound(length) + 1e-9


@settings(max_examples=30, deadline=None)
@given(sequence=sequences, plus=st.booleans())
def test_state_dict_round_trip(sequence, plus):
    a = RegretMatcher(plus=plus)
    for i, v in enumerate(sequence):
        a.update(("+1", "last") if i % 2 else ("none",), v)
    b = RegretMatcher(plus=plus)
    b.load_state_dict(a.state_dict())
    assert b.state_dict() == a.state_dict()


@settings(max_examples=100, deadline=None)
@given(text=st.text(max_size=300), dataset=st.sampled_from(["gsm8k", "math500", "gpqa_diamond", "exact"]))
def test_answer_formats_never_raise(text, dataset):
    # the formats themselves: extract_answer and is_equivalent catch every exception, which would hide a bug
    fmt = get_answer_format(dataset)
    answer = fmt.extract(text)
    assert answer is None or isinstance(answer, str)
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


finite = st.floats(min_value=-1e4, max_value=1e4, allow_nan=False)


@settings(max_examples=100, deadline=None)
@given(data=st.data(), n=st.integers(1, 8))
def test_gspo_loss_is_finite_for_finite_inputs(data, n):
    logp = torch.tensor(data.draw(st.lists(finite, min_size=n, max_size=n)), dtype=torch.float64, requires_grad=True)
    old = torch.tensor(data.draw(st.lists(finite, min_size=n, max_size=n)), dtype=torch.float64)
    tokens = torch.tensor(data.draw(st.lists(st.integers(0, 512), min_size=n, max_size=n)))
    adv = torch.tensor(data.draw(st.lists(st.floats(-10, 10), min_size=n, max_size=n)), dtype=torch.float64)
    loss = gspo_loss(logp, old, tokens, adv)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(logp.grad).all()


@settings(max_examples=100, deadline=None)
@given(rewards=st.lists(st.floats(-1, 1), min_size=2, max_size=16))
def test_group_advantages_are_normalised_or_absent(rewards):
    adv = group_advantages(torch.tensor(rewards))
    if adv is not None:
        assert abs(float(adv.double().mean())) < 1e-5
        assert math.isclose(float(adv.double().std(unbiased=False)), 1.0, rel_tol=1e-4)
