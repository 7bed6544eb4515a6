"""One frozen base model with one LoRA adapter per role: the :class:`~tracer_pl.agent.Agent` used in training.

Section 1 of the method gives each role its own LoRA adapter on one frozen base (the authors loaded a full
model copy per role). Switching the speaking role switches peft's active adapter: no merge, no copy of the
base. :meth:`Backbone.generate` renders chat prompts with the tokenizer's template and samples every prompt
and sample of a call in one batched ``generate``; :meth:`Backbone.sequence_logprobs` scores a batch of
completions in one forward pass for GSPO.

Log-probabilities are those of the model's own distribution (temperature 1), as in the authors' code, even
though candidates are sampled at the training temperature: GSPO only needs the new and the old policy scored
the same way, and the ratio is then exact.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
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

from tracer_pl.agent import Completion, Messages
from tracer_pl.errors import ConfigError, DataError
from tracer_pl.models import ComputeDtype, Precision, load_base_model

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


class Backbone(torch.nn.Module):
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

    Raises:
        ConfigError: A role has no adapter in ``model``.
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
    ) -> None:
        super().__init__()
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
        self.stop_token_ids = _stop_token_ids(model, tokenizer)
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
    ) -> Backbone:
        """Load the base (:func:`tracer_pl.models.load_base_model`) and add one fresh LoRA adapter per role.

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
        )

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

    def save_adapters(self, directory: str | Path) -> dict[str, Path]:
        """Save each role's adapter in peft's format to ``directory/<role>``.

        Each folder loads on its own with ``PeftModel.from_pretrained(base_model, folder)``.

        Returns:
            The folder of each role.
        """
        directory = Path(directory)
        for role in self.roles:
            # peft puts an adapter in a subfolder named after it, except "default": in the folder itself
            self.model.save_pretrained(
                directory / role if role == "default" else directory, selected_adapters=[role]
            )
        return {role: directory / role for role in self.roles}

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

    # ------------------------------------------------------------------ generation
    def render(self, prompt: Messages) -> str:
        """The prompt as text, through the tokenizer's chat template, ready for the assistant's turn."""
        return self.tokenizer.apply_chat_template(prompt, add_generation_prompt=True, tokenize=False)

    def generate(
        self,
        role: str,
        prompts: Sequence[Messages],
        num_samples: int | Sequence[int] = 1,
        *,
        greedy: bool = False,
    ) -> list[list[Completion]]:
        """Return ``num_samples[i]`` completions for ``prompts[i]`` under ``role``'s adapter, in one batch.

        Prompts are left-padded; sampling uses :attr:`temperature` and the filters of :meth:`sampling_settings`
        (the model's own ``generation_config`` wherever a filter is None, as the authors' code does by passing
        only the temperature). The model runs in eval mode without gradients and gets its previous mode back
        afterwards.

        Each :class:`~tracer_pl.agent.Completion` has ``payload = (prompt_ids, completion_ids)``, 1-D CPU
        LongTensors without padding; ``completion_ids`` ends with the stop token unless ``truncated``.

        With :attr:`share_prompt_cache` and several samples of a prompt, the prompt is encoded once: one forward
        pass over the distinct prompts (all but their last token) fills a KV cache whose rows are then copied
        to the prompt's samples, and ``generate`` continues from it. The samples are the same as without
        sharing (up to float rounding); the prompt's compute is paid once instead of ``num_samples`` times.

        Raises:
            ValueError: ``num_samples`` has the wrong length or a negative count.
        """
        counts = _sample_counts(num_samples, len(prompts))
        live = [i for i, n in enumerate(counts) if n]
        if not live:
            return [[] for _ in prompts]
        self.use(role)
        shared = self.share_prompt_cache and any(counts[i] > 1 for i in live)
        texts = [self.render(prompts[i]) for i in live for _ in range(1 if shared else counts[i])]
        batch = self.tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False).to(
            self.device
        )
        ids, mask = batch["input_ids"], batch["attention_mask"]
        cache = {}
        with torch.no_grad(), _eval_mode(self.model):
            if shared:
                sizes = torch.tensor([counts[i] for i in live])
                rows = torch.repeat_interleave(torch.arange(len(live)), sizes).to(self.device)
                if ids.shape[1] > 1:  # a one-token prompt has nothing to cache
                    cache["past_key_values"] = self._prompt_cache(ids, mask, rows)
                ids, mask = ids[rows], mask[rows]
            output = self.model.generate(input_ids=ids, attention_mask=mask, **cache, **self._decoding(greedy))
        completions = self._completions(ids, mask, output)
        grouped, start = [], 0
        for n in counts:
            grouped.append(completions[start : start + n])
            start += n
        return grouped

    def _prompt_cache(self, ids: torch.Tensor, mask: torch.Tensor, rows: torch.Tensor) -> Any:
        """KV cache of every prompt but its last token, with row ``rows[j]`` of the batch copied to row ``j``."""
        head, head_mask = ids[:, :-1], mask[:, :-1]
        positions = (head_mask.cumsum(-1) - 1).clamp(min=0)
        out = self.model(input_ids=head, attention_mask=head_mask, position_ids=positions, use_cache=True,
                         logits_to_keep=1)
        cache = out.past_key_values
        cache.batch_select_indices(rows)
        return cache

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

    def _decoding(self, greedy: bool) -> dict:
        """``generate`` options: the set filters override the model's generation config, None ones keep it."""
        settings = {
            "max_new_tokens": self.max_new_tokens,
            "use_cache": True,  # also under gradient checkpointing, which turns the cache off in training
            "pad_token_id": self.tokenizer.pad_token_id,
            "eos_token_id": self.stop_token_ids,
        }
        if self.repetition_penalty is not None:
            settings["repetition_penalty"] = self.repetition_penalty
        if greedy or self.temperature == 0:
            return {**settings, "do_sample": False}
        filters = {"top_p": self.top_p, "top_k": self.top_k}
        return {**settings, "do_sample": True, "temperature": self.temperature,
                **{name: value for name, value in filters.items() if value is not None}}

    def _completions(
        self, input_ids: torch.Tensor, mask: torch.Tensor, output: torch.Tensor
    ) -> list[Completion]:
        generated = output[:, input_ids.shape[1] :].cpu()
        stops = torch.isin(generated, torch.tensor(self.stop_token_ids))
        completions = []
        for row in range(len(generated)):
            ends = stops[row].nonzero()
            length = int(ends[0]) + 1 if len(ends) else generated.shape[1]
            completion_ids = generated[row, :length].clone()
            prompt_ids = input_ids[row][mask[row].bool()].cpu()
            completions.append(
                Completion(
                    text=self.tokenizer.decode(completion_ids, skip_special_tokens=True),
                    prompt_tokens=len(prompt_ids),
                    completion_tokens=length,
                    truncated=not len(ends),
                    payload=(prompt_ids, completion_ids),
                )
            )
        return completions

    # ------------------------------------------------------------------ scoring
    def sequence_logprobs(
        self, role: str, completions: Sequence[Completion]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Summed log-probabilities of each completion given its prompt under ``role``'s adapter, in one pass.

        Args:
            role: Whose adapter scores.
            completions: Completions from :meth:`generate` (their payload holds the token ids).

        Returns:
            ``(logp, num_tokens)``, both of shape ``[N]`` on :attr:`device`: ``logp`` (fp32) is differentiable
            in the role's LoRA parameters; ``num_tokens`` (long) counts completion tokens, i.e. |y|.

        Raises:
            ValueError: A completion's payload is not ``(prompt_ids, completion_ids)`` with at least one
                completion token.
        """
        token_logp, mask = self.token_logprobs(role, completions)
        return token_logp.sum(-1), mask.sum(-1)

    def token_logprobs(
        self, role: str, completions: Sequence[Completion]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-token log-probabilities of each completion under ``role``'s adapter, in one forward pass.

        Prompts are left-padded and completions right-padded, so every completion starts in the same column
        and only the completion columns go through the output head. Position ids count real tokens only, so
        padding changes nothing. The log-softmax is taken in fp32. The model's train/eval mode is left as the
        caller set it.

        Returns:
            ``(token_logp, mask)`` of shape ``[N, C]`` (C: the longest completion): ``token_logp`` is 0 on
            padding; ``mask`` (long) is 1 on real completion tokens.
        """
        if not completions:
            empty = torch.zeros(0, 0, device=self.device)
            return empty, empty.long()
        ids, mask, width = self._pack(completions)
        self.use(role)
        # logits at columns P-1 .. P+C-2 predict the completion tokens at columns P .. P+C-1
        logits = self.model(
            input_ids=ids,
            attention_mask=mask,
            position_ids=(mask.cumsum(-1) - 1).clamp(min=0),
            logits_to_keep=width + 1,
            use_cache=False,
        ).logits[:, :-1]
        logp = torch.log_softmax(logits.float(), dim=-1)
        targets = ids[:, -width:]
        completion_mask = mask[:, -width:]
        return logp.gather(-1, targets.unsqueeze(-1)).squeeze(-1) * completion_mask, completion_mask

    def _pack(self, completions: Sequence[Completion]) -> tuple[torch.Tensor, torch.Tensor, int]:
        """Token ids and attention mask ``[N, P + C]``: prompts end at column P, completions start there."""
        pairs = [_token_ids(c, i) for i, c in enumerate(completions)]
        prompt_width = max(len(p) for p, _ in pairs)
        width = max(len(a) for _, a in pairs)
        ids = torch.full((len(pairs), prompt_width + width), self.tokenizer.pad_token_id, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for row, (prompt, answer) in enumerate(pairs):
            start, end = prompt_width - len(prompt), prompt_width + len(answer)
            ids[row, start:end] = torch.cat([prompt, answer])
            mask[row, start:end] = 1
        return ids.to(self.device), mask.to(self.device), width


def _token_ids(completion: Completion, index: int) -> tuple[torch.Tensor, torch.Tensor]:
    payload = completion.payload
    if not (
        isinstance(payload, tuple)
        and len(payload) == 2
        and all(isinstance(t, torch.Tensor) and t.dim() == 1 for t in payload)
    ):
        raise ValueError(
            f"completions[{index}].payload must be (prompt_ids, completion_ids), two 1-D tensors as "
            f"made by Backbone.generate; got {type(payload).__name__}"
        )
    if len(payload[1]) == 0:
        raise ValueError(f"completions[{index}] has no completion tokens; there is nothing to score")
    return payload[0].long().cpu(), payload[1].long().cpu()


def _sample_counts(num_samples: int | Sequence[int], num_prompts: int) -> list[int]:
    counts = [num_samples] * num_prompts if isinstance(num_samples, int) else list(num_samples)
    if len(counts) != num_prompts:
        raise ValueError(f"num_samples has {len(counts)} entries for {num_prompts} prompts")
    if any(n < 0 for n in counts):
        raise ValueError(f"num_samples must be >= 0, got {counts}")
    return counts


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


@contextlib.contextmanager
def _eval_mode(model: torch.nn.Module) -> Iterator[None]:
    training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(training)
