"""The generation-credit step of a role (TRACER §3) as the Lightning module runs it: GSPO updates of its adapter.

:class:`GSPOStepMixin` turns a round's scored candidate groups into optimizer steps of the role's adapter: the
loss itself is :mod:`tracer_pl.gspo` (pure functions), the log-probabilities come from the policy
(:meth:`~tracer_pl.engine.Policy.token_logprobs`), and the policy hears about every step
(:meth:`~tracer_pl.engine.Policy.after_optimizer_step`). Data parallelism averages gradients over processes
before each step (:mod:`tracer_pl.distributed`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch

from tracer_pl.dialogue import CandidateGroup
from tracer_pl.distributed import all_reduce_sum, gather_objects, is_distributed, weighted_gradient_mean
from tracer_pl.errors import ConfigError
from tracer_pl.gspo import (
    clip_fraction,
    grpo_loss,
    gspo_loss,
    sampling_logp_mismatch,
    token_clip_fraction,
    truncated_importance_weights,
)
from tracer_pl.keys import seat_key


class GSPOStepMixin:
    """GSPO (or GRPO) updates for :class:`~tracer_pl.module.TracerModule`.

    The module provides ``gspo_config``, ``backbone`` (the policy), ``trained_roles``, ``optimizers()``,
    ``manual_backward``, ``clip_gradients``, ``device`` and the step statistics ``_count``/``_average``.
    """

    def gspo_step(self, role: str, groups: list[CandidateGroup]) -> None:
        """The role's GSPO (or GRPO) updates on the groups with signal: one per group, or one over all of them.

        With ``gspo.update_per: group`` (the default) each candidate group gets its own update, as in the paper's
        one-problem-at-a-time protocol; the groups were all sampled before the first update, so later groups are
        scored against their sampling policy (``old`` log-probs taken before any update). With ``round`` the
        round's groups share one update. Under data parallelism every process runs as many updates as the
        busiest process (the others join with nothing to train on) and gradients are averaged over all
        processes' candidates before each step (:mod:`tracer_pl.distributed`).
        """
        broken = sum(not torch.isfinite(g.rewards).all() for g in groups)
        if broken:  # group_advantages already refused them; count them so they show in the logs
            self._count(seat_key("gspo", role, "skipped_nonfinite"), float(broken))
        live = [g for g in groups if g.has_signal]
        updates = [live] if self.gspo_config.update_per == "round" else [[g] for g in live]
        if is_distributed():
            busiest = max(gather_objects(len(updates)))
            updates += [[] for _ in range(busiest - len(updates))]
        old_logps = [None] + [self._sampling_logprobs(role, update) for update in updates[1:]]
        for update, old_logp in zip(updates, old_logps):
            self._gspo_update(role, update, old_logp)

    def _sampling_logprobs(self, role: str, groups: list[CandidateGroup]) -> torch.Tensor | None:
        """Token log-probs of the groups' candidates under the current (sampling) policy, before any update."""
        if not groups:
            return None
        with torch.no_grad():
            token_logp, _ = self.backbone.token_logprobs(role, [c for g in groups for c in g.completions])
        return token_logp

    def _gspo_update(self, role: str, live: list[CandidateGroup], old_logp: torch.Tensor | None = None) -> None:
        """``steps_per_group`` optimizer steps of the role's adapter on ``live`` candidate groups.

        ``old_logp`` scores the candidates under the policy that sampled them; None means that policy is the
        current one, so the first forward pass provides it (ratio 1, no extra forward).
        """
        distributed = is_distributed()
        if not live and not distributed:
            return
        optimizer = self._optimizer(role)
        parameters = self.backbone.role_parameters(role)
        completions = [c for g in live for c in g.completions]
        advantages = torch.cat([g.advantages for g in live]).to(self.device) if live else None  # type: ignore[misc]
        weights = None
        for step in range(self.gspo_config.steps_per_group):
            optimizer.zero_grad(set_to_none=True)
            loss, clip_frac, finite = None, None, True
            if live:
                token_logp, mask = self.backbone.token_logprobs(role, completions)
                if old_logp is None:
                    old_logp = token_logp.detach()
                if step == 0:
                    weights = self._sampling_correction(role, completions, old_logp, mask)
                loss, clip_frac = self._policy_loss(token_logp, old_logp, mask, advantages, weights)
                finite = bool(torch.isfinite(loss))
                if finite:
                    self.manual_backward(loss)
            if distributed:
                finite = not all_reduce_sum(torch.tensor([0.0 if finite else 1.0])).item()
                if finite and not weighted_gradient_mean(parameters, len(completions) if live else 0.0):
                    break  # no process had anything to train on
            grad_norm = _grad_norm(parameters) if finite else math.nan
            if not math.isfinite(grad_norm):
                optimizer.zero_grad(set_to_none=True)
                self._count(seat_key("gspo", role, "skipped_nonfinite"), 1.0)
                break
            cfg = self.gspo_config
            if cfg.max_grad_norm:
                self.clip_gradients(optimizer, gradient_clip_val=cfg.max_grad_norm, gradient_clip_algorithm="norm")
            optimizer.step()
            self.backbone.after_optimizer_step(role)
            self._count(seat_key("gspo", role, "steps"), 1.0)
            self._average(seat_key("gspo", role, "grad_norm"), grad_norm)
            if loss is not None and clip_frac is not None:
                self._average(seat_key("gspo", role, "loss"), loss.item())
                self._average(seat_key("gspo", role, "clip_frac"), clip_frac())

    def _policy_loss(self, token_logp: torch.Tensor, old_token_logp: torch.Tensor, mask: torch.Tensor,
                     advantages: torch.Tensor, weights: torch.Tensor | None = None
                     ) -> tuple[torch.Tensor, Callable[[], float]]:
        """The clipped surrogate at the configured importance level, and a thunk for its clip fraction."""
        cfg = self.gspo_config
        clip = (cfg.epsilon, cfg.epsilon_high, cfg.log_ratio_clamp)
        if cfg.importance_level == "token":
            args = (token_logp, old_token_logp, mask, advantages, *clip)
            return grpo_loss(*args, weights), lambda: token_clip_fraction(*args)
        args = (token_logp.sum(-1), old_token_logp.sum(-1), mask.sum(-1), advantages, *clip)
        return gspo_loss(*args, weights), lambda: clip_fraction(*args)

    def _sampling_correction(self, role: str, completions: Sequence[Any], old_token_logp: torch.Tensor,
                             mask: torch.Tensor) -> torch.Tensor | None:
        """Log how far the sampling engine's log-probs are from the training model's; the truncated IS weights.

        Completions without ``sampling_logprobs`` (the Hugging Face engine samples with the training model
        itself) have nothing to compare and get no weights.

        Raises:
            ConfigError: ``gspo.importance_sampling_correction`` is on but the engine reports no log-probs.
        """
        cfg = self.gspo_config
        reported = [c.sampling_logprobs for c in completions]
        if any(logp is None for logp in reported):
            if cfg.importance_sampling_correction:
                raise ConfigError(
                    "--model.gspo.importance_sampling_correction needs an engine that reports the sampled tokens' "
                    f"log-probs (tracer_pl.vllm_engine.VLLMEngine); {type(self.engine).__name__} does not"
                )
            return None
        sampling = torch.zeros_like(old_token_logp)
        for row, logp in enumerate(reported):
            sampling[row, : len(logp)] = logp.to(sampling)
        self._average(seat_key("gspo", role, "sampling_logp_mismatch"),
                      sampling_logp_mismatch(old_token_logp, sampling, mask))
        if not cfg.importance_sampling_correction:
            return None
        return truncated_importance_weights(old_token_logp, sampling, mask, cfg.importance_sampling_cap,
                                            cfg.importance_level)

    def _optimizer(self, role: str) -> torch.optim.Optimizer:
        optimizers = self.optimizers()
        optimizers = optimizers if isinstance(optimizers, list) else [optimizers]
        return optimizers[self.trained_roles.index(role)]


def _grad_norm(parameters: Sequence[torch.nn.Parameter]) -> float:
    norms = [p.grad.detach().double().norm() for p in parameters if p.grad is not None]
    return float(torch.stack(norms).norm()) if norms else 0.0
