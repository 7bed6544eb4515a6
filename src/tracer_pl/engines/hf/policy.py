"""One frozen base model with one LoRA adapter per role: the Hugging Face :class:`~tracer_pl.engines.base.Policy`.

Section 1 of the method gives each role its own LoRA adapter on one frozen base (the authors loaded a full
model copy per role). Switching the speaking role switches peft's active adapter: no merge, no copy of the
base. This module is the adapter store (loading the base, one adapter per role, saving and loading them);
generation is in :mod:`tracer_pl.engines.hf.generation` and scoring (GSPO's log-probabilities) in
:mod:`tracer_pl.engines.hf.scoring`, functions over this class that its ``generate`` and ``token_logprobs`` call.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from peft import (
    LoraConfig,
    PeftModel,
    get_peft_model,
    load_peft_weights,
    prepare_model_for_kbit_training,
    set_peft_model_state_dict,
)
from peft.tuners.tuners_utils import BaseTunerLayer
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from tracer_pl.core.agent import Completion, Messages
from tracer_pl.core.problem import Problem
from tracer_pl.core.roles import DialogueView, Role, Utterance
from tracer_pl.engines.base import BackboneConfig
from tracer_pl.engines.hf import export, generation, scoring
from tracer_pl.engines.hf.export import RunSummary
from tracer_pl.engines.hf.merged import GENERATION_DTYPES, MergedCopy
from tracer_pl.engines.hf.models import ComputeDtype, Precision, load_base_model
from tracer_pl.errors import ConfigError, DataError

_ATTENTION_MLP = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
DEFAULT_TARGETS = {
    "qwen2": _ATTENTION_MLP,
    "llama": _ATTENTION_MLP,
    "phi3": ["qkv_proj", "o_proj", "gate_up_proj", "down_proj"],
}
"""LoRA targets per ``model_type``: every attention and MLP projection (section 3's defaults)."""

_KNOWN_TARGETS = [*_ATTENTION_MLP, "qkv_proj", "gate_up_proj"]


def infer_target_modules(model: torch.nn.Module) -> list[str]:
    """The LoRA target module names for a model's architecture.

    Qwen2 and Llama get q/k/v/o/gate/up/down projections and Phi-3 its fused ``qkv_proj``/``gate_up_proj``;
    any other architecture gets those of the known projection names that name linear layers in it.

    Raises:
        ConfigError: None of the names is a linear layer of the model.
    """
    linear = {name.rsplit(".", 1)[-1] for name, m in model.named_modules() if isinstance(m, torch.nn.Linear)}
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    wanted = DEFAULT_TARGETS.get(model_type, _KNOWN_TARGETS)
    targets = [name for name in wanted if name in linear]
    if not targets:
        raise ConfigError(
            f"cannot infer LoRA target modules for model_type={model_type!r}: none of {wanted} is a linear "
            "layer of the model; set --model.backbone.target_modules to the names of its attention and MLP "
            "projections"
        )
    return targets


class HFPolicy(torch.nn.Module):
    """A peft model holding one LoRA adapter per role on a frozen base, and its tokenizer.

    Every role's LoRA weights require gradients at all times (peft alone would mark only the active adapter),
    so an optimizer built over :meth:`role_parameters` works whatever role is active. Gradients still reach
    only the adapter that was active in the forward pass: the others take no part in it.

    The generation settings are plain attributes and may be changed between calls.

    Args:
        model: A ``PeftModel`` with one LoRA adapter named after each role, on a frozen base.
        tokenizer: Its tokenizer: left padding, a pad token, a chat template.
        roles: The adapter names, one per role.
        max_new_tokens: Generation limit per completion.
        temperature: Sampling temperature; 0 decodes greedily.
        top_p: Nucleus-sampling threshold; None keeps the model's ``generation_config`` value.
        top_k: Top-k filter (0 switches it off); None keeps the model's ``generation_config`` value.
        repetition_penalty: Repetition penalty (1 switches it off), also applied when decoding greedily; None
            keeps the model's ``generation_config`` value.
        share_prompt_cache: Encode a prompt once for all its samples.
        chat_template_kwargs: Extra variables for the tokenizer's chat template (e.g. ``enable_thinking``).
        generation_weights: ``adapters`` decodes with peft's unmerged adapters; ``merged`` and ``merged_bf16``
            with a copy of the base (in its dtype, or bf16) holding the speaking role's adapter merged in
            (:mod:`tracer_pl.engines.hf.merged`).
        score_autocast: ``bf16`` runs the scoring forward pass (and so GSPO's backward) under ``torch.autocast``
            in bf16; ``off`` in the base's dtype. The log-softmax stays in fp32 either way.

    Raises:
        ConfigError: A role has no adapter in ``model``, or an unknown ``generation_weights``/``score_autocast``.
    """

    def __init__(
        self,
        model: PeftModel,
        tokenizer: PreTrainedTokenizerBase,
        roles: Sequence[str],
        *,
        max_new_tokens: int = 256,
        temperature: float = 0.3,
        top_p: float | None = None,
        top_k: int | None = None,
        repetition_penalty: float | None = None,
        share_prompt_cache: bool = True,
        chat_template_kwargs: dict[str, Any] | None = None,
        generation_weights: str = "adapters",
        score_autocast: str = "off",
    ) -> None:
        super().__init__()
        if generation_weights not in ("adapters", *GENERATION_DTYPES):
            raise ConfigError(f"generation_weights must be adapters, merged or merged_bf16, got {generation_weights!r}")
        if score_autocast not in ("off", "bf16"):
            raise ConfigError(f"score_autocast must be off or bf16, got {score_autocast!r}")
        missing = [role for role in roles if role not in model.peft_config]
        if missing or not roles:
            raise ConfigError(
                f"roles {list(roles)}: no adapter named {missing} in the model (it has "
                f"{list(model.peft_config)})"
            )
        self.model = model
        self.tokenizer = tokenizer
        self.roles = list(roles)
        self.max_new_tokens = max_new_tokens
        self.temperature = temperature
        self.top_p = top_p
        self.top_k = top_k
        self.repetition_penalty = repetition_penalty
        self.share_prompt_cache = share_prompt_cache
        self.chat_template_kwargs = dict(chat_template_kwargs or {})
        self.generation_weights = generation_weights
        self.score_autocast = score_autocast
        self.stop_token_ids = _stop_token_ids(model, tokenizer)
        self._merged: list[MergedCopy] = []  # built on first use; a list keeps it out of the module's state
        self._mark_adapters_trainable()

    @classmethod
    def from_pretrained(
        cls,
        name_or_path: str,
        roles: Sequence[str] = ("proposer", "reviewer"),
        *,
        precision: Precision = "fp32",
        compute_dtype: ComputeDtype = "bf16",
        lora_r: int = 8,
        lora_alpha: int = 16,
        lora_dropout: float = 0.0,
        target_modules: Sequence[str] | None = None,
        gradient_checkpointing: bool = False,
        max_new_tokens: int = 256,
        temperature: float = 0.3,
        top_p: float | None = None,
        top_k: int | None = None,
        repetition_penalty: float | None = None,
        device: str | torch.device | None = None,
        adapter_seed: int = 0,
        share_prompt_cache: bool = True,
        chat_template_kwargs: dict[str, Any] | None = None,
        generation_weights: str = "adapters",
        score_autocast: str = "off",
    ) -> HFPolicy:
        """Load the base (:func:`tracer_pl.engines.hf.models.load_base_model`) and add one fresh LoRA adapter per role.

        Args:
            name_or_path: Alias, local directory or hub id of the base model.
            roles: One adapter per name; the order fixes nothing but the first active adapter.
            precision: ``fp32``, ``bf16``, ``fp16`` or ``4bit`` (QLoRA: NF4 base, prepared for k-bit
                training).
            compute_dtype: 4-bit matmul dtype on a GPU.
            lora_r: LoRA rank.
            lora_alpha: LoRA scaling numerator (the update is scaled by ``lora_alpha / lora_r``).
            lora_dropout: Dropout on the LoRA input.
            target_modules: Module names to adapt; None infers them (:func:`infer_target_modules`).
            gradient_checkpointing: Recompute activations in the backward pass (non-reentrant checkpointing).
            max_new_tokens: Generation limit per completion.
            temperature: Sampling temperature.
            top_p: Nucleus-sampling threshold; None: the model's generation config.
            top_k: Top-k filter; None: the model's generation config.
            repetition_penalty: Repetition penalty; None: the model's generation config.
            device: Target device; default CUDA when available.
            adapter_seed: Seed of the LoRA initialisation (role ``i`` uses ``adapter_seed + i``), so the same
                arguments give the same initial adapters whatever ran before; the global random state is
                left untouched.
            share_prompt_cache: When a prompt gets several samples, compute its KV cache once and copy it to
                every sample (see :meth:`generate`).
            chat_template_kwargs: Extra variables for the tokenizer's chat template.
            generation_weights: ``adapters``, ``merged`` or ``merged_bf16`` (see the class).
            score_autocast: ``off`` or ``bf16`` (see the class).

        Raises:
            ConfigError: Empty or repeated role names, or target modules that cannot be inferred.
        """
        if not roles or len(set(roles)) != len(roles) or not all(roles):
            raise ConfigError(f"roles must be distinct non-empty names, got {list(roles)}")
        base, tokenizer = load_base_model(
            name_or_path, precision=precision, compute_dtype=compute_dtype, device=device
        )
        checkpointing = {"use_reentrant": False}
        if getattr(base, "is_loaded_in_4bit", False):
            base = prepare_model_for_kbit_training(
                base,
                use_gradient_checkpointing=gradient_checkpointing,
                gradient_checkpointing_kwargs=checkpointing,
            )
        elif gradient_checkpointing:
            _enable_checkpointing(base, checkpointing)
        config = LoraConfig(
            r=lora_r,
            lora_alpha=lora_alpha,
            lora_dropout=lora_dropout,
            task_type="CAUSAL_LM",
            target_modules=list(target_modules or infer_target_modules(base)),
        )
        with torch.random.fork_rng(devices=[]):  # the same initial adapters whatever ran before
            torch.manual_seed(adapter_seed)
            model = get_peft_model(base, config, adapter_name=roles[0])
            for index, role in enumerate(roles[1:], start=1):
                torch.manual_seed(adapter_seed + index)
                model.add_adapter(role, config)
        return cls(
            model, tokenizer, roles, max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p,
            top_k=top_k, repetition_penalty=repetition_penalty, share_prompt_cache=share_prompt_cache,
            chat_template_kwargs=chat_template_kwargs, generation_weights=generation_weights,
            score_autocast=score_autocast,
        )

    @classmethod
    def from_config(cls, config: BackboneConfig, roles: Sequence[str]) -> HFPolicy:
        """:meth:`from_pretrained` with the settings of ``--model.backbone``."""
        return cls.from_pretrained(
            config.name, roles=roles, precision=config.precision, compute_dtype=config.compute_dtype,
            lora_r=config.lora_r, lora_alpha=config.lora_alpha, lora_dropout=config.lora_dropout,
            target_modules=config.target_modules, gradient_checkpointing=config.gradient_checkpointing,
            max_new_tokens=config.max_new_tokens, temperature=config.temperature, top_p=config.top_p,
            top_k=config.top_k, repetition_penalty=config.repetition_penalty, adapter_seed=config.adapter_seed,
            share_prompt_cache=config.share_prompt_cache, chat_template_kwargs=config.chat_template_kwargs,
            generation_weights=config.generation_weights, score_autocast=config.score_autocast,
        )

    # ------------------------------------------------------------------ the Policy protocol
    def generate(self, role: str, prompts: Sequence[Messages], num_samples: int | Sequence[int] = 1, *,
                 greedy: bool = False) -> list[list[Completion]]:
        """``num_samples[i]`` completions of ``prompts[i]`` under ``role``'s adapter (:func:`.generation.generate`)."""
        return generation.generate(self, role, prompts, num_samples, greedy=greedy)

    def token_logprobs(self, role: str, completions: Sequence[Completion]) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-token log-probabilities under ``role``'s adapter (:func:`.scoring.token_logprobs`)."""
        return scoring.token_logprobs(self, role, completions)

    def render(self, prompt: Messages) -> str:
        """The prompt as text, through the tokenizer's chat template (:func:`.generation.render`)."""
        return generation.render(self, prompt)

    def sampling_settings(self) -> dict[str, float | int]:
        """The sampling settings in effect: the set ones, and the model's ``generation_config`` for the rest."""
        config = self.model.generation_config
        chosen = {"top_p": self.top_p, "top_k": self.top_k, "repetition_penalty": self.repetition_penalty}
        defaults = {"top_p": 1.0, "top_k": 50, "repetition_penalty": 1.0}  # transformers' own when nobody sets one
        settings: dict[str, float | int] = {"temperature": self.temperature}
        for name, value in chosen.items():
            if value is None:
                value = getattr(config, name, None)
            settings[name] = defaults[name] if value is None else value
        return settings

    def check_prompts(self, problems: Sequence[Problem], roles: Sequence[Role]) -> None:
        """Refuse a problem whose dialogue cannot fit in the model's context, before anything is generated.

        A prompt holds the question and at most :meth:`~tracer_pl.core.roles.Role.utterances_in_prompt` earlier
        utterances (a pending solution and a review; a ``plain`` prompt's history), each at most
        ``max_new_tokens`` tokens, so a turn needs at most the rendered prompt with one-letter ones, plus
        ``max_new_tokens`` for each of them and for the completion.

        Raises:
            DataError: A turn of some problem can need more tokens than the model's context.
        """
        context = getattr(self.model.config, "max_position_embeddings", None)
        if context is None:
            return
        for problem in problems:
            needed = max(self._turn_tokens(problem, role) for role in roles)
            if needed > context:
                raise DataError(
                    f"{problem.uid}: a turn of this problem can need {needed} tokens (the prompt with every earlier "
                    f"utterance it shows, each up to --model.backbone.max_new_tokens {self.max_new_tokens}, plus the "
                    f"completion), more than the model's context of {context}; shorten or drop the question, or "
                    "lower --model.backbone.max_new_tokens"
                )

    def _turn_tokens(self, problem: Problem, role: Role) -> int:
        """The most tokens a turn of ``role`` on ``problem`` can need (see :meth:`check_prompts`)."""
        shown = role.utterances_in_prompt()
        history = tuple(Utterance(r, role.name, "review", "x") for r in range(1, shown + 1))
        view = DialogueView(problem=problem, pending_text="x", pending_answer="x", review_text="x", round_index=2,
                            history=history)
        prompt = len(self.tokenizer(self.render(role.messages(view)), add_special_tokens=False)["input_ids"])
        return prompt + (shown + 1) * self.max_new_tokens

    def check_adapter_keys(self, saved: set[str]) -> None:
        """Refuse adapter weights (state-dict keys relative to this policy) that are not this policy's adapters.

        Raises:
            ConfigError: The keys name other roles or another LoRA shape than this policy's, naming both.
        """
        expected = {name for name, parameter in self.named_parameters() if parameter.requires_grad}
        if saved and saved != expected:
            raise ConfigError(
                "--model.proposer/--model.reviewer/--model.extra_roles: the checkpoint holds adapters for the roles "
                f"{_adapter_roles(saved)}, this run has {_adapter_roles(expected)}; use the roles it was trained on"
            )

    def after_optimizer_step(self, role: str) -> None:
        """Nothing to sync: this one model generates, scores and trains."""

    # ------------------------------------------------------------------ adapters
    @property
    def device(self) -> torch.device:
        """Where the model's parameters are (inputs are moved there)."""
        return next(self.model.parameters()).device

    def use(self, role: str) -> None:
        """Make ``role``'s adapter the active one (a pointer switch; weights are neither merged nor copied).

        Raises:
            ConfigError: The backbone has no adapter for ``role``.
        """
        if role not in self.roles:
            raise ConfigError(f"no adapter for role {role!r}; this backbone has {self.roles}")
        if self.model.active_adapter != role:
            self.model.set_adapter(role)
            self._mark_adapters_trainable()  # set_adapter freezes the adapters it deactivates

    def generation_model(self, role: str) -> torch.nn.Module:
        """The model that decodes ``role``'s turns: the peft model with ``role`` active, or the merged copy."""
        self.use(role)
        if self.generation_weights == "adapters":
            return self.model
        if not self._merged:
            self._merged.append(MergedCopy(self.model, GENERATION_DTYPES[self.generation_weights]))
        return self._merged[0].for_role(role, self.role_parameters(role))

    def role_parameters(self, role: str) -> list[torch.nn.Parameter]:
        """The LoRA parameters of ``role``'s adapter: what its optimizer steps.

        Raises:
            ConfigError: The backbone has no adapter for ``role``.
        """
        if role not in self.roles:
            raise ConfigError(f"no adapter for role {role!r}; this backbone has {self.roles}")
        params = []
        for module in self.model.modules():
            if isinstance(module, BaseTunerLayer):
                for layer_name in module.adapter_layer_names:
                    adapters = getattr(module, layer_name)
                    if role in adapters:
                        params.extend(adapters[role].parameters())
        return params

    def _mark_adapters_trainable(self) -> None:
        for role in self.roles:
            for param in self.role_parameters(role):
                param.requires_grad_(True)

    def save_adapters(self, directory: str | Path, run: RunSummary | None = None) -> dict[str, Path]:
        """Save each role's adapter in peft's format to ``directory/<role>``, ready to load on another machine.

        Each folder loads on its own with ``PeftModel.from_pretrained(base_model, folder)``, and, when the base is
        a hub model or an alias of one, with ``AutoPeftModelForCausalLM.from_pretrained(folder)``: its
        ``adapter_config.json`` names the base by hub id (:func:`.export.base_origin`). Beside the weights go the
        role's model card (``README.md``) and ``tracer_pl.json`` (:func:`.export.finish_adapter_folder`);
        ``directory/README.md`` lists the roles.

        Args:
            directory: Where the role folders go.
            run: What the cards say about the training run; None: only what this policy knows (the base, LoRA).

        Returns:
            The folder of each role.
        """
        directory = Path(directory)
        run = run or RunSummary()
        (directory / "README.md").unlink(missing_ok=True)  # an earlier export's index, which peft would parse
        for role in self.roles:
            # peft puts an adapter in a subfolder named after it, except "default": in the folder itself
            self.model.save_pretrained(
                directory / role if role == "default" else directory, selected_adapters=[role]
            )
        folders = {role: directory / role for role in self.roles}
        base = export.base_origin(run.base_model or self.model.get_base_model().name_or_path)
        precision = self._base_precision()
        for role, folder in folders.items():
            lora = export.LoraSettings.of(self.model.peft_config[role], precision)
            export.finish_adapter_folder(folder, role, base, lora, run)
        export.write_index(directory, folders, base)  # instead of peft's empty card template, one for all roles
        return folders

    def _base_precision(self) -> str:
        """The base's weights as trained on: ``4-bit NF4 (QLoRA)`` or their dtype (``fp32``, ``bf16``, ``fp16``)."""
        base = self.model.get_base_model()
        if getattr(base, "is_loaded_in_4bit", False):
            return "4-bit NF4 (QLoRA)"
        names = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}
        dtype = next(p.dtype for n, p in base.named_parameters() if "lora_" not in n)
        return names.get(dtype, str(dtype).removeprefix("torch."))

    def load_adapters(self, directory: str | Path) -> None:
        """Load the adapter weights saved by :meth:`save_adapters` into this backbone's adapters (in place).

        Raises:
            DataError: A role's folder is missing, or its adapter does not fit this backbone (rank, targets).
        """
        for role in self.roles:
            folder = Path(directory) / role
            if not (folder / "adapter_config.json").is_file():
                raise DataError(
                    f"{folder}: expected the saved adapter of role {role!r} (adapter_config.json)"
                )
            _check_adapter_config(LoraConfig.from_pretrained(folder), self.model.peft_config[role], folder)
            weights = load_peft_weights(str(folder), device=str(self.device))
            result = set_peft_model_state_dict(self.model, weights, adapter_name=role)
            if result.unexpected_keys:
                raise DataError(
                    f"{folder}: weights that this backbone's adapter lacks: {result.unexpected_keys[:3]}"
                )


def _adapter_roles(keys: set[str]) -> list[str]:
    """Role names in peft's LoRA parameter names (``....lora_A.<role>.weight``)."""
    return sorted({key.split("lora_", 1)[1].split(".")[1] for key in keys if "lora_" in key})


def _stop_token_ids(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> list[int]:
    """The tokenizer's end-of-sequence token and any others the model's generation config stops at."""
    configured = model.generation_config.eos_token_id
    configured = (
        [] if configured is None else [configured] if isinstance(configured, int) else list(configured)
    )
    stops = [tokenizer.eos_token_id] + [t for t in configured if t != tokenizer.eos_token_id]
    return [t for t in stops if t is not None]


def _check_adapter_config(saved: LoraConfig, current: LoraConfig, folder: Path) -> None:
    for field in ("r", "lora_alpha", "target_modules"):
        found, expected = getattr(saved, field), getattr(current, field)
        if field == "target_modules":
            found, expected = set(found or ()), set(expected or ())
        if found != expected:
            raise DataError(
                f"{folder / 'adapter_config.json'}: {field} is {found}, but this backbone's adapters "
                f"have {expected}"
            )


def _enable_checkpointing(model: PreTrainedModel, options: dict) -> None:
    """Turn on activation checkpointing (named ``activation_checkpointing_enable`` since transformers 5)."""
    if hasattr(model, "activation_checkpointing_enable"):
        model.activation_checkpointing_enable(activation_checkpointing_kwargs=options)
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=options)
