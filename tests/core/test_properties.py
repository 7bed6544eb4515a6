"""Property tests of the core (regret matching, GSPO): invariants for any input, searched by hypothesis."""

import math

import torch
from hypothesis import assume, event, given, note, settings
from hypothesis import strategies as st

from tracer_pl.core.gspo import ZERO_SIGNAL_STD, group_advantages, gspo_loss
from tracer_pl.core.regret import RegretMatcher, regret_bound

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


finite = st.floats(min_value=-1e4, max_value=1e4, allow_nan=False)


@settings(max_examples=100, deadline=None)
@given(data=st.data(), n=st.integers(1, 8))
def test_gspo_loss_is_finite_for_finite_inputs(data, n):
    logp = torch.tensor(data.draw(st.lists(finite, min_size=n, max_size=n)), dtype=torch.float64, requires_grad=True)
    old = torch.tensor(data.draw(st.lists(finite, min_size=n, max_size=n)), dtype=torch.float64)
    tokens = torch.tensor(data.draw(st.lists(st.integers(0, 512), min_size=n, max_size=n)))
    adv = torch.tensor(data.draw(st.lists(st.floats(-10, 10), min_size=n, max_size=n)), dtype=torch.float64)
    loss, _ = gspo_loss(logp, old, tokens, adv)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(logp.grad).all()


rewards = st.floats(-1, 1)


def no_signal_reason(values, min_std=ZERO_SIGNAL_STD):
    """Why a group of rewards carries no signal (computed here, independently), or None when it does."""
    if len(values) < 2:
        return "a single candidate"
    if not all(math.isfinite(v) for v in values):
        return "a reward that is not finite"
    mean = math.fsum(values) / len(values)
    std = math.sqrt(math.fsum((v - mean) ** 2 for v in values) / len(values))
    assume(not math.isclose(std, min_std, rel_tol=1e-6))  # at the threshold itself rounding decides, not the rule
    if len(set(values)) == 1:
        return "equal rewards"
    if std < min_std:
        return "std below min_std"
    return None


@settings(max_examples=100, deadline=None)
@given(values=st.lists(rewards, min_size=2, max_size=16))
def test_group_advantages_are_normalised_or_absent(values):
    adv = group_advantages(torch.tensor(values))
    reason = no_signal_reason([float(torch.tensor(v)) for v in values])  # as float32, the tensor's precision
    event(reason or "signal")  # `pytest --hypothesis-show-statistics` shows how often each case was drawn
    if reason is not None:  # checked both ways: absent exactly when the group has no signal
        assert adv is None, reason
        return
    assert adv is not None
    assert abs(float(adv.double().mean())) < 1e-5
    assert math.isclose(float(adv.double().std(unbiased=False)), 1.0, rel_tol=1e-4)


# groups with signal by construction: a reward <= -0.5 and one >= 0.5 among at most 16 give a population std of
# at least 1 / sqrt(2 * 16) = 0.18, above ZERO_SIGNAL_STD (0.05), wherever the others lie
groups_with_signal = st.tuples(st.lists(rewards, max_size=14), st.floats(-1, -0.5), st.floats(0.5, 1)).flatmap(
    lambda drawn: st.permutations([*drawn[0], drawn[1], drawn[2]]))


@settings(max_examples=100, deadline=None)
@given(values=groups_with_signal)
def test_group_advantages_of_a_group_with_signal_are_normalised(values):
    note(f"rewards {values}")
    adv = group_advantages(torch.tensor(values))
    assert adv is not None, "a group with signal got no advantages"
    assert adv.shape == (len(values),) and torch.isfinite(adv).all()
    assert abs(float(adv.double().mean())) < 1e-5
    assert math.isclose(float(adv.double().std(unbiased=False)), 1.0, rel_tol=1e-4)
    # the ranking of the candidates is kept: a higher reward never gets a lower advantage
    order = sorted(range(len(values)), key=lambda i: values[i])
    assert all(adv[a] <= adv[b] + 1e-6 for a, b in zip(order, order[1:]) if values[a] < values[b])
