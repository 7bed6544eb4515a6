import math

import pytest
import torch

from tracer_pl.core.gspo import ClipRange, group_advantages, grpo_loss, gspo_loss


def test_on_policy_loss_and_gradient():
    # ratio = 1 exactly: L = -mean(A), dL/dlogp_i = -A_i / (N * |y_i|).
    old = torch.tensor([-12.0, -30.5, -7.25, -3.0], dtype=torch.float64)
    logp = old.clone().requires_grad_(True)
    n = torch.tensor([4, 10, 3, 1])
    adv = torch.tensor([1.5, -0.5, -0.5, -0.5], dtype=torch.float64)
    loss, frac = gspo_loss(logp, old, n, adv)
    loss.backward()
    assert loss.item() == pytest.approx(0.0, abs=1e-15)  # advantages sum to zero
    assert frac == 0.0  # ratio 1: nothing clipped
    expected = [-a / (4 * k) for a, k in zip(adv.tolist(), n.tolist())]
    assert logp.grad.tolist() == pytest.approx(expected, abs=1e-12)


def test_off_policy_with_clipping_binding():
    n = [2, 4, 5, 1]
    delta = [0.4, -0.8, 0.1, 3.0]  # per-token log ratios 0.2, -0.2, 0.02, 3.0 (clamped to 2.0)
    adv = [1.0, 1.0, -1.0, -1.0]
    old = torch.tensor([-10.0, -20.0, -5.0, -1.0], dtype=torch.float64)
    logp = (old + torch.tensor(delta, dtype=torch.float64)).requires_grad_(True)
    loss, frac = gspo_loss(logp, old, torch.tensor(n), torch.tensor(adv, dtype=torch.float64), ClipRange(0.1))
    loss.backward()
    r1, r2, r3 = math.exp(-0.2), math.exp(0.02), math.exp(2.0)
    # 0: A>0, ratio 1.221 > 1.1 -> clipped term 1.1 wins, no gradient
    # 1: A>0, ratio 0.819 < 0.9 -> unclipped 0.819 is smaller, gradient ratio/|y|
    # 2: A<0, ratio inside the clip range -> both terms equal
    # 3: log ratio clamped at 2 -> -e^2 (the unclipped term is the min), no gradient through the clamp
    terms = [1.1 * 1.0, r1 * 1.0, r2 * -1.0, r3 * -1.0]
    assert loss.item() == pytest.approx(-sum(terms) / 4, abs=1e-12)
    expected_grad = [0.0, -(r1 / 4) / 4, -(-r2 / 5) / 4, 0.0]
    assert logp.grad.tolist() == pytest.approx(expected_grad, abs=1e-12)
    assert frac == pytest.approx(0.25)  # only candidate 0's clipped term is active (3's clamp is not the clip)


def test_epsilon_high_widens_upper_clip():
    old = torch.zeros(2, dtype=torch.float64)
    logp = torch.tensor([0.4, 0.0], dtype=torch.float64)  # ratio e^0.2 = 1.2214 over 2 tokens
    n = torch.tensor([2, 2])
    adv = torch.tensor([1.0, 0.0], dtype=torch.float64)
    assert gspo_loss(logp, old, n, adv, ClipRange(0.1)).loss.item() == pytest.approx(-1.1 / 2)
    assert gspo_loss(logp, old, n, adv, ClipRange(0.1, 0.28)).loss.item() == pytest.approx(-math.exp(0.2) / 2)


def test_old_logp_is_treated_as_constant():
    old = torch.tensor([-3.0, -4.0], requires_grad=True)
    logp = torch.tensor([-2.9, -4.2], requires_grad=True)
    gspo_loss(logp, old, torch.tensor([3, 3]), torch.tensor([1.0, -1.0])).loss.backward()
    assert old.grad is None
    assert logp.grad is not None


@pytest.mark.parametrize(
    "rewards, expected",
    [
        ([1.0, -1.0, -1.0, -1.0], [3 / math.sqrt(3), -1 / math.sqrt(3), -1 / math.sqrt(3), -1 / math.sqrt(3)]),
        ([1.0, -1.0], [1.0, -1.0]),  # mean 0, population std 1
        ([0.0, 0.12], [-1.0, 1.0]),  # std 0.06 >= 0.05: kept
        ([1.0, 1.0, 1.0, 1.0], None),  # all equal: no signal
        ([0.0, 0.08], None),  # std 0.04 < 0.05: no signal
        ([1.0], None),  # a single candidate has no group
        ([1.0, float("nan")], None),  # non-finite rewards never reach the loss
    ],
)
def test_group_advantages(rewards, expected):
    adv = group_advantages(torch.tensor(rewards))
    if expected is None:
        assert adv is None
    else:
        assert adv.tolist() == pytest.approx(expected, abs=1e-6)


def test_equal_rewards_have_no_signal_even_with_min_std_zero():
    assert group_advantages(torch.tensor([1.0, 1.0, 1.0]), min_std=0.0) is None
    assert group_advantages(torch.tensor([1.0, -1.0]), min_std=0.0).tolist() == [1.0, -1.0]


def test_grpo_on_policy_gradient_matches_gspo():
    # ratio 1 on every token: d/dlogp_t = -A_i / (N |y_i|) on real tokens, 0 on padding -- the same gradient
    # GSPO puts on the summed log-prob of sequence i.
    old = torch.tensor([[-1.0, -2.0, 0.0], [-0.5, -0.25, -3.0]], dtype=torch.float64)
    mask = torch.tensor([[1, 1, 0], [1, 1, 1]])
    adv = torch.tensor([1.0, -1.0], dtype=torch.float64)
    logp = old.clone().requires_grad_(True)
    loss, frac = grpo_loss(logp, old, mask, adv)
    loss.backward()
    assert loss.item() == pytest.approx(0.0, abs=1e-15)
    assert logp.grad.flatten().tolist() == pytest.approx([-1 / 4, -1 / 4, 0.0, 1 / 6, 1 / 6, 1 / 6], abs=1e-12)


def test_grpo_clips_each_token_on_its_own():
    old = torch.zeros(2, 3, dtype=torch.float64)
    delta = torch.tensor([[0.2, 0.0, 9.0], [-0.3, 0.05, 3.0]], dtype=torch.float64)  # 9.0 sits on padding
    mask = torch.tensor([[1, 1, 0], [1, 1, 1]])
    adv = torch.tensor([1.0, -1.0], dtype=torch.float64)
    logp = (old + delta).requires_grad_(True)
    loss, frac = grpo_loss(logp, old, mask, adv, ClipRange(0.1))
    loss.backward()
    rb = math.exp(0.05)
    # sequence 0 (A=+1): token 0 ratio e^0.2 > 1.1 is clipped to 1.1; token 1 ratio 1 -> mean (1.1 + 1) / 2
    # sequence 1 (A=-1): e^-0.3 < 0.9 -> -0.9 (clipped); e^0.05 inside -> -e^0.05; 3.0 clamped to 2 -> -e^2
    seq1 = (-0.9 - rb - math.exp(2.0)) / 3
    assert loss.item() == pytest.approx(-(1.05 + seq1) / 2, abs=1e-12)
    assert logp.grad.flatten().tolist() == pytest.approx([0.0, -1 / 4, 0.0, 0.0, rb / 6, 0.0], abs=1e-12)
    assert frac == pytest.approx(2 / 5)  # tokens (0, 0) and (1, 0) of the five real ones
