"""Stop training at a budget of generated tokens, so that two methods can be compared at equal generation work."""

from __future__ import annotations

import logging
from typing import Any

import lightning as L
import torch

from tracer_pl.errors import require

log = logging.getLogger(__name__)

GENERATED = "train/generated_tokens_total"
"""The metric key of the completion tokens generated in training so far, over all processes."""


class TokenBudget(L.Callback):
    """Ends ``fit`` after the training step at which the generated tokens reach ``max_completion_tokens``.

    Generated tokens are the completion tokens of every generation call of training (GSPO candidates, fresh
    utterances and counterfactual samples for TRACER; the G proposals for single-agent training), summed over all
    processes: what ``train/completion_tokens_per_problem`` counts per step. The count is logged as
    ``train/generated_tokens_total`` and saved in checkpoints, so a resumed run keeps counting. The step that
    crosses the budget is completed, so a run overshoots by less than one step's tokens; ``fit finished`` and the
    log say where it stopped. Set ``trainer.max_epochs`` high enough for the budget to be reached: a run whose
    epochs end first says so.

    Args:
        max_completion_tokens: The budget (at least 1).
    """

    def __init__(self, max_completion_tokens: int) -> None:
        require(isinstance(max_completion_tokens, int) and max_completion_tokens >= 1,
                "TokenBudget.max_completion_tokens", "a whole number >= 1", max_completion_tokens)
        self.max_completion_tokens = max_completion_tokens
        self.generated = 0

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        records = (outputs or {}).get("records", [])
        local = torch.tensor(float(sum(r.completion_tokens for r in records)))
        self.generated += int(trainer.strategy.reduce(local, reduce_op="sum").item())
        pl_module.log(GENERATED, float(self.generated), rank_zero_only=True)
        if self.generated >= self.max_completion_tokens and not trainer.should_stop:
            trainer.should_stop = True
            log.info("token budget reached: %d generated tokens (budget %d) after %d steps", self.generated,
                     self.max_completion_tokens, trainer.global_step)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.generated < self.max_completion_tokens:
            log.warning("token budget not reached: %d of %d tokens generated when training ended; raise "
                        "--trainer.max_epochs", self.generated, self.max_completion_tokens)

    def state_dict(self) -> dict[str, Any]:
        return {"generated": self.generated, "max_completion_tokens": self.max_completion_tokens}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.generated = int(state_dict.get("generated", 0))
