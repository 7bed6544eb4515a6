"""The sampling-engine mismatch and truncated importance weights (gspo.py), with hand-computed numbers."""

import math

import pytest
import torch

from tracer_pl.core.gspo import grpo_loss, gspo_loss, sampling_logp_mismatch, truncated_importance_weights

# two candidates: 2 real tokens + 1 pad, and 3 real tokens
TRAIN = torch.tensor([[-1.0, -2.0, 0.0], [-0.5, -0.5, -3.0]])
SAMPLER = torch.tensor([[-1.5, -1.0, 7.0], [-0.5, -1.5, -3.0]])
MASK = torch.tensor([[1, 1, 0], [1, 1, 1]])


def test_mismatch_is_the_mean_absolute_gap_over_real_tokens():
    # gaps 0.5, 1.0 | 0, 1.0, 0 -> 2.5 / 5 (the padded 7.0 is ignored)
    assert sampling_logp_mismatch(TRAIN, SAMPLER, MASK) == pytest.approx(0.5)


def test_token_weights_are_truncated_ratios_zero_on_padding():
    weights = truncated_importance_weights(TRAIN, SAMPLER, MASK, cap=2.0, level="token")
    expected = torch.tensor([[math.exp(0.5), math.exp(-1.0), 0.0], [1.0, 2.0, 1.0]])  # exp(1.0) = 2.72 -> cap 2
    torch.testing.assert_close(weights, expected)


def test_sequence_weights_use_the_length_normalised_log_ratio():
    weights = truncated_importance_weights(TRAIN, SAMPLER, MASK, cap=1.5, level="sequence")
    # (0.5 - 1.0) / 2 = -0.25 ; (0 + 1.0 + 0) / 3 -> exp(1/3) = 1.3956 (below the cap)
    torch.testing.assert_close(weights, torch.tensor([math.exp(-0.25), math.exp(1 / 3)]))
    capped = truncated_importance_weights(TRAIN, SAMPLER, MASK, cap=1.2, level="sequence")
    assert capped[1].item() == pytest.approx(1.2)


def test_identical_engines_give_weight_one():
    weights = truncated_importance_weights(TRAIN, TRAIN.clone(), MASK, cap=2.0, level="token")
    torch.testing.assert_close(weights, MASK.float())


@pytest.mark.parametrize("cap", [0.0, -1.0])
def test_cap_must_be_positive(cap):
    with pytest.raises(ValueError, match="cap must be > 0"):
        truncated_importance_weights(TRAIN, SAMPLER, MASK, cap=cap)


def test_shapes_must_agree():
    with pytest.raises(ValueError, match="shapes differ"):
        truncated_importance_weights(TRAIN, SAMPLER[:, :2], MASK, cap=2.0)


def test_weights_scale_the_gspo_loss_per_candidate():
    logp = torch.tensor([-3.0, -4.0], requires_grad=True)
    advantages = torch.tensor([1.0, -1.0])
    weights = torch.tensor([0.5, 2.0])
    loss, _ = gspo_loss(logp, logp.detach(), torch.tensor([2, 3]), advantages, weights=weights)
    # on-policy ratio 1: -(0.5 * 1 + 2 * -1) / 2 = 0.75
    assert loss.item() == pytest.approx(0.75)
    loss.backward()
    # d/dlogp_i of -w_i * A_i * exp((logp_i - old_i)/n_i) / N at ratio 1 = -w_i A_i / (n_i N)
    torch.testing.assert_close(logp.grad, torch.tensor([-0.5 / 4, 2.0 / 6]))


def test_weights_scale_the_grpo_loss_per_token():
    token_logp = TRAIN.clone().requires_grad_(True)
    weights = torch.tensor([[1.0, 3.0, 0.0], [2.0, 2.0, 2.0]])
    loss, _ = grpo_loss(token_logp, TRAIN, MASK, torch.tensor([1.0, 1.0]), weights=weights)
    # per sequence: (1 + 3) / 2 = 2 and 6 / 3 = 2 -> -(2 + 2) / 2
    assert loss.item() == pytest.approx(-2.0)


# ---------------------------------------------------------------- wired into TracerModule (fake engine, no model)
import lightning as L  # noqa: E402

from tests.helpers.problems import ProblemList  # noqa: E402
from tests.helpers.training import fit  # noqa: E402
from tracer_pl.core.dialogue import DialogueConfig  # noqa: E402
from tracer_pl.core.gspo import GSPOConfig  # noqa: E402
from tracer_pl.engines.fake import FakeEngine, FakePolicy  # noqa: E402
from tracer_pl.errors import ConfigError  # noqa: E402
from tracer_pl.training.module import BackboneConfig  # noqa: E402

GAP = 0.25


class ReportingPolicy(FakePolicy):
    """Reports sampling log-probs GAP nats below its own, as an engine with other numerics would."""

    def generate(self, role, prompts, num_samples=1, *, greedy=False):
        groups = super().generate(role, prompts, num_samples, greedy=greedy)
        table = torch.log_softmax(self.logits[role].detach(), dim=-1)
        for completion in (c for group in groups for c in group):
            completion.sampling_logprobs = table[completion.completion_ids] - GAP
        return groups


class ReportingEngine(FakeEngine):
    def build(self, config, roles):
        return ReportingPolicy(roles, max_new_tokens=config.max_new_tokens, temperature=config.temperature)


class _Means(L.Callback):
    def __init__(self):
        self.values = {}

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        for key, values in pl_module.gspo_update.statistics.last_values.items():
            self.values.setdefault(key, []).extend(values)


def logged_means(engine, correction, root, problems):
    """Two batches of the fake ``engine`` on ``problems``; every per-update value each training step logged."""
    means = _Means()
    fit(root, ProblemList(problems), batches=2, seed=3, callbacks=[means],
        backbone=BackboneConfig(max_new_tokens=1, temperature=1.0), engine=engine,
        dialogue=DialogueConfig(rounds=3),
        gspo=GSPOConfig(group_size=4, lr=0.5, importance_sampling_correction=correction))
    return means.values


@pytest.mark.e2e
def test_module_logs_the_gap_and_the_correction_scales_the_loss(tmp_path, sum_problems):
    plain = logged_means(ReportingEngine(), False, tmp_path / "plain", sum_problems)
    corrected = logged_means(ReportingEngine(), True, tmp_path / "on", sum_problems)
    for values in (plain, corrected):
        gaps = values.get("gspo/proposer/sampling_logp_mismatch", []) + values.get(
            "gspo/reviewer/sampling_logp_mismatch", [])
        assert gaps and all(g == pytest.approx(GAP, abs=1e-6) for g in gaps)  # one per update, before it steps
    # the seeded run takes a single update, so both runs score the same candidates; every candidate's sequence
    # weight is exp(mean gap) = exp(GAP) (below the cap 2), so the gradient (norm before clipping) grows by it
    norms = {key: values for key, values in plain.items() if key.endswith("/grad_norm")}
    assert [len(v) for v in norms.values()] == [1], norms
    (key, (plain_norm,)), = norms.items()
    assert plain_norm > 0
    assert corrected[key][0] == pytest.approx(math.exp(GAP) * plain_norm, rel=1e-5)


def test_correction_without_reported_logprobs_is_a_config_error(tmp_path, sum_problems):
    # refused as the fit starts, before any batch (so no e2e marker: nothing trains)
    with pytest.raises(ConfigError, match="importance_sampling_correction needs an engine that reports"):
        logged_means(FakeEngine(), True, tmp_path, sum_problems)
