import pytest
import torch

from tracer_pl.core.controllers import (
    ControllerConfig,
    ProposerController,
    ReviewerController,
    StateFeatures,
    argmax_action,
    controller_state,
    time_bucket,
    vote_bucket,
)


@pytest.mark.parametrize(
    "has_pending, parseable, vote, expected",
    [
        (False, False, 0, "none"),  # nothing pending
        (True, False, 3, "invalid"),  # pending answer unparseable: the vote is ignored
        (True, True, 0, "+0"),
        (True, True, 1, "+1"),
        (True, True, -2, "-2"),
        (True, True, 5, "+2"),  # clipped to [-2, 2]
        (True, True, -7, "-2"),
    ],
)
def test_vote_bucket(has_pending, parseable, vote, expected):
    assert vote_bucket(has_pending, parseable, vote) == expected


@pytest.mark.parametrize(
    "round_index, rounds, expected",
    [
        (2, 5, "not_last"),  # proposal rounds 3 and 5 remain
        (3, 5, "not_last"),  # 3 and 5
        (4, 5, "last"),  # only 5
        (5, 5, "last"),
        (2, 3, "last"),  # only 3
        (2, 7, "not_last"),
        (6, 7, "last"),
    ],
)
def test_time_bucket(round_index, rounds, expected):
    assert time_bucket(round_index, rounds) == expected


@pytest.mark.parametrize(
    "features, expected",
    [
        (StateFeatures(), ("+1", "last")),
        (StateFeatures(vote=False), ("last",)),  # ablation: no vote in state
        (StateFeatures(time=False), ("+1",)),  # ablation: no time in state
        (StateFeatures(vote=False, time=False), ()),  # a single state
        (StateFeatures(vote_clip=0), ("+0", "last")),
    ],
)
def test_state_features(features, expected):
    state = controller_state(features, has_pending=True, pending_parseable=True, vote=1, round_index=4, rounds=5)
    assert state == expected


def test_training_samples_current_strategy_with_own_rng():
    a, b = ReviewerController(seed=7), ReviewerController(seed=7)
    draws_a = [a.act(("+0",), training=True)[0] for _ in range(50)]
    draws_b = [b.act(("+0",), training=True)[0] for _ in range(50)]
    assert draws_a == draws_b  # same seed, same actions
    assert set(draws_a) == {0, 1}  # uniform strategy plays both


def test_evaluation_uses_average_strategy():
    c = ProposerController()
    pi = c.matcher.strategy(("+0",))
    c.update(("+0",), (1.0, -1.0), pi)  # Re = (1, -1): current (1, 0), average (.5, .5)
    c.update(("+0",), (1.0, -1.0), c.matcher.strategy(("+0",)))  # average (.75, .25)
    action, strategy = c.act(("+0",), training=False, protocol="argmax")
    assert action == 0 and strategy.tolist() == pytest.approx([0.75, 0.25])
    g = torch.Generator().manual_seed(0)
    draws = [c.act(("+0",), training=False, generator=g)[0] for _ in range(2000)]
    assert abs(sum(draws) / 2000 - 0.25) < 0.04  # binomial std ~0.01
    # a tie in argmax (every unvisited state) goes to the silent action, as the authors' first-max argmax does
    assert c.act(("never",), training=False, protocol="argmax")[0] == 0
    assert ProposerController(tie_break="speaking").act(("never",), training=False, protocol="argmax")[0] == 1


@pytest.mark.parametrize(
    ("strategy", "tie_break", "expected"),
    [
        ([0.5, 0.5], "silent", 0),  # tie: keep/skip (the authors' default)
        ([0.5, 0.5], "speaking", 1),  # tie: refresh/speak
        ([0.25, 0.75], "silent", 1),  # no tie: the more probable action whatever the rule
        ([0.75, 0.25], "speaking", 0),
        ([0.5 - 1e-12, 0.5 + 1e-12], "silent", 1),  # the smallest difference is not a tie
    ],
)
def test_argmax_action_and_its_tie_rule(strategy, tie_break, expected):
    assert argmax_action(torch.tensor(strategy, dtype=torch.float64), tie_break) == expected


def test_controller_config_passes_the_tie_rule_to_both_controllers():
    proposer, reviewer = ControllerConfig(argmax_tie="speaking").build()
    assert (proposer.tie_break, reviewer.tie_break) == ("speaking", "speaking")
    assert [c.tie_break for c in ControllerConfig().build()] == ["silent", "silent"]


def test_fixed_and_frozen_controllers_do_not_learn():
    fixed = ReviewerController(fixed_action="speak")
    assert fixed.act(("+0",), training=True) [0] == 1
    assert not fixed.learns
    frozen = ProposerController(frozen=True)
    frozen.update(("+0",), (1.0, -1.0), torch.tensor([0.5, 0.5]))
    assert frozen.matcher.visits(("+0",)) == 0
    with pytest.raises(ValueError, match="fixed_action must be one of"):
        ProposerController(fixed_action="speak")


def test_state_dict_restores_tables_and_rng():
    a = ReviewerController(seed=3, plus=True)
    for _ in range(5):
        action, pi = a.act(("-1", "last"), training=True)
        a.update(("-1", "last"), (-1.0, 0.5), pi)
    b = ReviewerController(seed=99, plus=True)
    b.load_state_dict(a.state_dict())
    assert [a.act(("-1", "last"), training=True)[0] for _ in range(20)] == [
        b.act(("-1", "last"), training=True)[0] for _ in range(20)
    ]
    assert torch.equal(a.matcher.strategy_sum(("-1", "last")), b.matcher.strategy_sum(("-1", "last")))
