"""Data-parallel training: every process plays its own problems; adapters and controllers stay identical.

:class:`TracerDDPStrategy` (``--trainer.strategy tracer_ddp``) is Lightning's DDP strategy without the
``DistributedDataParallel`` wrapper. The wrapper cannot serve TRACER: the backbone is called directly (not through
the module's ``forward``) many times per step, and processes take different numbers of GSPO steps per batch
(a candidate group without reward signal makes no step). Instead :class:`~tracer_pl.training.module.TracerModule`

* runs every role's GSPO step collectively in every round on every process (an empty step where nothing was
  sampled), all-reducing the gradients weighted by each process's number of candidates -- the gradient of the
  loss over all processes' candidates -- so the same optimizer step keeps the adapters identical;
* records its controller updates during a round and, at the round's end, replays every process's updates in
  process order (``all_gather_object``), so the regret tables stay identical everywhere.

4-bit QLoRA + this strategy is the multi-GPU path (one copy of the quantized base per GPU). Lightning's FSDP does
not support manual optimization, so it is not offered.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist
from lightning.pytorch.strategies import DDPStrategy, StrategyRegistry


class TracerDDPStrategy(DDPStrategy):
    """DDP processes and process group without the ``DistributedDataParallel`` wrapper (see the module doc)."""

    strategy_name = "tracer_ddp"

    def configure_ddp(self) -> None:
        """Keep the module unwrapped; start every process from rank 0's trainable weights."""
        assert self.model is not None
        for parameter in self.model.parameters():
            if parameter.requires_grad:
                dist.broadcast(parameter.data, src=0)

    def pre_backward(self, closure_loss: torch.Tensor) -> None:
        """Nothing to prepare: TracerModule all-reduces its gradients itself."""

    def post_backward(self, closure_loss: torch.Tensor) -> None:
        """Nothing to finish: TracerModule all-reduces its gradients itself."""

    @classmethod
    def register_strategies(cls, strategy_registry: Any) -> None:
        strategy_registry.register(cls.strategy_name, cls, description="DDP for TracerModule (no DDP wrapper)")


if TracerDDPStrategy.strategy_name not in StrategyRegistry:
    TracerDDPStrategy.register_strategies(StrategyRegistry)


def is_distributed() -> bool:
    """Whether a process group with more than one process is running."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def gather_objects(local: Any) -> list[Any]:
    """Every process's ``local`` object, in rank order (``[local]`` without a process group)."""
    if not is_distributed():
        return [local]
    gathered: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, local)
    return gathered


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum ``tensor`` over processes in place (no-op without a process group); returns it."""
    if is_distributed():
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def weighted_gradient_mean(parameters: list[torch.nn.Parameter], weight: float) -> float:
    """Replace each gradient by ``sum_p weight_p * grad_p / sum_p weight_p`` over processes; return the weight sum.

    One all-reduce over all gradients flattened together. Parameters without a gradient contribute zeros; with a
    total weight of 0 every gradient becomes zero.
    """
    total = float(all_reduce_sum(torch.tensor([weight], dtype=torch.float64))[0])
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in parameters]
    flat = all_reduce_sum(torch.cat([g.flatten() for g in grads]) * weight)
    flat = flat / total if total > 0 else torch.zeros_like(flat)
    offset = 0
    for parameter in parameters:
        parameter.grad = flat[offset : offset + parameter.numel()].view_as(parameter).clone()
        offset += parameter.numel()
    return total
