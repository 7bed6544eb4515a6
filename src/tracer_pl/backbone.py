"""One frozen base model with one LoRA adapter per role: the :class:`~tracer_pl.agent.Agent` used in training.

Switching the speaking role switches peft's active adapter -- no merge, no second copy of the base. Generation
is batched over every prompt and sample of a call (left padding, chat template), and :meth:`Backbone.sequence_logprobs`
scores a batch of completions in one forward for GSPO.

Log-probs are taken at the sampling temperature (logits divided by it, as TRL does), so the ratio and the
gradient refer to the distribution the candidates were drawn from. Sampling uses plain temperature/top-p; the
model's own generation defaults (top-k, repetition penalty) are overridden for the same reason.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Literal

import torch
from peft import LoraConfig, PeftModel, get_peft_model, prepare_model_for_kbit_training, set_peft_model_state_dict
from transformers import PreTrainedTokenizerBase

from tracer_pl.agent import Completion, Messages
from tracer_pl.errors import ConfigError
from tracer_pl.models import Precision, load_base_model

DEFAULT_TARGETS = {
    "qwen2": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
    "llama": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
    "phi3": ["qkv_proj", "o_proj", "gate_up_proj", "down_proj"],
}
_ANY_ARCH = ["q_proj", "k_proj", "v_proj", "o_proj", "qkv_proj", "gate_proj", "up_proj", "down_proj", "gate_up_proj"]


def infer_target_modules(model: torch.nn.Module) -> list[str]:
    """LoRA targets for the model's architecture: the known list for Qwen2/Llama/Phi-3, else those present."""
    present = {name.rsplit(".", 1)[-1] for name, m in model.named_modules() if isinstance(m, torch.nn.Linear)}
    present |= {name.rsplit(".", 1)[-1] for name, m in model.named_modules() if type(m).__name__ == "Linear4bit"}
    model_type = getattr(getattr(model, "config", None), "model_type", "")
    wanted = DEFAULT_TARGETS.get(model_type, _ANY_ARCH)
    targets = [name for name in wanted if name in present]
    if not targets:
        raise ConfigError(
            f"cannot infer LoRA target modules for model_type={model_type!r} (none of {wanted} found); set "
            "--model.backbone.target_modules to the names of its attention and MLP linear layers"
        )
    return targets


class Backbone(torch.nn.Module):
    """A peft model holding one LoRA adapter per role on a frozen base, plus its tokenizer.

    Args:
        model: A ``PeftModel`` with one adapter named after each role.
        tokenizer: Its tokenizer (left padding, chat template).
        roles: The adapter names.
        max_new_tokens: Generation limit per completion.
        temperature: Sampling temperature (``greedy=False`` calls); 0 decodes greedily.
        top_p: Nucleus sampling threshold.
    """

    def __init__(self, model: PeftModel, tokenizer: PreTrainedTokenizerBase, roles: Sequence[str],
                 max_new_tokens: int = 256, temperature: float = 0.3, top_p: float = 1.0) -> None:
        super().__init__()
        self.model = model
        self.tokenizer = tokenizer
        self.roles = list(roles)
        self.max_new_tokens = max_new_tokens
        self.temperature = temperature
        self.top_p = top_p

    @classmethod
    def from_pretrained(
        cls,
        name: str,
        roles: Sequence[str] = ("proposer", "reviewer"),
        *,
        precision: Precision = "fp32",
        compute_dtype: Literal["bf16", "fp16", "fp32"] = "bf16",
        lora_r: int = 8,
        lora_alpha: int = 16,
        lora_dropout: float = 0.0,
        target_modules: Sequence[str] | None = None,
        gradient_checkpointing: bool = False,
        max_new_tokens: int = 256,
        temperature: float = 0.3,
        top_p: float = 1.0,
        device: str | torch.device | None = None,
    ) -> Backbone:
        """Load the base (see :func:`tracer_pl.models.load_base_model`) and add a LoRA adapter per role."""
        base, tokenizer = load_base_model(name, precision=precision, compute_dtype=compute_dtype, device=device)
        gc_kwargs = {"use_reentrant": False}
        if precision == "4bit":
            _keep_cpu_4bit_trainable(base)
            base = prepare_model_for_kbit_training(base, use_gradient_checkpointing=gradient_checkpointing,
                                                   gradient_checkpointing_kwargs=gc_kwargs)
        elif gradient_checkpointing:
            base.gradient_checkpointing_enable(gradient_checkpointing_kwargs=gc_kwargs)
        config = LoraConfig(r=lora_r, lora_alpha=lora_alpha, lora_dropout=lora_dropout, task_type="CAUSAL_LM",
                            target_modules=list(target_modules or infer_target_modules(base)))
        model = get_peft_model(base, config, adapter_name=roles[0])
        for role in roles[1:]:
            model.add_adapter(role, config)
        return cls(model, tokenizer, roles, max_new_tokens, temperature, top_p)

    # ------------------------------------------------------------------ adapters
    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def use(self, role: str) -> None:
        """Make ``role``'s adapter the active one."""
        if role not in self.roles:
            raise ConfigError(f"no adapter for role {role!r}; this backbone has {self.roles}")
        if self.model.active_adapter != role:
            self.model.set_adapter(role)

    def role_parameters(self, role: str) -> list[torch.nn.Parameter]:
        """The LoRA parameters of ``role``'s adapter (what its optimizer steps)."""
        marker = f".{role}."
        params = [p for n, p in self.model.named_parameters() if "lora_" in n and marker in n]
        for p in params:  # peft marks only the active adapter trainable; every role's optimizer needs its own
            p.requires_grad_(True)
        return params

    def save_adapters(self, directory: str | Path) -> dict[str, Path]:
        """Save every role's adapter in the peft format to ``directory/<role>``; returns the paths."""
        directory = Path(directory)
        paths = {}
        for role in self.roles:
            self.model.save_pretrained(directory, selected_adapters=[role])
            paths[role] = directory / role
        return paths

    def load_adapters(self, directory: str | Path) -> None:
        """Load adapter weights saved by :meth:`save_adapters` into the existing adapters."""
        from safetensors.torch import load_file

        for role in self.roles:
            path = Path(directory) / role / "adapter_model.safetensors"
            if not path.exists():
                raise FileNotFoundError(f"no adapter for role {role!r} at {path}")
            set_peft_model_state_dict(self.model, load_file(path, device=str(self.device)), adapter_name=role)

    # ------------------------------------------------------------------ generation
    def generate(self, role: str, prompts: Sequence[Messages], num_samples: int | Sequence[int] = 1, *,
                 greedy: bool = False) -> list[list[Completion]]:
        """One batched ``generate`` call for every prompt and sample; see :class:`~tracer_pl.agent.Agent`."""
        counts = [num_samples] * len(prompts) if isinstance(num_samples, int) else list(num_samples)
        if len(counts) != len(prompts):
            raise ValueError(f"num_samples has {len(counts)} entries for {len(prompts)} prompts")
        texts = [self.render(p) for p, n in zip(prompts, counts) for _ in range(n)]
        if not texts:
            return [[] for _ in prompts]
        self.use(role)
        batch = self.tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False).to(self.device)
        sample = not greedy and self.temperature > 0
        settings = {"do_sample": sample, "temperature": self.temperature, "top_p": self.top_p} if sample else {
            "do_sample": False}
        with torch.no_grad(), _eval_mode(self.model):
            output = self.model.generate(
                **batch, max_new_tokens=self.max_new_tokens, top_k=None, repetition_penalty=None, use_cache=True,
                pad_token_id=self.tokenizer.pad_token_id, eos_token_id=self.tokenizer.eos_token_id, **settings)
        completions = self._completions(batch["input_ids"], batch["attention_mask"], output)
        grouped, start = [], 0
        for n in counts:
            grouped.append(completions[start : start + n])
            start += n
        return grouped

    def render(self, prompt: Messages) -> str:
        """The prompt as text, through the tokenizer's chat template, ready for the assistant's turn."""
        return self.tokenizer.apply_chat_template(prompt, add_generation_prompt=True, tokenize=False)

    def _completions(self, input_ids: torch.Tensor, mask: torch.Tensor, output: torch.Tensor) -> list[Completion]:
        eos = self.tokenizer.eos_token_id
        new = output[:, input_ids.shape[1] :].cpu()
        result = []
        for row in range(output.shape[0]):
            tokens = new[row]
            ends = (tokens == eos).nonzero()
            length = int(ends[0]) + 1 if len(ends) else len(tokens)
            completion_ids = tokens[:length]
            prompt_ids = input_ids[row][mask[row].bool()].cpu()
            result.append(Completion(
                text=self.tokenizer.decode(completion_ids, skip_special_tokens=True),
                prompt_tokens=len(prompt_ids), completion_tokens=length, truncated=not len(ends),
                payload=(prompt_ids, completion_ids),
            ))
        return result

    # ------------------------------------------------------------------ scoring
    def sequence_logprobs(self, role: str, completions: Sequence[Completion]) -> tuple[torch.Tensor, torch.Tensor]:
        """Summed log-probs of each completion given its prompt under ``role``'s adapter, in one forward.

        Prompts are left-padded and completions right-padded, so every completion starts in the same column and
        only the completion columns go through the output head. Prompt tokens are masked.

        Returns:
            ``(logp, num_tokens)``, both of shape ``[N]``; ``logp`` is differentiable in the role's adapter.
        """
        prompts = [c.payload[0] for c in completions]
        answers = [c.payload[1] for c in completions]
        P = max(len(p) for p in prompts)
        C = max(len(a) for a in answers)
        pad = self.tokenizer.pad_token_id
        ids = torch.full((len(completions), P + C), pad, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for i, (p, a) in enumerate(zip(prompts, answers)):
            ids[i, P - len(p) : P] = p
            ids[i, P : P + len(a)] = a
            mask[i, P - len(p) : P + len(a)] = 1
        ids, mask = ids.to(self.device), mask.to(self.device)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        self.use(role)
        # logits of positions P-1 .. P+C-2 predict the completion tokens at P .. P+C-1
        logits = self.model(input_ids=ids, attention_mask=mask, position_ids=positions,
                            logits_to_keep=C + 1, use_cache=False).logits[:, :-1]
        logp = torch.log_softmax(logits.float() / (self.temperature or 1.0), dim=-1)
        targets = ids[:, P:]
        token_logp = logp.gather(-1, targets.unsqueeze(-1)).squeeze(-1) * mask[:, P:]
        num_tokens = mask[:, P:].sum(-1)
        return token_logp.sum(-1), num_tokens


def _keep_cpu_4bit_trainable(model: torch.nn.Module) -> None:
    """Stop bitsandbytes from repacking 4-bit weights for CPU inference in eval mode.

    On CPUs with AVX512-BF16, ``Linear4bit`` converts its weight to an inference-only layout the first time it
    runs in eval mode, after which a training forward fails. Generation and training alternate here, so the
    conversion is switched off (CPU generation is a little slower; GPUs are unaffected).
    """
    for module in model.modules():
        if hasattr(module, "support_avx512bf16_for_cpu"):
            module.support_avx512bf16_for_cpu = False


@contextlib.contextmanager
def _eval_mode(model: torch.nn.Module) -> Iterator[None]:
    training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(training)
