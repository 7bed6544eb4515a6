"""Group Sequence Policy Optimization for one role's candidate group (TRACER §3, generation credit).

Pure tensor functions: no model, no optimizer. The Lightning module computes the log-probs with the role's
adapter and calls :func:`gspo_loss` (one importance ratio per sequence, TRACER's choice) or :func:`grpo_loss`
(one per token, as in GRPO; used by the single-agent GRPO baseline).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

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


def gspo_loss(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    num_tokens: torch.Tensor,
    advantages: torch.Tensor,
    epsilon: float = 0.1,
    epsilon_high: float | None = None,
    log_ratio_clamp: float | None = 2.0,
    weights: torch.Tensor | None = None,
) -> torch.Tensor:
    """Clipped sequence-level surrogate loss, averaged over the candidates.

    ``rho = exp(clamp((logp - old_logp) / num_tokens, ±log_ratio_clamp))`` and
    ``L = -mean(min(rho * A, clip(rho, 1 - epsilon, 1 + epsilon_high) * A))``. No KL term.

    Args:
        logp: Summed completion-token log-probs under the current policy, shape ``[N]`` (differentiable).
        old_logp: The same under the policy that sampled the candidates, shape ``[N]`` (treated as constant).
        num_tokens: Completion tokens per candidate, shape ``[N]`` (``|y|``; counts below 1 are read as 1).
        advantages: Shape ``[N]``.
        epsilon: Lower clip range.
        epsilon_high: Upper clip range; defaults to ``epsilon``.
        log_ratio_clamp: Clamp of the per-token log ratio before exponentiation; None disables it.
        weights: Optional constant weight per candidate, shape ``[N]`` (the sampling correction of
            :func:`truncated_importance_weights`); None weighs all by 1.

    Returns:
        A scalar tensor.
    """
    ratio = torch.exp(sequence_log_ratio(logp, old_logp.detach(), num_tokens, log_ratio_clamp))
    terms = _surrogate(ratio, advantages.to(ratio.dtype), epsilon, epsilon_high)
    if weights is not None:
        terms = terms * weights.detach().to(terms.dtype)
    return -terms.mean()


def clip_fraction(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    num_tokens: torch.Tensor,
    advantages: torch.Tensor,
    epsilon: float = 0.1,
    epsilon_high: float | None = None,
    log_ratio_clamp: float | None = 2.0,
) -> float:
    """Fraction of candidates whose clipped term is the active one in :func:`gspo_loss` (no gradient flows)."""
    with torch.no_grad():
        ratio = torch.exp(sequence_log_ratio(logp, old_logp, num_tokens, log_ratio_clamp))
        return float(_clip_active(ratio, advantages, epsilon, epsilon_high).float().mean())


def grpo_loss(
    token_logp: torch.Tensor,
    old_token_logp: torch.Tensor,
    mask: torch.Tensor,
    advantages: torch.Tensor,
    epsilon: float = 0.1,
    epsilon_high: float | None = None,
    log_ratio_clamp: float | None = 2.0,
    weights: torch.Tensor | None = None,
) -> torch.Tensor:
    """Clipped token-level surrogate of GRPO: each token has its own ratio; tokens averaged per sequence.

    ``rho_t = exp(clamp(logp_t - old_logp_t, ±log_ratio_clamp))``, the per-token term is
    ``min(rho_t * A, clip(rho_t, 1 - epsilon, 1 + epsilon_high) * A)``, averaged over the sequence's tokens and
    then over the sequences (the original GRPO normalisation). No KL term.

    Args:
        token_logp: Completion-token log-probs under the current policy, ``[N, C]`` (differentiable).
        old_token_logp: The same under the sampling policy, ``[N, C]`` (treated as constant).
        mask: 1 for real completion tokens, 0 for padding, ``[N, C]``.
        advantages: One per sequence, ``[N]``.
        epsilon: Lower clip range.
        epsilon_high: Upper clip range; defaults to ``epsilon``.
        log_ratio_clamp: Clamp of the token log ratio before exponentiation; None disables it.
        weights: Optional constant weight per token, ``[N, C]`` (the sampling correction of
            :func:`truncated_importance_weights`); None weighs all by 1.
    """
    ratio, mask = _token_ratio(token_logp, old_token_logp.detach(), mask, log_ratio_clamp)
    terms = _surrogate(ratio, advantages.to(ratio.dtype).unsqueeze(-1), epsilon, epsilon_high)
    if weights is not None:
        terms = terms * weights.detach().to(terms.dtype)
    per_sequence = (terms * mask).sum(-1) / mask.sum(-1).clamp(min=1)
    return -per_sequence.mean()


def token_clip_fraction(
    token_logp: torch.Tensor,
    old_token_logp: torch.Tensor,
    mask: torch.Tensor,
    advantages: torch.Tensor,
    epsilon: float = 0.1,
    epsilon_high: float | None = None,
    log_ratio_clamp: float | None = 2.0,
) -> float:
    """Fraction of real tokens whose clipped term is the active one in :func:`grpo_loss`."""
    with torch.no_grad():
        ratio, mask = _token_ratio(token_logp, old_token_logp, mask, log_ratio_clamp)
        clipped = _clip_active(ratio, advantages.to(ratio.dtype).unsqueeze(-1), epsilon, epsilon_high)
        return float((clipped * mask).sum() / mask.sum().clamp(min=1))


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


def _surrogate(ratio: torch.Tensor, advantages: torch.Tensor, epsilon: float, epsilon_high: float | None
               ) -> torch.Tensor:
    """Elementwise ``min(rho * A, clip(rho, 1 - epsilon, 1 + epsilon_high) * A)``."""
    high = epsilon if epsilon_high is None else epsilon_high
    return torch.minimum(ratio * advantages, ratio.clamp(1.0 - epsilon, 1.0 + high) * advantages)


def _clip_active(ratio: torch.Tensor, advantages: torch.Tensor, epsilon: float, epsilon_high: float | None
                 ) -> torch.Tensor:
    """Where the clipped term of :func:`_surrogate` is the smaller one (and so no gradient flows)."""
    high = epsilon if epsilon_high is None else epsilon_high
    return ((ratio < 1.0 - epsilon) & (advantages < 0)) | ((ratio > 1.0 + high) & (advantages > 0))


def _token_ratio(token_logp: torch.Tensor, old_token_logp: torch.Tensor, mask: torch.Tensor,
                 log_ratio_clamp: float | None) -> tuple[torch.Tensor, torch.Tensor]:
    mask = mask.to(token_logp.dtype)
    log_ratio = (token_logp - old_token_logp) * mask
    if log_ratio_clamp is not None:
        log_ratio = log_ratio.clamp(-log_ratio_clamp, log_ratio_clamp)
    return torch.exp(log_ratio), mask



@dataclass
class GSPOConfig:
    """Settings of the GSPO step of each speaking role.

    Args:
        lr: Adam learning rate of each role's adapter.
        steps_per_group: Optimizer steps per candidate group (1 = on-policy, ratio exactly 1; more steps reuse
            the same samples, so the ratio moves and clipping binds, like ``steps_per_generation`` in TRL).
        epsilon: Lower clip range of the importance ratio.
        epsilon_high: Upper clip range; None uses ``epsilon``.
        log_ratio_clamp: Clamp of the per-token log ratio before exponentiation.
        max_grad_norm: Gradient-norm clip of each step; None or 0 disables it.
        weight_decay: Adam weight decay.
        importance_level: ``sequence`` (GSPO, TRACER's objective) or ``token`` (GRPO's per-token ratios, the
            same as TRL's ``importance_sampling_level``).
        update_per: ``group``: each candidate group gets its own update of ``steps_per_group`` optimizer steps,
            the count of the paper's one-problem-at-a-time protocol (generation stays batched); ``round``: the
            groups of all problems of a batch in one round share one update (B times fewer steps at batch B).
        importance_sampling_correction: Weight the loss by the truncated ratio between the training model's and
            the sampling engine's probabilities of the sampled tokens
            (:func:`truncated_importance_weights`); needs an engine that reports sampling log-probs
            (``VLLMEngine``). Off by default.
        importance_sampling_cap: The truncation of those weights.
    """

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
