"""The generation-credit step of a role (TRACER §3): GSPO updates of its adapter, as a collaborator of the module.

:class:`GSPOUpdate` turns a round's scored candidate groups into optimizer steps of the role's adapter. It owns the
roles' optimizers and the statistics of the current training step; the loss is :mod:`tracer_pl.core.gspo` (pure
functions), the log-probabilities come from the policy (:meth:`~tracer_pl.engines.base.Policy.token_logprobs`),
and the policy hears about every step (:meth:`~tracer_pl.engines.base.Policy.after_optimizer_step`). Data
parallelism averages gradients over processes before each step (:mod:`tracer_pl.training.distributed`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import torch

from tracer_pl.core.agent import Completion
from tracer_pl.core.dialogue import CandidateGroup
from tracer_pl.core.gspo import (
    GSPOConfig,
    PolicyLoss,
    grpo_loss,
    gspo_loss,
    sampling_logp_mismatch,
    truncated_importance_weights,
    without_stop_tokens,
)
from tracer_pl.engines.base import Policy
from tracer_pl.errors import ConfigError
from tracer_pl.keys import seat_key
from tracer_pl.training.distributed import all_reduce_sum, gather_objects, is_distributed, weighted_gradient_mean


@dataclass
class StepStatistics:
    """What one training step counts (GSPO steps, skips) and averages (loss, clip fraction, gradient norm)."""

    counts: dict[str, float] = field(default_factory=dict)
    values: dict[str, list[float]] = field(default_factory=dict)
    last_values: dict[str, list[float]] = field(default_factory=dict)  # the values behind the last pop's means

    def count(self, key: str, amount: float = 1.0) -> None:
        self.counts[key] = self.counts.get(key, 0.0) + amount

    def average(self, key: str, value: float) -> None:
        """Record one value of a per-optimizer-step quantity; :meth:`pop` gives their mean."""
        self.values.setdefault(key, []).append(value)

    def pop(self) -> dict[str, float]:
        """The counts and the means, and a fresh start."""
        summary = dict(self.counts)
        summary.update({key: sum(values) / len(values) for key, values in self.values.items()})
        self.counts, self.values, self.last_values = {}, {}, self.values
        return summary


def _backward(loss: torch.Tensor) -> None:
    loss.backward()


def _clip(optimizer: torch.optim.Optimizer, max_norm: float) -> None:
    parameters = [p for group in optimizer.param_groups for p in group["params"]]
    torch.nn.utils.clip_grad_norm_(parameters, max_norm)


class GSPOUpdate:
    """GSPO (or GRPO) updates of each trained role's adapter.

    Args:
        config: The objective, its clipping and the optimizer settings.
        policy: The model; :meth:`~tracer_pl.engines.base.Policy.role_parameters` gives each role's weights.
        backward: Computes gradients of a loss (the Lightning module passes ``manual_backward``, which applies
            its precision plugin).
        clip_gradients: Clips an optimizer's gradients to a norm (the module passes its own, for the same reason).
    """

    def __init__(self, config: GSPOConfig, policy: Policy, *,
                 backward: Callable[[torch.Tensor], None] = _backward,
                 clip_gradients: Callable[[torch.optim.Optimizer, float], None] = _clip) -> None:
        self.config = config
        self.policy = policy
        self.backward = backward
        self.clip_gradients = clip_gradients
        self.statistics = StepStatistics()
        self.optimizers: dict[str, torch.optim.Optimizer] = {}

    def build_optimizers(self, roles: Sequence[str]) -> list[torch.optim.Optimizer]:
        """One Adam per trained role, over that role's adapter parameters only (in the order of ``roles``)."""
        self.optimizers = {
            role: torch.optim.Adam(self.policy.role_parameters(role), lr=self.config.lr,
                                   weight_decay=self.config.weight_decay)
            for role in roles
        }
        return list(self.optimizers.values())

    def use_optimizers(self, optimizers: Mapping[str, torch.optim.Optimizer]) -> None:
        """Step these instead (Lightning's wrappers of :meth:`build_optimizers`' own, which count global steps)."""
        self.optimizers = dict(optimizers)

    # ------------------------------------------------------------------ a role's step on a round's groups
    def step(self, role: str, groups: Sequence[CandidateGroup]) -> None:
        """The role's updates on the groups with signal: one per group, or one over all of them.

        With ``gspo.update_per: group`` (the default) each candidate group gets its own update, as in the paper's
        one-problem-at-a-time protocol; the groups were all sampled before the first update, so later groups are
        scored against their sampling policy (``old`` log-probs taken before any update). With ``round`` the
        round's groups share one update. Under data parallelism every process runs as many updates as the
        busiest process (the others join with nothing to train on) and gradients are averaged over all
        processes' candidates before each step.
        """
        broken = sum(not torch.isfinite(g.rewards).all() for g in groups)
        if broken:  # group_advantages already refused them; count them so they show in the logs
            self.statistics.count(seat_key("gspo", role, "skipped_nonfinite"), float(broken))
        live = [g for g in groups if g.has_signal]
        updates = [live] if self.config.update_per == "round" else [[g] for g in live]
        if is_distributed():
            busiest = max(gather_objects(len(updates)))
            updates += [[] for _ in range(busiest - len(updates))]
        old_logps = [None] + [self._sampling_logprobs(role, update) for update in updates[1:]]
        for update, old_logp in zip(updates, old_logps):
            self.update(role, update, old_logp)

    def update(self, role: str, live: Sequence[CandidateGroup], old_logp: torch.Tensor | None = None) -> None:
        """``steps_per_group`` optimizer steps of the role's adapter on the ``live`` candidate groups.

        ``old_logp`` scores the candidates under the policy that sampled them; None means that policy is the
        current one, so the first forward pass provides it (ratio 1, no extra forward).
        """
        distributed = is_distributed()
        if not live and not distributed:
            return
        completions = [c for g in live for c in g.completions]
        advantages = torch.cat([g.advantages for g in live]) if live else None  # type: ignore[misc]
        weights = None
        for step in range(self.config.steps_per_group):
            self.optimizers[role].zero_grad(set_to_none=True)
            result, finite = None, True
            if live:
                token_logp, mask = self.policy.token_logprobs(role, completions)
                if not self.config.include_eos:
                    mask = without_stop_tokens(mask, torch.tensor([not c.truncated for c in completions]))
                    token_logp = token_logp * mask
                    old_logp = None if old_logp is None else old_logp * mask
                if old_logp is None:
                    old_logp = token_logp.detach()
                if step == 0:
                    weights = self._sampling_correction(role, completions, old_logp, mask)
                result = self._loss(token_logp, old_logp, mask, advantages.to(token_logp.device), weights)
                finite = bool(torch.isfinite(result.loss))
                if finite:
                    self.backward(result.loss)
            if not self._optimizer_step(role, finite, len(completions), distributed):
                break
            if result is not None:
                self.statistics.average(seat_key("gspo", role, "loss"), result.loss.item())
                self.statistics.average(seat_key("gspo", role, "clip_frac"), result.clip_fraction)

    def _optimizer_step(self, role: str, finite: bool, candidates: int, distributed: bool) -> bool:
        """Average gradients over processes, skip a non-finite step, clip, step, tell the policy; False: stop."""
        optimizer, parameters = self.optimizers[role], self.policy.role_parameters(role)
        if distributed:
            finite = not all_reduce_sum(torch.tensor([0.0 if finite else 1.0])).item()
            if finite and not weighted_gradient_mean(parameters, float(candidates)):
                return False  # no process had anything to train on
        grad_norm = _grad_norm(parameters) if finite else math.nan
        if not math.isfinite(grad_norm):
            optimizer.zero_grad(set_to_none=True)
            self.statistics.count(seat_key("gspo", role, "skipped_nonfinite"))
            return False
        if self.config.max_grad_norm:
            self.clip_gradients(optimizer, self.config.max_grad_norm)
        optimizer.step()
        self.policy.after_optimizer_step(role)
        self.statistics.count(seat_key("gspo", role, "steps"))
        self.statistics.average(seat_key("gspo", role, "grad_norm"), grad_norm)
        return True

    def _loss(self, token_logp: torch.Tensor, old_token_logp: torch.Tensor, mask: torch.Tensor,
              advantages: torch.Tensor, weights: torch.Tensor | None) -> PolicyLoss:
        """The clipped surrogate at the configured importance level, with its clip fraction."""
        clip = self.config.clip
        if self.config.importance_level == "token":
            return grpo_loss(token_logp, old_token_logp, mask, advantages, clip, weights)
        return gspo_loss(token_logp.sum(-1), old_token_logp.sum(-1), mask.sum(-1), advantages, clip, weights)

    def _sampling_logprobs(self, role: str, groups: Sequence[CandidateGroup]) -> torch.Tensor | None:
        """Token log-probs of the groups' candidates under the current (sampling) policy, before any update."""
        if not groups:
            return None
        with torch.no_grad():
            token_logp, _ = self.policy.token_logprobs(role, [c for g in groups for c in g.completions])
        return token_logp

    def _sampling_correction(self, role: str, completions: Sequence[Completion], old_token_logp: torch.Tensor,
                             mask: torch.Tensor) -> torch.Tensor | None:
        """Log how far the sampling engine's log-probs are from the training model's; the truncated IS weights.

        Completions without ``sampling_logprobs`` (the Hugging Face engine samples with the training model
        itself) have nothing to compare and get no weights.

        Raises:
            ConfigError: ``gspo.importance_sampling_correction`` is on but the engine reports no log-probs.
        """
        cfg = self.config
        reported = [c.sampling_logprobs for c in completions]
        if any(logp is None for logp in reported):
            if cfg.importance_sampling_correction:
                raise ConfigError(
                    "--model.gspo.importance_sampling_correction needs an engine that reports the sampled tokens' "
                    "log-probs (tracer_pl.engines.vllm.VLLMEngine, or the Hugging Face engine with "
                    f"--model.backbone.generation_weights merged or merged_bf16); {type(self.policy).__name__} does "
                    "not"
                )
            return None
        sampling = torch.zeros_like(old_token_logp)
        for row, logp in enumerate(reported):
            sampling[row, : len(logp)] = logp.to(sampling)
        self.statistics.average(seat_key("gspo", role, "sampling_logp_mismatch"),
                                sampling_logp_mismatch(old_token_logp, sampling, mask))
        if not cfg.importance_sampling_correction:
            return None
        return truncated_importance_weights(old_token_logp, sampling, mask, cfg.importance_sampling_cap,
                                            cfg.importance_level)


def _grad_norm(parameters: Sequence[torch.nn.Parameter]) -> float:
    norms = [p.grad.detach().double().norm() for p in parameters if p.grad is not None]
    return float(torch.stack(norms).norm()) if norms else 0.0


__all__ = ["GSPOUpdate", "StepStatistics"]
