"""Group Sequence Policy Optimization for one role's candidate group (TRACER §3, generation credit).

Pure tensor functions: no model, no optimizer. The Lightning module computes the log-probs with the role's
adapter and calls :func:`gspo_loss` (one importance ratio per sequence, TRACER's choice) or :func:`grpo_loss`
(one per token, as in GRPO; used by the single-agent GRPO baseline); each returns the loss and its clip fraction
from one pass.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, NamedTuple

import torch

from tracer_pl.errors import require, require_between

ImportanceLevel = Literal["sequence", "token"]
"""``sequence``: GSPO's length-normalised sequence ratio; ``token``: GRPO's per-token ratios."""

ZERO_SIGNAL_STD = 0.05
"""Groups whose reward standard deviation is below this carry no signal and are not trained on."""


def group_advantages(rewards: torch.Tensor, min_std: float = ZERO_SIGNAL_STD) -> torch.Tensor | None:
    """Group-normalised advantages ``(r - mean) / std`` with the population std, or None for no signal.

    Args:
        rewards: 1-D float tensor, one reward per candidate of the group.
        min_std: Below this std the group is skipped (all candidates scored alike).

    Returns:
        Advantages (same shape, float32) or None when ``std < min_std``, ``std == 0`` or any reward is not finite.
    """
    rewards = rewards.double()
    if rewards.numel() < 2 or not torch.isfinite(rewards).all():
        return None
    std = rewards.std(unbiased=False)
    if std < min_std or std == 0:  # equal rewards carry no signal even when min_std is 0
        return None
    return ((rewards - rewards.mean()) / std).float()


def sequence_log_ratio(logp: torch.Tensor, old_logp: torch.Tensor, num_tokens: torch.Tensor,
                       log_ratio_clamp: float | None = 2.0) -> torch.Tensor:
    """Length-normalised sequence log importance ratio ``(log pi - log pi_old) / |y|``, clamped to ``±clamp``."""
    log_ratio = (logp - old_logp) / num_tokens.to(logp.dtype).clamp(min=1)
    if log_ratio_clamp is not None:
        log_ratio = log_ratio.clamp(-log_ratio_clamp, log_ratio_clamp)
    return log_ratio


@dataclass(frozen=True)
class ClipRange:
    """The clipping of the importance ratio, shared by :func:`gspo_loss` and :func:`grpo_loss`.

    Args:
        epsilon: Lower clip range: the ratio is clipped below at ``1 - epsilon``.
        epsilon_high: Upper clip range (``1 + epsilon_high``); None uses ``epsilon``.
        log_ratio_clamp: Clamp of the (per-token or length-normalised) log ratio before exponentiation; None
            disables it.
    """

    epsilon: float = 0.1
    epsilon_high: float | None = None
    log_ratio_clamp: float | None = 2.0

    @property
    def high(self) -> float:
        return self.epsilon if self.epsilon_high is None else self.epsilon_high


class PolicyLoss(NamedTuple):
    """A surrogate loss and its clip fraction, from the same pass (the fraction carries no gradient).

    ``clip_fraction`` is the share of candidates (:func:`gspo_loss`) or of real tokens (:func:`grpo_loss`) whose
    clipped term is the active one, so that no gradient flows through them.
    """

    loss: torch.Tensor
    clip_fraction: float


def gspo_loss(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    num_tokens: torch.Tensor,
    advantages: torch.Tensor,
    clip: ClipRange = ClipRange(),  # noqa: B008 - frozen
    weights: torch.Tensor | None = None,
) -> PolicyLoss:
    """Clipped sequence-level surrogate loss, averaged over the candidates.

    ``rho = exp(clamp((logp - old_logp) / num_tokens, ±log_ratio_clamp))`` and
    ``L = -mean(min(rho * A, clip(rho, 1 - epsilon, 1 + epsilon_high) * A))``. No KL term.

    Args:
        logp: Summed completion-token log-probs under the current policy, shape ``[N]`` (differentiable).
        old_logp: The same under the policy that sampled the candidates, shape ``[N]`` (treated as constant).
        num_tokens: Completion tokens per candidate, shape ``[N]`` (``|y|``; counts below 1 are read as 1).
        advantages: Shape ``[N]``.
        clip: The clip range and the log-ratio clamp.
        weights: Optional constant weight per candidate, shape ``[N]`` (the sampling correction of
            :func:`truncated_importance_weights`); None weighs all by 1.

    Returns:
        The scalar loss and the fraction of candidates clipped.
    """
    ratio = torch.exp(sequence_log_ratio(logp, old_logp.detach(), num_tokens, clip.log_ratio_clamp))
    advantages = advantages.to(ratio.dtype)
    terms = _surrogate(ratio, advantages, clip)
    if weights is not None:
        terms = terms * weights.detach().to(terms.dtype)
    clipped = _clip_active(ratio.detach(), advantages, clip)
    return PolicyLoss(-terms.mean(), float(clipped.float().mean()))


def grpo_loss(
    token_logp: torch.Tensor,
    old_token_logp: torch.Tensor,
    mask: torch.Tensor,
    advantages: torch.Tensor,
    clip: ClipRange = ClipRange(),  # noqa: B008 - frozen
    weights: torch.Tensor | None = None,
) -> PolicyLoss:
    """Clipped token-level surrogate of GRPO: each token has its own ratio; tokens averaged per sequence.

    ``rho_t = exp(clamp(logp_t - old_logp_t, ±log_ratio_clamp))``, the per-token term is
    ``min(rho_t * A, clip(rho_t, 1 - epsilon, 1 + epsilon_high) * A)``, averaged over the sequence's tokens and
    then over the sequences (the original GRPO normalisation). No KL term.

    Args:
        token_logp: Completion-token log-probs under the current policy, ``[N, C]`` (differentiable).
        old_token_logp: The same under the sampling policy, ``[N, C]`` (treated as constant).
        mask: 1 for real completion tokens, 0 for padding, ``[N, C]``.
        advantages: One per sequence, ``[N]``.
        clip: The clip range and the log-ratio clamp.
        weights: Optional constant weight per token, ``[N, C]`` (the sampling correction of
            :func:`truncated_importance_weights`); None weighs all by 1.

    Returns:
        The scalar loss and the fraction of real tokens clipped.
    """
    ratio, mask = _token_ratio(token_logp, old_token_logp.detach(), mask, clip.log_ratio_clamp)
    advantages = advantages.to(ratio.dtype).unsqueeze(-1)
    terms = _surrogate(ratio, advantages, clip)
    if weights is not None:
        terms = terms * weights.detach().to(terms.dtype)
    per_sequence = (terms * mask).sum(-1) / mask.sum(-1).clamp(min=1)
    clipped = _clip_active(ratio.detach(), advantages, clip)
    return PolicyLoss(-per_sequence.mean(), float((clipped * mask).sum() / mask.sum().clamp(min=1)))


def sampling_logp_mismatch(train_token_logp: torch.Tensor, sampling_token_logp: torch.Tensor,
                           mask: torch.Tensor) -> float:
    """Mean ``|log pi_train - log pi_sampler|`` over the real completion tokens (0 when there are none).

    Both ``[N, C]``: the training model's log-probs of the sampled tokens and those the sampling engine
    (e.g. vLLM) reported for the same tokens; ``mask`` is 1 on real tokens.
    """
    mask = mask.to(train_token_logp.dtype)
    gap = (train_token_logp.detach() - sampling_token_logp.to(train_token_logp)).abs() * mask
    return float(gap.sum() / mask.sum().clamp(min=1))


def truncated_importance_weights(train_token_logp: torch.Tensor, sampling_token_logp: torch.Tensor,
                                 mask: torch.Tensor, cap: float, level: ImportanceLevel = "sequence"
                                 ) -> torch.Tensor:
    """Truncated importance weights that correct for sampling with another engine's numerics.

    The candidates were drawn from the sampling engine's distribution ``mu`` while the loss treats them as drawn
    from the training model's ``pi_old``; each term is reweighted by ``min(pi_old / mu, cap)`` (truncated
    importance sampling, as TRL's ``vllm_importance_sampling_correction``). At the ``token`` level the weight
    is per token, ``min(exp(logp_old_t - logp_mu_t), cap)`` (0 on padding); at the ``sequence`` level (GSPO) it
    is per candidate, from the length-normalised log ratio ``min(exp(mean_t(logp_old_t - logp_mu_t)), cap)``,
    matching GSPO's length-normalised sequence ratio (TRL's sequence mode uses the unnormalised sum instead).

    Args:
        train_token_logp: ``[N, C]`` training-model log-probs of the sampled tokens, before the update.
        sampling_token_logp: ``[N, C]`` the sampling engine's log-probs of the same tokens.
        mask: ``[N, C]``, 1 on real completion tokens.
        cap: Upper bound of a weight (> 0).
        level: ``token`` (``[N, C]`` weights) or ``sequence`` (``[N]`` weights).

    Raises:
        ValueError: ``cap`` is not positive or the shapes differ.
    """
    if cap <= 0:
        raise ValueError(f"the importance-sampling cap must be > 0, got {cap}")
    if train_token_logp.shape != sampling_token_logp.shape or train_token_logp.shape != mask.shape:
        raise ValueError(f"shapes differ: train {tuple(train_token_logp.shape)}, sampling "
                         f"{tuple(sampling_token_logp.shape)}, mask {tuple(mask.shape)}")
    mask = mask.to(train_token_logp.dtype)
    log_ratio = (train_token_logp.detach() - sampling_token_logp.to(train_token_logp)) * mask
    if level == "token":
        return torch.exp(log_ratio).clamp(max=cap) * mask
    return torch.exp(log_ratio.sum(-1) / mask.sum(-1).clamp(min=1)).clamp(max=cap)


def _surrogate(ratio: torch.Tensor, advantages: torch.Tensor, clip: ClipRange) -> torch.Tensor:
    """Elementwise ``min(rho * A, clip(rho, 1 - epsilon, 1 + epsilon_high) * A)``."""
    return torch.minimum(ratio * advantages, ratio.clamp(1.0 - clip.epsilon, 1.0 + clip.high) * advantages)


def _clip_active(ratio: torch.Tensor, advantages: torch.Tensor, clip: ClipRange) -> torch.Tensor:
    """Where the clipped term of :func:`_surrogate` is the smaller one (and so no gradient flows)."""
    return ((ratio < 1.0 - clip.epsilon) & (advantages < 0)) | ((ratio > 1.0 + clip.high) & (advantages > 0))


def _token_ratio(token_logp: torch.Tensor, old_token_logp: torch.Tensor, mask: torch.Tensor,
                 log_ratio_clamp: float | None) -> tuple[torch.Tensor, torch.Tensor]:
    mask = mask.to(token_logp.dtype)
    log_ratio = (token_logp - old_token_logp) * mask
    if log_ratio_clamp is not None:
        log_ratio = log_ratio.clamp(-log_ratio_clamp, log_ratio_clamp)
    return torch.exp(log_ratio), mask


def without_stop_tokens(mask: torch.Tensor, stopped: torch.Tensor) -> torch.Tensor:
    """``mask`` (``[N, C]``, 1 on completion tokens, left-aligned) without the last token of every ``stopped`` row.

    That token is the end-of-sequence token of a completion that ended on one. A row of one token keeps it.
    """
    lengths = mask.sum(-1)
    drop = stopped.to(torch.bool) & (lengths > 1)
    out = mask.clone()
    rows = torch.nonzero(drop).squeeze(-1)
    out[rows, lengths[rows] - 1] = 0
    return out


@dataclass
class GSPOConfig:
    """Settings of the GSPO step of each speaking role: its groups, its objective and its optimizer.

    Args:
        group_size: Candidates G sampled per speaking context for the step (training only; 2 to 256); a group of
            G scored candidates gives the group-relative advantages.
        min_reward_std: Groups with a smaller reward standard deviation carry no signal and are not trained on
            (>= 0).
        lr: Adam learning rate of each role's adapter (> 0).
        steps_per_group: Optimizer steps per candidate group, 1 to 64 (1 = on-policy, ratio exactly 1; more steps reuse
            the same samples, so the ratio moves and clipping binds, like ``steps_per_generation`` in TRL).
        epsilon: Lower clip range of the importance ratio.
        epsilon_high: Upper clip range; None uses ``epsilon``.
        log_ratio_clamp: Clamp of the per-token log ratio before exponentiation.
        max_grad_norm: Gradient-norm clip of each step; None or 0 disables it.
        weight_decay: Adam weight decay (0 to 1).
        importance_level: ``sequence`` (GSPO, TRACER's objective) or ``token`` (GRPO's per-token ratios, the
            same as TRL's ``importance_sampling_level``).
        update_per: ``group``: each candidate group gets its own update of ``steps_per_group`` optimizer steps,
            the count of the paper's one-problem-at-a-time protocol (generation stays batched); ``round``: the
            groups of all problems of a batch in one round share one update (B times fewer steps at batch B).
        importance_sampling_correction: Weight the loss by the truncated ratio between the training model's and
            the sampling engine's probabilities of the sampled tokens
            (:func:`truncated_importance_weights`); needs an engine that reports sampling log-probs
            (``VLLMEngine``, or the Hugging Face engine with ``generation_weights`` ``merged``/``merged_bf16``).
            Off by default.
        importance_sampling_cap: The truncation of those weights.
        include_eos: Score a completion's end-of-sequence token: its log-probability is in the sequence's sum and
            it is one of the |y| tokens (TRACER §3 counts every generated token). ``false`` leaves it out of both,
            as the released code does (it re-encodes the decoded text, which has no EOS); a completion that is
            only an EOS keeps it.
    """

    group_size: int = 4
    min_reward_std: float = ZERO_SIGNAL_STD
    lr: float = 5e-6
    steps_per_group: int = 1
    epsilon: float = 0.1
    epsilon_high: float | None = None
    log_ratio_clamp: float | None = 2.0
    max_grad_norm: float | None = 0.5
    weight_decay: float = 0.0
    importance_level: ImportanceLevel = "sequence"
    update_per: Literal["group", "round"] = "group"
    importance_sampling_correction: bool = False
    importance_sampling_cap: float = 2.0
    include_eos: bool = True

    def __post_init__(self) -> None:
        flag = "--model.gspo."
        require_between(self.group_size, flag + "group_size", 2, 256)  # advantages need two candidates
        require(self.min_reward_std >= 0, flag + "min_reward_std", ">= 0", self.min_reward_std)
        require(self.lr > 0, flag + "lr", "positive", self.lr)
        require_between(self.steps_per_group, flag + "steps_per_group", 1, 64)
        require(0 < self.epsilon < 1, flag + "epsilon", "in (0, 1)", self.epsilon)
        require(self.epsilon_high is None or self.epsilon_high > 0, flag + "epsilon_high", "positive",
                self.epsilon_high)
        require(self.log_ratio_clamp is None or self.log_ratio_clamp > 0, flag + "log_ratio_clamp", "positive",
                self.log_ratio_clamp)
        require(self.max_grad_norm is None or self.max_grad_norm >= 0, flag + "max_grad_norm", ">= 0",
                self.max_grad_norm)
        require_between(self.weight_decay, flag + "weight_decay", 0.0, 1.0)
        require(self.importance_sampling_cap > 0, flag + "importance_sampling_cap", "positive",
                self.importance_sampling_cap)

    @property
    def clip(self) -> ClipRange:
        """The clip range and log-ratio clamp of the loss."""
        return ClipRange(self.epsilon, self.epsilon_high, self.log_ratio_clamp)
