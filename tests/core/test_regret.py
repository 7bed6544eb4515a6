import math

import pytest
import torch

from tracer_pl.core.regret import RegretMatcher, regret_bound, regret_matching


def close(t, expected, tol=1e-12):
    assert t.tolist() == pytest.approx(expected, abs=tol)


@pytest.mark.parametrize(
    "regret, expected",
    [
        ([0.0, 0.0], [0.5, 0.5]),  # nothing positive: uniform
        ([-1.0, -3.0], [0.5, 0.5]),  # all negative: uniform
        ([1.0, -3.0], [1.0, 0.0]),  # only one positive
        ([1.0, 3.0], [0.25, 0.75]),  # proportional
        ([2.0, 0.0, 6.0], [0.25, 0.0, 0.75]),  # three actions
    ],
)
def test_regret_matching_function(regret, expected):
    close(regret_matching(torch.tensor(regret)), expected)


def test_plain_regret_matching_on_a_known_sequence():
    # Hand-computed: pi0=(.5,.5); v=(1,0) -> re=(.5,-.5); pi1=(1,0); v=(0,1) -> re=(0,1), Re=(.5,.5);
    # pi2=(.5,.5); v=(0,1) -> re=(-.5,.5), Re=(0,1).
    m = RegretMatcher()
    close(m.update("s", [1.0, 0.0]), [0.5, -0.5])
    close(m.strategy("s"), [1.0, 0.0])
    close(m.average_strategy("s"), [0.5, 0.5])
    close(m.update("s", [0.0, 1.0]), [0.0, 1.0])
    close(m.cumulative_regret("s"), [0.5, 0.5])
    close(m.strategy("s"), [0.5, 0.5])
    close(m.average_strategy("s"), [0.75, 0.25])
    m.update("s", [0.0, 1.0])
    close(m.cumulative_regret("s"), [0.0, 1.0])
    close(m.strategy("s"), [0.0, 1.0])
    close(m.strategy_sum("s"), [2.0, 1.0])
    close(m.average_strategy("s"), [2 / 3, 1 / 3])
    assert m.visits("s") == 3
    assert m.average_regret("s") == pytest.approx(1 / 3)


def test_rm_plus_on_the_same_sequence():
    # RM+: Re clipped at 0 after each update, strategy sum weighted by visit number 1, 2, 3.
    m = RegretMatcher(plus=True)
    m.update("s", [1.0, 0.0])  # Re=(.5,0) after clipping; ssum=1*(.5,.5)
    close(m.cumulative_regret("s"), [0.5, 0.0])
    close(m.strategy("s"), [1.0, 0.0])
    m.update("s", [0.0, 1.0])  # baseline 0 -> Re=(.5,1); ssum += 2*(1,0)
    close(m.cumulative_regret("s"), [0.5, 1.0])
    close(m.strategy("s"), [1 / 3, 2 / 3])
    close(m.strategy_sum("s"), [2.5, 0.5])
    m.update("s", [0.0, 1.0])  # baseline 2/3 -> re=(-2/3,1/3); Re=(0,4/3); ssum += 3*(1/3,2/3)
    close(m.cumulative_regret("s"), [0.0, 4 / 3])
    close(m.strategy_sum("s"), [3.5, 2.5])
    close(m.average_strategy("s"), [3.5 / 6, 2.5 / 6])
    # true (unclipped) regret: (.5,-.5)+(0,1)+(-2/3,1/3) = (-1/6, 5/6)
    assert m.average_regret("s") == pytest.approx((5 / 6) / 3)


def test_states_are_independent_and_unvisited_defaults():
    m = RegretMatcher()
    m.update(("+1", "last"), [-1.0, 1.0])
    close(m.strategy(("+1", "last")), [0.0, 1.0])
    close(m.strategy(("-1", "last")), [0.5, 0.5])  # unvisited: uniform
    close(m.average_strategy(("-1", "last")), [0.5, 0.5])  # falls back to the current strategy
    assert m.visits(("-1", "last")) == 0
    assert m.average_regret(("-1", "last")) == 0.0
    assert m.states() == [("+1", "last")]


def test_dominant_action_average_strategy_exact():
    # v=(-1,1) every visit: pi0=(.5,.5), then (0,1) forever -> average of speak = (M - 0.5) / M.
    m = RegretMatcher()
    M = 200
    for _ in range(M):
        m.update("s", [-1.0, 1.0])
    assert float(m.average_strategy("s")[1]) == pytest.approx((M - 0.5) / M, abs=1e-12)
    assert m.average_regret("s") == pytest.approx(1.0 / M)  # only the first visit had regret 1


@pytest.mark.parametrize("plus", [False, True])
def test_regret_bound_on_adversarial_sequence(plus):
    # The adversary pays +1 to the action the current strategy plays less and -1 to the other.
    m = RegretMatcher(plus=plus)
    for visit in range(1, 5001):
        pi = m.strategy("s")
        values = [1.0, -1.0] if pi[0] <= pi[1] else [-1.0, 1.0]
        m.update("s", values)
        if visit in (10, 100, 1000, 5000):
            assert m.average_regret("s") * visit <= regret_bound(visit) + 1e-9
            assert regret_bound(visit) == pytest.approx(2 * math.sqrt(2 * visit))
    assert m.average_regret("s") <= 2 * math.sqrt(2 / 5000)


@pytest.mark.parametrize("plus", [False, True])
def test_regret_bound_on_random_values(plus):
    g = torch.Generator().manual_seed(3)
    m = RegretMatcher(plus=plus)
    for _ in range(3000):
        m.update("s", torch.rand(2, generator=g, dtype=torch.float64) * 2 - 1)
    assert m.average_regret("s") * 3000 <= regret_bound(3000)


def test_strategy_used_at_decision_time():
    # Two decisions drawn from pi=(.5,.5) before either update: both regrets measured against (.5,.5).
    m = RegretMatcher()
    pi = m.strategy("s")
    m.update("s", [1.0, -1.0], strategy=pi)
    close(m.update("s", [1.0, -1.0], strategy=pi), [1.0, -1.0])
    close(m.cumulative_regret("s"), [2.0, -2.0])
    close(m.strategy_sum("s"), [1.0, 1.0])


@pytest.mark.parametrize("plus", [False, True])
def test_state_dict_round_trip_continues_exactly(plus):
    a = RegretMatcher(plus=plus)
    for i in range(7):
        a.update(("+1", "last"), [math.sin(i), math.cos(i)])
        a.update(("none",), [0.3, -0.2 * i])
    b = RegretMatcher(plus=plus)
    b.load_state_dict(a.state_dict())
    for m in (a, b):
        m.update(("+1", "last"), [0.1, 0.9])
    for s in a.states():
        assert torch.equal(a.cumulative_regret(s), b.cumulative_regret(s))
        assert torch.equal(a.strategy_sum(s), b.strategy_sum(s))
        assert a.visits(s) == b.visits(s)
        assert a.average_regret(s) == b.average_regret(s)


def test_state_dict_lists_become_tuples_and_mismatch_is_rejected():
    a = RegretMatcher()
    a.update(("+1", "last"), [1.0, 0.0])
    sd = a.state_dict()
    sd["states"][0]["state"] = ["+1", "last"]  # as after a JSON/YAML round trip
    b = RegretMatcher()
    b.load_state_dict(sd)
    assert b.visits(("+1", "last")) == 1
    with pytest.raises(ValueError, match="plus=True"):
        RegretMatcher(plus=True).load_state_dict(a.state_dict())


@pytest.mark.parametrize("values", [[1.0], [1.0, 2.0, 3.0], [float("nan"), 0.0], [float("inf"), 0.0]])
def test_update_rejects_bad_values(values):
    with pytest.raises(ValueError):
        RegretMatcher().update("s", values)


def _stale_adversary(batch, rounds, plus):
    """Largest ratio of cumulative regret to the batch-1 and the batch-``batch`` bound, when ``batch`` updates in a
    row are measured against the strategy at the start of their run and the values always punish that strategy."""
    matcher, state, ratio_1, ratio_b = RegretMatcher(2, plus=plus), ("s",), 0.0, 0.0
    for r in range(rounds):
        played = matcher.strategy(state)
        favours_speaking = played[1] > played[0] or (played[0] == played[1] and r % 2)
        values = (1.0, -1.0) if favours_speaking else (-1.0, 1.0)
        for _ in range(batch):
            matcher.update(state, values, strategy=played)
        visits = matcher.visits(state)
        regret = matcher.average_regret(state) * visits
        ratio_1 = max(ratio_1, regret / regret_bound(visits))
        ratio_b = max(ratio_b, regret / regret_bound(visits, batch=batch))
    return ratio_1, ratio_b


@pytest.mark.parametrize("plus", [False, True])
@pytest.mark.parametrize(("batch", "exceeds"), [(1, 0.4743), (8, 1.3416), (32, 2.6833)])
def test_stale_strategies_break_the_plain_bound_but_not_the_batch_bound(batch, exceeds, plus):
    ratio_1, ratio_b = _stale_adversary(batch, rounds=400, plus=plus)
    assert ratio_1 == pytest.approx(exceeds, rel=0.01)  # 2*sqrt(2M) is exceeded 1.34x at B = 8, 2.68x at B = 32
    assert ratio_b < 0.5  # 2*sqrt(2BM) holds with room to spare
