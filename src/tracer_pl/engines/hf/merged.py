"""A copy of the base with one role's adapter merged into it, for generation (``--model.backbone.generation_weights``).

peft's unmerged LoRA layers add two small matmuls per adapted projection to every decoded token, and on a CPU
generation calls are narrow (2-8 sequences), so that overhead is a large part of a call. A copy of the base whose
adapted projections hold ``W + scaling * B @ A`` decodes with plain linear layers instead, and in ``bf16`` its
matmuls are faster still on CPUs with bf16 instructions.

The copy serves one role at a time. It is refreshed when another role generates, or when the role's adapter
weights have changed since the merge (an optimizer step, loaded adapters or a restored checkpoint: every in-place
write to a tensor bumps its version counter, which is what is compared). Training and scoring never touch it: they
run on the peft model, so the gradients and the GSPO ratio are those of the unmerged adapter in the base's own
precision.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from peft.tuners.lora import LoraLayer
from transformers import AutoModelForCausalLM

from tracer_pl.errors import ConfigError

GENERATION_DTYPES = {"merged": None, "merged_bf16": torch.bfloat16}
"""The merged modes and the dtype of their copy (None: the base's own)."""


class MergedCopy:
    """A plain ``transformers`` model with the base's weights, into which one adapter at a time is merged.

    Args:
        peft_model: The policy's peft model (adapters on a frozen, full-precision base).
        dtype: The copy's weight dtype; None keeps the base's, and then the weights no adapter touches (embeddings,
            norms, the output head) are shared with the base instead of copied.

    Raises:
        ConfigError: The base is quantized (a merged copy would hold it at full size again).
    """

    def __init__(self, peft_model: torch.nn.Module, dtype: torch.dtype | None = None) -> None:
        base = peft_model.get_base_model()
        if getattr(base, "is_loaded_in_4bit", False) or getattr(base, "is_loaded_in_8bit", False):
            raise ConfigError(
                "--model.backbone.generation_weights merged/merged_bf16 needs a full-precision base; with "
                "--model.backbone.precision 4bit keep generation_weights: adapters (a merged copy would hold the "
                "base at full size again)"
            )
        self.layers = {_plain_name(name): module for name, module in base.named_modules()
                       if isinstance(module, LoraLayer)}
        reference = next(p for n, p in base.named_parameters() if "lora_" not in n)
        self.dtype = dtype or reference.dtype
        self.model = AutoModelForCausalLM.from_config(base.config, dtype=self.dtype).to(reference.device)
        self.model.generation_config = base.generation_config
        self.model.requires_grad_(False).eval()
        own = dict(self.model.named_parameters())
        shared = self.dtype == reference.dtype
        with torch.no_grad():
            for name, tensor in _plain_state(base).items():
                if name not in own:
                    continue  # a tied output head: the copy ties its own
                if shared and name.rsplit(".", 1)[0] not in self.layers:
                    own[name].data = tensor  # never written: the copy and the base read the same memory
                else:
                    own[name].copy_(tensor)
        self.model.tie_weights()
        self.targets = {name: module for name, module in self.model.named_modules() if name in self.layers}
        self.role: str | None = None
        self.versions: tuple[int, ...] = ()

    def for_role(self, role: str, parameters: Sequence[torch.Tensor]) -> torch.nn.Module:
        """The copy with ``role``'s adapter merged in, merging again if the role or its weights changed.

        Args:
            role: The adapter to merge.
            parameters: The adapter's tensors, whose version counters tell whether they were written since.
        """
        versions = tuple(p._version for p in parameters)
        if role != self.role or versions != self.versions:
            self._merge(role)
            self.role, self.versions = role, versions
        return self.model

    @torch.no_grad()
    def _merge(self, role: str) -> None:
        for name, layer in self.layers.items():
            weight = layer.get_base_layer().weight
            delta = layer.get_delta_weight(role) if role in layer.lora_A else 0
            self.targets[name].weight.copy_(weight.float() + delta)


def _plain_name(name: str) -> str:
    """A base-model parameter or module name without peft's wrapper part (``q_proj.base_layer`` -> ``q_proj``)."""
    return name.replace(".base_layer", "")


def _plain_state(base: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The base's own weights under the names a plain model of its class has (no adapter tensors)."""
    return {_plain_name(name): tensor for name, tensor in base.state_dict().items() if "lora_" not in name}


__all__ = ["GENERATION_DTYPES", "MergedCopy"]
